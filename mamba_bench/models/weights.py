"""Weights: resolve a path or URL to a local file, read it without running pickled code, load strictly.

Pickle checkpoints are read with ``torch.load(weights_only=True)``, which refuses any object that is
not a tensor or a plain container, so a malicious ``.pth`` cannot execute code here. Safetensors
files are read natively. Downloads land in a cache directory and are written atomically, so an
interrupted download never leaves a half file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch

from mamba_bench.errors import CheckpointError

URL_SCHEMES = ("http://", "https://", "file://")
#: a Hugging Face Hub repository (timm's spelling): ``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME/FILE``
HF_PREFIX = "hf-hub:"
HF_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "module", "model_ema")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``$MAMBA_BENCH_CACHE`` or ``~/.cache/mamba-bench``: where the demo's trained models live (and
    release downloads, when it is given or set; otherwise those go to torch.hub's cache)."""
    if override:
        return Path(override)
    return Path(os.environ.get("MAMBA_BENCH_CACHE") or Path.home() / ".cache" / "mamba-bench")


def release_ref(spec: Any) -> str | None:
    """The reference of a spec's released weights: its release URL, or ``hf-hub:REPO[/FILE]``."""
    if getattr(spec, "weights_url", None):
        return spec.weights_url
    hub = getattr(spec, "hf_hub_id", None)
    if not hub:
        return None
    file = getattr(spec, "hf_hub_filename", None)
    return f"{HF_PREFIX}{hub}" + (f"/{file}" if file else "")


def resolve_weights(ref: str, *, file_name: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """A local file for ``ref``: the path itself, a Hugging Face Hub file (through huggingface_hub's
    cache, so weights timm already downloaded are found offline), or a cached download of the URL."""
    if ref.startswith(HF_PREFIX):
        return _resolve_hf(ref[len(HF_PREFIX):])
    if not ref.startswith(URL_SCHEMES):
        path = Path(ref).expanduser()
        if path.is_dir():
            raise CheckpointError(f"--weights {ref} is a directory; pass the checkpoint file in it")
        if not path.is_file():
            raise CheckpointError(f"weights file {ref} does not exist")
        return path
    name = file_name or Path(urllib.request.urlparse(ref).path).name or "weights.bin"
    target = _url_target(ref, name, cache)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(ref, timeout=30) as resp, open(tmp, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(
            f"could not download {ref} ({reason}); download it on a connected machine and pass "
            f"--weights /path/to/{name} (or put it in {target.parent})"
        ) from None
    return target


def _url_target(ref: str, name: str, cache: str | os.PathLike | None) -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints/<file name>``, where
    ``torch.hub.load_state_dict_from_url`` keeps the same URL), unless a mamba-bench cache is given
    or ``$MAMBA_BENCH_CACHE`` is set: then ``<cache>/weights/<url hash>-<file name>``."""
    if cache or os.environ.get("MAMBA_BENCH_CACHE"):
        digest = hashlib.sha256(ref.encode()).hexdigest()[:12]
        return cache_dir(cache) / "weights" / f"{digest}-{name}"
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _resolve_hf(spec: str) -> Path:
    parts = spec.split("/")
    if len(parts) < 2 or not all(parts):
        raise CheckpointError(f"--weights {HF_PREFIX}{spec}: expected {HF_PREFIX}ORG/NAME or {HF_PREFIX}ORG/NAME/FILE")
    repo, files = "/".join(parts[:2]), (["/".join(parts[2:])] if len(parts) > 2 else list(HF_DEFAULT_FILES))
    import logging

    from huggingface_hub import hf_hub_download

    reasons = []
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its offline fallback warns on stderr; the error below says it in one line
    try:
        for file in files:  # timm's order: safetensors first, then the pickle
            try:
                return Path(hf_hub_download(repo_id=repo, filename=file))
            except Exception as exc:  # offline, not cached, no such file or repository: the same to a user
                reasons.append(f"{file}: {type(exc).__name__}")
    finally:
        hub_log.setLevel(level)
    raise CheckpointError(
        f"could not download {files[0]} of {repo} from the Hugging Face Hub and it is not in the local Hugging Face "
        f"cache ({'; '.join(reasons)}); download it on a connected machine (e.g. timm.create_model(..., "
        f"pretrained=True) or huggingface_hub) or pass --weights /path/to/{files[0]}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the usual ``{'model': ...}`` containers."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with open(path, "rb") as fh:
                magic = fh.read(2)
            if magic != b"PK" and magic[:1] != b"\x80":  # torch zip archive or a raw pickle
                raise CheckpointError(
                    f"cannot read checkpoint {path}: not a safetensors, torch zip or pickle file")
            obj = _torch_load_inert(path)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip, truncated file, not a checkpoint at all
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:160]}") from None
    return _unwrap(obj, path)


def _torch_load_inert(path: Path):
    """``weights_only=True`` first; for files that pickle other objects, the inert unpickler.

    Neither path ever calls a function named in the file; the second also reads checkpoints that
    carry config objects (as VMamba's releases do), leaving those objects as inert placeholders.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            pass
        import mamba_bench.models._inert_pickle as _inert_pickle

        _inert_pickle.replaced.clear()
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_inert_pickle)
        except Exception as exc:
            try:  # a bare pickle rather than torch's format: read it inertly to say what it holds
                with open(path, "rb") as fh:
                    return _inert_pickle.load(fh)
            except Exception:
                pass
            raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:160]}") from None


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a local safetensors file ({} for anything else: URLs, pickles)."""
    p = Path(path)
    if "://" in str(path) or not p.is_file() or not _is_safetensors(p):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), "pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # a damaged header
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {str(exc)[:160]}") from None


def _is_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    from mamba_bench.models._inert_pickle import Inert, replaced

    if isinstance(obj, Inert) or (isinstance(obj, dict) and any(isinstance(v, Inert) for v in obj.values())
                                  and not any(isinstance(v, dict) for v in obj.values())):
        names = ", ".join(sorted(set(replaced))[:3])
        raise CheckpointError(f"refusing to load {path}: its state_dict is made of pickled objects ({names}), "
                              "which were not run; pass a plain tensor checkpoint or safetensors")
    while isinstance(obj, dict) and not _all_tensors(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(
                f"{path} holds no state_dict: top-level keys are {', '.join(map(str, list(obj)[:8]))}"
            )
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state_dict (found {type(obj).__name__})")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def check_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Raise one readable error naming the first missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    state = _accept_1x1_conv_linears(model, state)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {what}: {', '.join(items[:3])}{more}")
    raise CheckpointError(f"checkpoint does not fit {label}: " + "; ".join(parts))


def _accept_1x1_conv_linears(model: torch.nn.Module, state: dict) -> dict:
    """A 2-D Linear weight may arrive in its 1x1-conv form (the one layout change VMamba's loader accepts)."""
    own = model.state_dict()
    out = dict(state)
    for k, v in state.items():
        w = own.get(k)
        if w is not None and w.dim() == 2 and v.dim() == 4 and tuple(v.shape) == (*w.shape, 1, 1):
            out[k] = v.flatten(1)
    return out


def _release_filter(model: torch.nn.Module, state: dict, spec: Any) -> dict:
    """Adapt official-release layouts the way timm itself does: the ``checkpoint_filter_fn(state, model)``
    of the model's module (timm's Swin/ConvNeXt for the original files; VMamba v0 for its first code
    base's key names)."""
    if spec is None:
        return state
    import importlib

    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(state, model)
    except Exception:  # the filter could not make sense of it: let check_fit report the keys
        return state


def load_weights_into(model: torch.nn.Module, ref: str, spec: Any = None, *,
                      cache_dir: str | None = None) -> Path:
    """Resolve ``ref``, read it safely, adapt foreign layouts once, and load strictly.

    ``spec`` is the model's registry spec (for its file name, layout filter and checkpoint diagnosis)."""
    path = resolve_weights(ref, file_name=spec.weights_file if spec and ref == spec.weights_url else None,
                           cache=cache_dir)
    state = read_state_dict(path)
    own = model.state_dict()
    if set(state) != set(own):
        state = _release_filter(model, state, spec)
    try:
        check_fit(model, state, spec.name if spec else type(model).__name__)
    except CheckpointError as exc:
        if spec is not None:
            hint = spec.explain_misfit(state)
            if hint:
                raise CheckpointError(f"{path.name} does not fit {spec.name}: {hint}") from None
        raise exc
    model.load_state_dict(state, strict=True)
    return path


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write a safetensors checkpoint atomically (no pickle: loading it can never run code)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    try:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # the old file stays whole until the new one is complete
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()

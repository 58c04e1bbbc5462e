"""One registry of model names → specs, each spec carrying its own preprocessing and weights.

Like timm's ``default_cfgs``: a name resolves to a :class:`ModelSpec` that knows how to build the
network, which normalisation and input size it expects, and where its released weights live. The
families register their own entries when their module is imported (``timm_zoo.py``, ``vmamba.py``,
``start.py``, ...; ``models/__init__.py`` imports each), so a new family is one new module and
one line there, never an edit here. Names no entry has go to the registered fallbacks (timm's
whole zoo), which can also suggest close names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch.nn as nn

from mamba_bench.errors import CheckpointError, UnknownNameError
from mamba_bench.models.weights import checkpoint_metadata, load_weights_into

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and feed it: factory, preprocessing, weights."""

    name: str
    builder: Callable[[int], nn.Module] = field(repr=False, compare=False)
    description: str
    family: str
    num_classes: int = 1000
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    #: "crop": shorter side to input_size / crop_pct, then a center crop (ImageNet eval);
    #: "stretch": the whole image squeezed to input_size squared (what dg-train trains on)
    resize_mode: str = "crop"
    #: a release file (fetched into torch.hub's cache, ``$TORCH_HOME``)
    weights_url: str | None = None
    weights_file: str | None = None
    #: a Hugging Face Hub repository and file (fetched through huggingface_hub's cache: ``HF_HOME``,
    #: ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` mirrors), as timm's own weights are
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    timm_name: str | None = None
    #: a family's reading of a checkpoint that does not fit ("it looks like a vmamba-s checkpoint")
    diagnose: Callable[[dict, str], str | None] | None = field(default=None, repr=False, compare=False)
    #: fills fields that need a heavy import (timm's pretrained cfg) when the name is looked up
    resolve: Callable[[ModelSpec], ModelSpec] | None = field(default=None, repr=False, compare=False)

    def build(self, num_classes: int | None = None) -> nn.Module:
        return self.builder(self.num_classes if num_classes is None else num_classes)

    def explain_misfit(self, state: dict) -> str | None:
        """What a checkpoint that does not fit this spec is, asked of its own family first, then of every
        other registered family (a Vim checkpoint passed for vmamba-t is named as such)."""
        asked = []
        for fn in [self.diagnose, *(s.diagnose for s in _REGISTRY.values())]:
            if fn is None or fn in asked:
                continue
            asked.append(fn)
            hint = fn(state, self.name)
            if hint:
                return hint
        return None

    @property
    def has_release(self) -> bool:
        return bool(self.weights_url or self.hf_hub_id)


@dataclass(frozen=True)
class Fallback:
    """Resolves names no entry has (e.g. any timm model); ``names()`` feeds the "did you mean" hint."""

    name: str
    resolve: Callable[[str], ModelSpec | None]
    names: Callable[[], list[str]]
    hint: str


_REGISTRY: dict[str, ModelSpec] = {}
_FALLBACKS: list[Fallback] = []


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def register_fallback(fallback: Fallback) -> Fallback:
    _FALLBACKS.append(fallback)
    return fallback


def registered_models() -> dict[str, ModelSpec]:
    """The project's own names (aliases and own architectures); fallback names are not listed here."""
    return dict(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Resolve a registry name, an alias or a fallback's name (any timm model); unknown → one clear error."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec.resolve(spec) if spec.resolve is not None else spec
    for fb in _FALLBACKS:
        found = fb.resolve(name)
        if found is not None:
            return found
    pool = list(_REGISTRY) + [n for fb in _FALLBACKS for n in fb.names()]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    extra = "".join(f", or {fb.hint}" for fb in _FALLBACKS)
    raise UnknownNameError(f"unknown model {name!r}.{hint} Valid: {', '.join(sorted(_REGISTRY))}{extra}")


# Models trained by `dg-train`: the architecture, classes and input size come from the checkpoint.
DG_KIND = "mamba-bench dg-train checkpoint"


def spec_for_weights(spec: ModelSpec, ref: str | None) -> ModelSpec:
    """The spec a checkpoint implies: a dg-train checkpoint names its architecture, classes, size and
    the resize it was trained with (so evaluation feeds it the pixels training did)."""
    md = checkpoint_metadata(ref) if ref else {}
    if md.get("kind") != DG_KIND:
        if spec.family == "dg":
            raise CheckpointError(f"--model {spec.name} needs a dg-train checkpoint: "
                                  "--weights RUN/<algorithm>/<test domain>/seed<k>/best.pt")
        return spec
    import json

    arch = get_spec(md["arch"])
    algorithm = md.get("algorithm", "?")
    if spec.family == "dg" and spec.name != algorithm:
        raise CheckpointError(f"{ref} was trained with {algorithm}, not {spec.name}; use --model {arch.name}"
                              + (f" or --model {algorithm}" if algorithm in _REGISTRY else ""))
    if spec.family != "dg" and spec.name != arch.name:
        raise CheckpointError(f"{ref} is a {arch.name} checkpoint (dg-train, {algorithm}); use --model {arch.name}")
    # the checkpoint's training resize; dg-train always stretched bilinearly, also before it recorded so
    resize_mode, interpolation = md.get("resize_mode", "stretch"), md.get("interpolation", "bilinear")
    if resize_mode not in ("stretch", "crop") or interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise CheckpointError(f"{ref}: unknown preprocessing in its metadata (resize_mode {resize_mode!r}, "
                              f"interpolation {interpolation!r})")
    return replace(arch, name=spec.name, family=arch.family, num_classes=int(md["num_classes"]),
                   input_size=int(md["image_size"]), crop_pct=1.0, mean=tuple(json.loads(md["mean"])),
                   std=tuple(json.loads(md["std"])), resize_mode=resize_mode, interpolation=interpolation,
                   weights_url=None, weights_file=None, hf_hub_id=None, hf_hub_filename=None,
                   description=f"{arch.name} trained by dg-train ({algorithm}, {md.get('dataset')}, "
                               f"test domain {md.get('test_domain')}, seed {md.get('seed')})")


def create_model(name: str, weights: str | None = None, num_classes: int | None = None,
                 cache_dir: str | None = None) -> nn.Module:
    """Build ``name`` in eval mode; with ``weights`` (path or URL) load them strictly.

    ``weights=None`` gives a randomly initialised network: the CLI never does that silently, it
    resolves a model's released weights or asks for ``--weights``.
    """
    spec = spec_for_weights(get_spec(name), weights)
    model = spec.build(num_classes)
    if weights is not None:
        load_weights_into(model, weights, spec, cache_dir=cache_dir)
    return model.eval()

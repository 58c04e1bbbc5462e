"""Corruption suites as data, applied per image with a seed derived from what the image *is*.

The suite file (``transforms/imgaug21.toml`` by default, or ``--suite FILE``) maps names to imgaug
augmenters and parameters per severity. ``apply_corruption`` reseeds the augmenter from
``(seed, image id, corruption, severity)`` before every image, so a corrupted image never depends
on what was corrupted before it, on batch composition, worker process or machine.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mamba_bench.errors import MambaBenchError, UnknownNameError

SEVERITIES = (1, 2, 3, 4, 5)
# imgaug calls scikit-image APIs deprecated in 0.26 (PiecewiseAffine): a warning per image, not news to users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"imgaug\.")

__all__ = ["Corruption", "Suite", "apply_corruption", "corruption_seed", "default_suite_path", "load_suite",
           "make_gallery", "mean_abs_change"]


def default_suite_path() -> Path:
    """The repository's ``transforms/imgaug21.toml`` (or the copy an installed wheel carries)."""
    repo = Path(__file__).resolve().parents[2] / "transforms" / "imgaug21.toml"
    if repo.is_file():
        return repo
    return Path(str(resources.files("mamba_bench") / "_suites" / "imgaug21.toml"))


def _convert(value: Any) -> Any:
    """TOML → imgaug argument: [a, b] → (a, b) uniform range; {choice = [...]} → list (pick one)."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"a range must have 2 numbers, got {value}")
        return tuple(_convert(v) for v in value)
    if isinstance(value, dict):
        if set(value) != {"choice"} or not isinstance(value["choice"], list):
            raise ValueError(f"a table parameter must be {{choice = [...]}}, got {value}")
        return [_convert(v) for v in value["choice"]]
    return value


@dataclass(frozen=True)
class Corruption:
    name: str
    title: str
    augmenter: str
    severity_free: bool
    severities: tuple[int, ...]
    params: tuple[dict, ...] = field(repr=False)  # one per severity (a single one when severity-free)
    role: str = "corruption"

    def params_for(self, severity: int) -> dict:
        if self.severity_free:
            return self.params[0]
        return self.params[self.severities.index(severity)]

    def build(self, severity: int):
        """The imgaug augmenter for ``severity`` (cached per process: building is not free)."""
        return _build(self.augmenter, _freeze(self.params_for(severity)))


def _freeze(d: dict) -> tuple:
    def f(v):
        if isinstance(v, list):
            return ("__list__", *map(f, v))
        if isinstance(v, tuple):
            return ("__tuple__", *map(f, v))
        return v
    return tuple(sorted((k, f(v)) for k, v in d.items()))


def _thaw(v):
    if isinstance(v, tuple) and v and v[0] in ("__list__", "__tuple__"):
        items = [_thaw(x) for x in v[1:]]
        return items if v[0] == "__list__" else tuple(items)
    return v


_CACHE: dict[tuple, Any] = {}


def _build(augmenter: str, frozen: tuple):
    key = (augmenter, frozen)
    aug = _CACHE.get(key)
    if aug is None:
        import imgaug.augmenters as iaa

        cls = getattr(iaa, augmenter)
        aug = cls(**{k: _thaw(v) for k, v in frozen})
        _CACHE[key] = aug
    return aug


@dataclass
class Suite:
    name: str
    path: Path
    sha256: str
    corruptions: dict[str, Corruption]
    clean: Corruption | None
    description: str = ""

    def select(self, names: str | Sequence[str]) -> list[Corruption]:
        """``"all"`` or names (a string may be comma-separated); unknown names → one clear error."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not names or list(names) == ["all"]:
            return list(self.corruptions.values())
        out = []
        for n in names:
            if n not in self.corruptions:
                raise UnknownNameError(
                    f"unknown corruption {n!r}; valid: {', '.join(self.corruptions)} (or 'all')")
            if self.corruptions[n] not in out:
                out.append(self.corruptions[n])
        return out

    def severities(self, corruption: Corruption, wanted: str | Sequence[int]) -> list[int]:
        """Severities of ``corruption`` to run; severity-free corruptions always give ``[0]``."""
        if wanted != "all":
            bad = [s for s in wanted if s not in SEVERITIES]
            if bad:
                raise UnknownNameError(
                    f"severity {bad[0]} is not valid; valid: {', '.join(map(str, SEVERITIES))} (or 'all')")
        if corruption.severity_free:
            return [0]
        if wanted == "all":
            return list(corruption.severities)
        return [s for s in dict.fromkeys(wanted) if s in corruption.severities]


def load_suite(path: str | os.PathLike | None = None) -> Suite:
    """Read and validate a suite file: every augmenter is built at load time, so typos fail here."""
    path = Path(path) if path is not None else default_suite_path()
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode())
    except FileNotFoundError:
        raise MambaBenchError(f"suite file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MambaBenchError(f"suite file {path} is not valid TOML: {exc}") from None
    meta = doc.get("suite", {})
    entries = doc.get("corruption")
    if not isinstance(entries, list) or not entries:
        raise MambaBenchError(f"suite file {path} has no [[corruption]] entries")
    corruptions: dict[str, Corruption] = {}
    clean = None
    for k, e in enumerate(entries):
        c = _parse_entry(e, k, path)
        if c.name in corruptions or (clean is not None and c.name == clean.name):
            raise MambaBenchError(f"suite file {path}: corruption {c.name!r} is defined twice")
        for s in c.severities:
            try:
                c.build(s)
            except Exception as exc:  # imgaug raises assorted types for bad arguments
                raise MambaBenchError(
                    f"suite file {path}: {c.name} severity {s}: {c.augmenter} rejects its params ({exc})"
                ) from None
        if c.role == "clean":
            clean = c
        else:
            corruptions[c.name] = c
    if not corruptions:
        raise MambaBenchError(f"suite file {path} defines no corruptions besides the clean reference")
    return Suite(name=str(meta.get("name", path.stem)), path=path.resolve(),
                 sha256=hashlib.sha256(raw).hexdigest(), corruptions=corruptions, clean=clean,
                 description=str(meta.get("description", "")))


def _parse_entry(e: Any, k: int, path: Path) -> Corruption:
    where = f"suite file {path}, corruption #{k + 1}"
    if not isinstance(e, dict):
        raise MambaBenchError(f"{where}: not a table")
    for key in ("name", "augmenter"):
        if not isinstance(e.get(key), str) or not e[key]:
            raise MambaBenchError(f"{where}: missing field {key!r}")
    name = e["name"]
    if name == "clean" and e.get("role") != "clean":
        raise MambaBenchError(f"{where}: the name 'clean' is reserved for the clean reference (role = \"clean\")")
    import imgaug.augmenters as iaa

    if not isinstance(getattr(iaa, e["augmenter"], None), type):
        raise MambaBenchError(f"{where} ({name}): unknown imgaug augmenter {e['augmenter']!r}")
    free = bool(e.get("severity_free", False)) or e.get("role") == "clean"
    try:
        if free:
            params = (({k2: _convert(v) for k2, v in e.get("fixed", {}).items()}),)
            severities: tuple[int, ...] = (0,)
        else:
            plist = e.get("params")
            if not isinstance(plist, list) or not 1 <= len(plist) <= 5 or not all(isinstance(p, dict) for p in plist):
                raise MambaBenchError(f"{where} ({name}): 'params' must list 1 to 5 tables, one per severity")
            params = tuple({k2: _convert(v) for k2, v in p.items()} for p in plist)
            severities = tuple(range(1, len(plist) + 1))
    except ValueError as exc:
        raise MambaBenchError(f"{where} ({name}): {exc}") from None
    return Corruption(name=name, title=str(e.get("title", name)), augmenter=e["augmenter"], severity_free=free,
                      severities=severities, params=params, role=str(e.get("role", "corruption")))


def corruption_seed(seed: int, image_id: str, corruption: str, severity: int) -> int:
    """A 31-bit seed that depends only on its arguments (stable across processes and machines)."""
    key = f"mamba-bench/v1|{seed}|{image_id}|{corruption}|{severity}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31 - 1)


def apply_corruption(corruption: Corruption, severity: int, image: np.ndarray, *, seed: int,
                     image_id: str) -> np.ndarray:
    """The corrupted copy of ``image`` (uint8 HxWx3, same shape)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if corruption.role == "clean":
        return image.copy()
    aug = corruption.build(severity)
    aug.seed_(corruption_seed(seed, image_id, corruption.name, severity))
    out = aug.augment_image(np.ascontiguousarray(image))
    if out.shape != image.shape:  # keep_size should guarantee this; never hand models a surprise
        raise RuntimeError(f"{corruption.name} changed the image shape {image.shape} → {out.shape}")
    return np.ascontiguousarray(out, dtype=np.uint8)


def mean_abs_change(corruption: Corruption, severity: int, image: np.ndarray, *, seed: int = 0,
                    image_id: str = "x") -> float:
    """Mean absolute pixel difference to the clean image: the suite's measure of strength."""
    out = apply_corruption(corruption, severity, image, seed=seed, image_id=image_id)
    return float(np.abs(out.astype(np.int16) - image.astype(np.int16)).mean())


def make_gallery(image_path: str | os.PathLike, out_png: str | os.PathLike, suite: Suite, *,
                 severities: Sequence[int] = (1, 3, 5), seed: int = 0, size: int = 224) -> Path:
    """A PNG grid: one row per corruption, the clean image then each requested severity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mamba_bench.data.images import eval_preprocess, load_image_rgb

    img = eval_preprocess(load_image_rgb(image_path), image_size=size)
    sevs = [s for s in dict.fromkeys(severities)]
    bad = [s for s in sevs if s not in SEVERITIES]
    if bad:
        raise UnknownNameError(f"severity {bad[0]} is not valid; valid: {', '.join(map(str, SEVERITIES))}")
    rows = list(suite.corruptions.values())
    cols = 1 + len(sevs)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.6 * len(rows)), squeeze=False)
    iid = Path(image_path).name
    for r, c in enumerate(rows):
        panels = [("clean", img)]
        for s in ([0] if c.severity_free else [s for s in sevs if s in c.severities]):
            panels.append((f"s{s}" if s else "(no severity)", apply_corruption(c, s, img, seed=seed, image_id=iid)))
        for k in range(cols):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(panels):
                ax.imshow(panels[k][1])
                ax.set_title(f"{c.title} {panels[k][0]}" if k else c.title, fontsize=6)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out

"""The one registry of data layouts, and :func:`open_dataset`, which consults it.

Each layout module (``imagenet.py``, ``materialized.py``, ...) registers a :class:`Layout`: a cheap
``detect(root)`` look at a directory and an ``open(root, request)`` that lists its samples. An
embedded data set registers a name instead. ``open_dataset`` asks the layouts in ``priority`` order
(the most specific first, the generic ImageFolder last), so a new layout is one new module with one
``register_layout`` call and no edit here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mamba_bench.data.imageset import ImageSet, sample_per_class
from mamba_bench.errors import DataLayoutError, MambaBenchError


@dataclass(frozen=True)
class OpenRequest:
    """What the caller asked for, beyond the directory: label file, image size, resize."""

    data: str
    labels: str | None = None
    image_size: int = 224
    resize: int | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    #: a cheap look at ``root`` (a few ``stat`` calls): does this layout claim the directory?
    detect: Callable[[Path], bool]
    open: Callable[[Path, OpenRequest], ImageSet]
    #: lower is asked first; the catch-all ImageFolder / flat ImageNet scan is last
    priority: int = 50
    description: str = ""


@dataclass(frozen=True)
class Embedded:
    name: str
    description: str
    open: Callable[[OpenRequest], ImageSet]


_LAYOUTS: dict[str, Layout] = {}
_EMBEDDED: dict[str, Embedded] = {}


def register_layout(layout: Layout) -> Layout:
    if layout.name in _LAYOUTS:
        raise ValueError(f"data layout {layout.name!r} registered twice")
    _LAYOUTS[layout.name] = layout
    return layout


def register_embedded(entry: Embedded) -> Embedded:
    if entry.name in _EMBEDDED:
        raise ValueError(f"embedded data set {entry.name!r} registered twice")
    _EMBEDDED[entry.name] = entry
    return entry


def layouts() -> list[Layout]:
    """The registered layouts in the order ``open_dataset`` asks them."""
    return sorted(_LAYOUTS.values(), key=lambda lay: (lay.priority, lay.name))


def embedded_datasets() -> dict[str, str]:
    """Embedded name → one-line description."""
    return {name: e.description for name, e in _EMBEDDED.items()}


def open_dataset(data: str, *, per_class: int | None = None, seed: int = 0, labels: str | None = None,
                 image_size: int = 224, resize: int | None = None) -> ImageSet:
    """An embedded name (``digits``), a directory in one of the registered layouts, or ``NAME=DIR`` to
    open DIR as the layout NAME (checked strictly as that layout, e.g. ``imagenet-sketch=/data/sketch``).

    Embedded names win over a directory of the same name; write ``./digits`` for the directory.
    ``resize=None`` is ``floor(image_size * 256 / 224)`` (256 at 224). Digits are always 64 px
    (``image_size``/``resize`` do not apply). User mistakes raise :class:`DataLayoutError` /
    :class:`MambaBenchError` with a one-line message, never a traceback.
    """
    if per_class is not None and per_class < 1:
        raise MambaBenchError(f"--per-class must be >= 1, not {per_class}")
    if seed < 0:
        raise MambaBenchError(f"--seed must be >= 0, not {seed}")
    request = OpenRequest(data, labels, image_size, resize)
    if data in _EMBEDDED:
        ds = _EMBEDDED[data].open(request)
        if labels is not None:
            ds.notes.append(f"--labels {labels} ignored: the embedded data set carries its own labels")
    else:
        if image_size < 1:
            raise MambaBenchError(f"image size must be >= 1, not {image_size}")
        if resize is not None and resize < image_size:
            raise MambaBenchError(f"resize ({resize}) must be >= the image size ({image_size})")
        ds = _open_directory(request)
    if per_class is not None:
        keep = sample_per_class(ds.samples, per_class, seed, ds.notes, ds.class_ids)
        ds.samples = [ds.samples[i] for i in keep]
        if ds.arrays is not None:
            ds.arrays = ds.arrays[keep]
    return ds


def split_named(data: str) -> tuple[str | None, str]:
    """``NAME=DIR`` (a registered layout's name, e.g. ``imagenet-sketch=/data/sketch``) → (NAME, DIR)."""
    name, sep, rest = data.partition("=")
    if sep and name in _LAYOUTS and not Path(data).exists():
        return name, rest
    return None, data


def _open_directory(request: OpenRequest) -> ImageSet:
    embedded = f"(or use an embedded data set: {', '.join(_EMBEDDED)})"
    forced, path = split_named(request.data)
    if not path.strip():
        raise DataLayoutError(f"no data directory given {embedded}")
    root = Path(path).expanduser()
    ordered = [_LAYOUTS[forced]] if forced else layouts()
    if not root.exists():
        raise DataLayoutError(f"data directory {path} does not exist {embedded}")
    if not root.is_dir():
        raise DataLayoutError(f"data directory {path} is a file, not a directory: "
                              f"{ordered[-1].description} {embedded}")
    for layout in ordered:
        if forced or layout.detect(root):  # a named layout is opened (and checked) as that layout
            return layout.open(root, request)
    raise DataLayoutError(f"{request.data}: no known data layout ({', '.join(lay.name for lay in ordered)})")

"""Natural-shift sets as released: ImageNet-V2, ImageNet-Sketch, ImageNet-R and ImageNet-A.

- **ImageNet-V2** (Recht et al. 2019; each of its three variants): class folders named ``0`` ..
  ``999``, the ImageNet-1k *index* (not a wnid). Recognised when the folders are exactly those 1000.
- **ImageNet-Sketch** (Wang et al. 2019): 1000 wnid folders, laid out like ImageNet val, so it cannot
  be told from val by its folders: name it, ``--data imagenet-sketch=DIR``.
- **ImageNet-R** (Hendrycks et al. 2021) and **ImageNet-A** (Hendrycks et al. 2021): 200 wnid
  folders each. Recognised when the folders are exactly the set's 200 classes. Their papers score a
  1000-class model on the 200 classes only: the logits are restricted to them before any metric
  (``ImageSet.class_subset``); labels and predictions stay ImageNet-1k indices in the tables. The
  class lists ship in ``data/classes/`` with their source named in each file.

Each set is evaluated as it is (clean images of the shifted distribution: ``natural_shift``), with
the usual ImageNet eval preprocessing (these files are not 224 px). Any of them can be named
explicitly (``NAME=DIR``); then the folders are checked strictly: a missing class folder, or folders
that are not the set's classes (e.g. wnids in an ImageNet-V2 tree), is one error naming them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from mamba_bench.data.imagenet import (
    imagenet_descriptions,
    imagenet_index,
    imagenet_wnids,
    list_top,
    walk_class,
)
from mamba_bench.data.images import default_resize
from mamba_bench.data.imageset import ImageSet, Sample
from mamba_bench.data.layouts import Layout, OpenRequest, register_layout
from mamba_bench.data.notes import add_capped
from mamba_bench.errors import DataLayoutError

CLASSES = Path(__file__).with_name("classes")


@cache
def subset_wnids(name: str) -> tuple[str, ...]:
    """The 200 wnids of ``imagenet-r`` / ``imagenet-a`` (shipped files; '#' lines name the source)."""
    lines = (CLASSES / f"{name.replace('-', '_')}_wnids.txt").read_text().splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.startswith("#"))


def _folders(root: Path) -> list[str]:
    try:
        return list_top(root)[1]
    except OSError as exc:
        raise DataLayoutError(f"cannot read {root}: {exc.strerror or exc}") from None


def _check_folders(root: Path, name: str, folders: list[str], expected: list[str]) -> None:
    missing = sorted(set(expected) - set(folders))
    foreign = sorted(set(folders) - set(expected))
    if foreign:
        raise DataLayoutError(f"{root} is not {name}: {len(foreign)} folders are not its classes (e.g. "
                              f"{', '.join(foreign[:3])}); {name} has {len(expected)} class folders named like "
                              f"{expected[0]}")
    if missing:
        raise DataLayoutError(f"{root} ({name}) lacks {len(missing)} of its {len(expected)} class folders: "
                              f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


def _imageset(root: Path, name: str, request: OpenRequest, label_of: dict[str, int],
              subset: tuple[str, ...] | None) -> ImageSet:
    folders = _folders(root)
    samples, notes, empty = [], [], []
    for folder in folders:
        files = walk_class(root, folder)
        if not files:
            empty.append(folder)
        samples += [Sample(p.relative_to(root).as_posix(), label_of[folder], p) for p in files]
    add_capped(notes, [f"class folder {c} has no images" for c in empty], "... and {n} more empty class folders")
    if not samples:
        raise DataLayoutError(f"no images found in {root} ({name})")
    samples.sort(key=lambda s: s.image_id)
    index = imagenet_index()
    return ImageSet(name, str(root), name, samples, list(imagenet_descriptions()), 1000, request.image_size,
                    notes, list(imagenet_wnids()),
                    request.resize if request.resize is not None else default_resize(request.image_size),
                    class_subset=sorted(index[w] for w in subset) if subset else None, natural_shift=True)


def _open_v2(root: Path, request: OpenRequest) -> ImageSet:
    expected = [str(i) for i in range(1000)]
    _check_folders(root, "imagenet-v2", _folders(root), expected)
    return _imageset(root, "imagenet-v2", request, {str(i): i for i in range(1000)}, None)


def _open_sketch(root: Path, request: OpenRequest) -> ImageSet:
    _check_folders(root, "imagenet-sketch", _folders(root), list(imagenet_wnids()))
    return _imageset(root, "imagenet-sketch", request, imagenet_index(), None)


def _subset_opener(name: str):
    def open_(root: Path, request: OpenRequest) -> ImageSet:
        wnids = subset_wnids(name)
        _check_folders(root, name, _folders(root), list(wnids))
        return _imageset(root, name, request, imagenet_index(), wnids)

    return open_


def _detect(expected):
    def detect(root: Path) -> bool:
        try:
            return set(list_top(root)[1]) == set(expected())
        except OSError:
            return False

    return detect


register_layout(Layout("imagenet-v2", _detect(lambda: [str(i) for i in range(1000)]), _open_v2, priority=40,
                       description="ImageNet-V2: DIR/<0..999>/<images> (class index folders)"))
register_layout(Layout("imagenet-sketch", lambda root: False, _open_sketch, priority=40,
                       description="ImageNet-Sketch: DIR/<wnid>/<images>, 1000 classes (name it: imagenet-sketch=DIR)"))
for _name, _what in (("imagenet-r", "ImageNet-R"), ("imagenet-a", "ImageNet-A")):
    register_layout(Layout(_name, _detect(lambda n=_name: subset_wnids(n)), _subset_opener(_name), priority=40,
                           description=f"{_what}: DIR/<wnid>/<images>, its 200 classes"))

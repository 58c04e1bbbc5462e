"""Data sets: one ``open_dataset(data)`` for directories and embedded names, giving an :class:`ImageSet`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamba_bench.data.embedded import DIGITS_SIZE, digits_split
from mamba_bench.data.imagenet import (
    EXPECTED,
    WNID,
    imagenet_descriptions,
    imagenet_wnids,
    scan_flat,
    scan_imagefolder,
)
from mamba_bench.data.images import ImageReadError, eval_preprocess, load_image_rgb
from mamba_bench.errors import DataLayoutError

EMBEDDED_DATASETS = {"digits": "scikit-learn's handwritten digits, held-out 25 % (450 images, 10 classes, 64 px)"}

__all__ = ["EMBEDDED_DATASETS", "ImageReadError", "ImageSet", "Sample", "eval_preprocess", "load_image_rgb",
           "open_dataset"]


@dataclass(frozen=True)
class Sample:
    image_id: str
    label: int
    path: Path | None


@dataclass
class ImageSet:
    """Samples sorted by id, with a loader that returns the preprocessed uint8 image."""

    name: str
    root: str
    layout: str
    samples: list[Sample]
    class_names: list[str]
    num_classes: int
    image_size: int
    notes: list[str] = field(default_factory=list)
    resize: int | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[i]
        return eval_preprocess(load_image_rgb(self.samples[i].path), self.image_size, self.resize)


def sample_per_class(samples: list[Sample], k: int, seed: int, notes: list[str]) -> list[int]:
    """Indices of ``k`` samples per class: per class, ids sorted, then ``default_rng([seed, label])``.

    Seeding per class keeps each class's choice independent of the others, so adding a class
    folder never changes which images another class contributes.
    """
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    chosen = []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: samples[i].image_id)
        if len(idx) <= k:
            if len(idx) < k:
                notes.append(f"class {label} has {len(idx)} images < --per-class {k}: took all")
            chosen += idx
        else:
            perm = np.random.default_rng([seed, label]).permutation(len(idx))[:k]
            chosen += [idx[j] for j in sorted(perm)]
    return sorted(chosen, key=lambda i: samples[i].image_id)


def open_dataset(data: str, *, per_class: int | None = None, seed: int = 0, labels: str | None = None,
                 image_size: int = 224, resize: int = 256) -> ImageSet:
    """An embedded name (``digits``) or a directory in one of the documented layouts."""
    if data in EMBEDDED_DATASETS:
        imgs, y, ids = digits_split("test")
        samples = [Sample(i, int(label), None) for i, label in zip(ids, y, strict=True)]
        ds = ImageSet("digits", data, "embedded", samples, [str(i) for i in range(10)], 10, DIGITS_SIZE,
                      arrays=imgs)
    else:
        ds = _open_directory(Path(data), labels, image_size, resize)
    if per_class is not None:
        keep = sample_per_class(ds.samples, per_class, seed, ds.notes)
        ds.samples = [ds.samples[i] for i in keep]
        if ds.arrays is not None:
            ds.arrays = ds.arrays[keep]
    return ds


def _open_directory(root: Path, labels: str | None, image_size: int, resize: int) -> ImageSet:
    if not root.exists():
        raise DataLayoutError(
            f"data directory {root} does not exist (or use an embedded data set: {', '.join(EMBEDDED_DATASETS)})")
    if not root.is_dir():
        raise DataLayoutError(f"--data {root} is a file, not a directory: {EXPECTED}")
    if labels is not None and not Path(labels).is_file():
        raise DataLayoutError(f"--labels {labels} does not exist")
    folder = scan_imagefolder(root)
    if folder is not None and folder[0]:
        items, classes, notes = folder
        wnids = imagenet_wnids()
        index = {w: i for i, w in enumerate(wnids)}
        if all(WNID.match(c) and c in index for c in classes):
            samples = [Sample(iid, index[c], p) for iid, c, p in items]
            return ImageSet("imagenet-val", str(root), "imagefolder", samples, imagenet_descriptions(), 1000,
                            image_size, notes, resize)
        cls_index = {c: i for i, c in enumerate(classes)}
        samples = [Sample(iid, cls_index[c], p) for iid, c, p in items]
        return ImageSet("imagefolder", str(root), "imagefolder", samples, classes, len(classes), image_size,
                        notes, resize)
    if folder is not None and not any(p.is_file() for p in root.iterdir()):
        raise DataLayoutError(f"no images found in the class folders of {root}: {EXPECTED}")
    items, layout, notes = scan_flat(root, labels)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = sorted({w for _, w, _ in items if w not in index})
    if unknown:
        raise DataLayoutError(f"labels name classes that are not ImageNet-1k wnids, e.g. {unknown[0]}")
    samples = sorted((Sample(iid, index[w], p) for iid, w, p in items), key=lambda s: s.image_id)
    return ImageSet("imagenet-val", str(root), layout, samples, imagenet_descriptions(), 1000, image_size,
                    notes, resize)

"""The data set types every layout produces: :class:`Sample`, :class:`ImageSet`, per-class sampling.

An :class:`ImageSet` is a sorted, deterministic list of :class:`Sample` (id, label, path) plus a
loader that returns the eval-preprocessed uint8 image. Preprocessing happens here, before any
corruption, so every corruption and every model sees the same clean pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamba_bench.data.images import ImageReadError, eval_preprocess, load_image_rgb, stretch_resize
from mamba_bench.data.notes import add_capped


@dataclass(frozen=True)
class Sample:
    """One image: ``image_id`` is stable across machines (path relative to the data root, ``/``)."""

    image_id: str
    label: int
    path: Path | None


@dataclass
class ImageSet:
    """Samples sorted by id, with a loader that returns the preprocessed uint8 image.

    ``class_ids`` are the machine names of the labels (wnids for ImageNet, folder names for a
    generic ImageFolder, "0".."9" for digits); ``resize`` is the shorter-side size before the
    center crop (None: :func:`default_resize`); ``resize_mode`` "stretch" instead squeezes the
    whole image to ``image_size`` squared with ``interpolation`` (what dg-train checkpoints were
    trained on); ``arrays`` holds the already-preprocessed images of an embedded data set, row
    ``i`` ↔ ``samples[i]``.
    """

    name: str
    root: str
    layout: str
    samples: list[Sample]
    class_names: list[str]
    num_classes: int
    image_size: int
    notes: list[str] = field(default_factory=list)
    class_ids: list[str] = field(default_factory=list)
    resize: int | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)
    resize_mode: str = "crop"
    interpolation: str = "bicubic"
    materialized: dict | None = field(default=None, repr=False)
    #: reads a sample's file as the final uint8 image (the layout's own reader), instead of decoding +
    #: resize + crop: materialized sets and released 224-px shift sets are fed as they are on disk
    reader: Callable[[Path], np.ndarray] | None = field(default=None, repr=False)
    #: the class indices a model's logits are restricted to before any metric (ImageNet-R/-A: their 200
    #: of ImageNet-1k's classes, as their papers evaluate); labels stay indices of all ``num_classes``
    class_subset: list[int] | None = None
    #: the set is itself a distribution shift (ImageNet-V2/-R/-A/-Sketch): evaluated as it is, clean only
    natural_shift: bool = False
    #: corrupted images on disk, as released (ImageNet-C / -C-bar / -3DCC): see ``data/released.py``
    released: object | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``image_size x image_size x 3``; :class:`ImageReadError` if unusable.

        Returns a fresh array each call, so a caller may corrupt it in place.
        """
        if self.arrays is not None:
            return self.arrays[i].copy()
        path = self.samples[i].path
        if path is None:
            raise ImageReadError("no file and no embedded pixels for this sample")
        if self.reader is not None:  # files that already hold the pixels models get (no resize, no crop)
            return self.reader(path)
        return self.preprocess(load_image_rgb(path))

    def preprocess(self, img) -> np.ndarray:
        """A decoded RGB image (or a mask that belongs to one) resized and cropped like the samples."""
        if self.resize_mode == "stretch":
            return stretch_resize(img, self.image_size, self.interpolation)
        return eval_preprocess(img, self.image_size, self.resize)


def sample_per_class(samples: list[Sample], k: int, seed: int, notes: list[str],
                     class_ids: list[str] | None = None) -> list[int]:
    """Indices into ``samples`` of ``k`` samples per class, in image_id order.

    Per class (ordered by label): its samples sorted by image_id, then positions
    ``numpy.random.default_rng([seed, label]).permutation(n)[:k]``. Seeding per class keeps each
    class's choice independent of the others (adding or removing a class folder never changes what
    another class contributes) and depends on nothing machine-specific: same (data, k, seed), same
    images, anywhere. Classes with fewer than ``k`` images keep all of them and get a note.
    """
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    chosen: list[int] = []
    short: list[str] = []
    for label in sorted(by_class):
        idx = sorted(by_class[label], key=lambda i: samples[i].image_id)
        if len(idx) <= k:
            if len(idx) < k:
                name = class_ids[label] if class_ids and label < len(class_ids) else str(label)
                short.append(f"class {name} has {len(idx)} images < --per-class {k}: took all")
            chosen += idx
        else:
            perm = np.random.default_rng([seed, label]).permutation(len(idx))[:k]
            chosen += [idx[int(j)] for j in perm]
    add_capped(notes, short,
               "... and {n} more classes with fewer than --per-class " + f"{k} images: took all")
    return sorted(chosen, key=lambda i: samples[i].image_id)

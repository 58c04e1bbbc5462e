"""Embedded, offline data sets: scikit-learn's real handwritten digits (bundled, no download).

``sklearn.datasets.load_digits``: 1797 real 8x8 digits, values 0..16. The train/test split is
fixed, ``train_test_split(test_size=0.25, stratify=y, random_state=0)``, and deliberately NOT tied
to ``--seed``: a demo model trained on the train split and cached stays valid for every later
benchmark of the test split, whatever seed the benchmark uses (``--seed`` still drives
``--per-class`` sampling and the corruptions). The test split has 450 images, train 1347.

Pixels are scaled 0..16 → 0..255, upsampled to 64x64 with PIL bicubic (64 px keeps the demo
fast while leaving room for geometric corruptions that are meaningless at 8 px) and the gray
channel is replicated to RGB, so the images go through the same uint8 HxWx3 path as photos.
Image ids are ``digits/<split>/<sklearn index, 4 digits>``, sorted.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from mamba_bench.data.imageset import ImageSet, Sample
from mamba_bench.data.layouts import Embedded, register_embedded

DIGITS_SIZE = 64
#: Embedded data-set names accepted by ``open_dataset`` (and ``--data``), with a one-line description.
EMBEDDED_DATASETS = {
    "digits": "scikit-learn's real handwritten digits, fixed stratified 25 % test split "
              "(450 images, 10 classes, 64 px)",
}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All 1797 images at 64 px, labels, and the sorted train / test indices (computed once)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train, test = train_test_split(idx, test_size=0.25, stratify=d.target, random_state=0)
    imgs = np.empty((len(idx), DIGITS_SIZE, DIGITS_SIZE, 3), np.uint8)
    for i, a in enumerate(d.images):
        small = Image.fromarray(np.clip(np.rint(a * (255.0 / 16.0)), 0, 255).astype(np.uint8), "L")
        imgs[i] = np.asarray(small.resize((DIGITS_SIZE, DIGITS_SIZE), Image.BICUBIC))[..., None]
    imgs.setflags(write=False)
    return imgs, d.target.astype(np.int64), np.sort(train), np.sort(test)


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (N,64,64,3) uint8, labels (N,) int64, image ids)`` of the fixed ``train``/``test`` split.

    Fresh (writable) arrays each call; rows are in sklearn-index order, which is image-id order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    imgs, labels, train, test = _digits()
    idx = train if split == "train" else test
    return imgs[idx], labels[idx], [f"digits/{split}/{i:04d}" for i in idx]


def _open_digits(request) -> ImageSet:
    imgs, y, ids = digits_split("test")
    samples = [Sample(i, int(label), None) for i, label in zip(ids, y, strict=True)]
    digits = [str(i) for i in range(10)]
    return ImageSet("digits", request.data, "embedded", samples, digits, 10, DIGITS_SIZE, class_ids=list(digits),
                    arrays=imgs)


for _name, _description in EMBEDDED_DATASETS.items():
    register_embedded(Embedded(_name, _description, _open_digits))

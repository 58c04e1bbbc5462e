"""Embedded, offline data sets: scikit-learn's real handwritten digits.

The split is fixed (stratified 75/25, ``random_state=0``) and independent of ``--seed``, so a
model trained on the train split and cached stays valid for every later benchmark of the test split.
Digits are 8x8 with values 0..16; they are upsampled to 64x64 (bicubic) and replicated to RGB.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

DIGITS_SIZE = 64


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train, test = train_test_split(idx, test_size=0.25, stratify=d.target, random_state=0)
    imgs = np.empty((len(idx), DIGITS_SIZE, DIGITS_SIZE, 3), np.uint8)
    for i, a in enumerate(d.images):
        small = Image.fromarray(np.round(a * (255.0 / 16.0)).astype(np.uint8), "L")
        imgs[i] = np.asarray(small.resize((DIGITS_SIZE, DIGITS_SIZE), Image.BICUBIC))[..., None]
    return imgs, d.target.astype(np.int64), np.sort(train), np.sort(test)


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N,64,64,3) uint8, labels (N,), ids ``digits/<split>/<sklearn index>``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    imgs, labels, train, test = _digits()
    idx = train if split == "train" else test
    return imgs[idx].copy(), labels[idx].copy(), [f"digits/{split}/{i:04d}" for i in idx]

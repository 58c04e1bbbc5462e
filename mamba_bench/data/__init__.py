"""Data sets: one :func:`open_dataset` for directories and embedded names, giving an :class:`ImageSet`.

The layouts register themselves in ``data/layouts.py``'s registry when their module is imported;
importing this package imports every layout module (listed here, the one place to add a new one).
"""

from __future__ import annotations

from mamba_bench.data import embedded, imagenet, materialized, natural, released  # noqa: F401  (they register)
from mamba_bench.data.embedded import EMBEDDED_DATASETS, digits_split
from mamba_bench.data.images import ImageReadError, eval_preprocess, load_image_rgb
from mamba_bench.data.imageset import ImageSet, Sample, sample_per_class
from mamba_bench.data.layouts import open_dataset

__all__ = ["EMBEDDED_DATASETS", "ImageReadError", "ImageSet", "Sample", "digits_split", "eval_preprocess",
           "load_image_rgb", "open_dataset", "sample_per_class"]

"""The corruption suite: data in a TOML file, applied per image with a seed derived from what the image is.

``load_suite`` reads and validates a suite (``transforms/imgaug21.toml`` by default),
``apply_corruption`` corrupts one image reproducibly, ``make_gallery`` previews a suite on an image.
See :mod:`.suite` for the file format's rules and the determinism guarantee.
"""

from .gallery import eval_crop, make_gallery
from .suite import (
    CLEAN,
    SEVERITIES,
    Corruption,
    Suite,
    apply_corruption,
    corruption_seed,
    default_suite_path,
    load_suite,
    mean_abs_change,
)

__all__ = ["CLEAN", "SEVERITIES", "Corruption", "Suite", "apply_corruption", "corruption_seed",
           "default_suite_path", "eval_crop", "load_suite", "make_gallery", "mean_abs_change"]

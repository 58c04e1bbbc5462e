"""Released corruption sets read as published: ImageNet-C, ImageNet-C-bar and ImageNet-3DCC.

All three are ``ROOT/<corruption>/<severity>/<wnid>/<file>``, made from the ImageNet validation
images resized to 256 and center-cropped to 224 before corruption. Their files are already 224 x 224,
so the models see their pixels as they are (only each model's normalisation; a model of another
input size is resized, as for every set): resizing them to 256 and cropping again changed
RobustBench's rankings (its issue #59). The set is recognised by its corruption folder names.

The sample list is the files of one cell; every cell must hold the same files (``--per-class K``
then picks the same files in every cell). A cell that differs, a corruption without a severity
folder, or a file of another size is one error naming it: mixing image sets across cells would
make every comparison between them wrong. Corruption folders that are absent are recorded in the
set's notes and simply not evaluated (the mCE then says which corruptions it covers).

The clean images are not part of these releases: ``corrupt --clean-data DIR`` gives the ImageNet
validation images they were made from (matched by file name), so clean accuracy is measured in the
same run, on the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamba_bench.data.imagenet import WNID, imagenet_descriptions, imagenet_index, imagenet_wnids, walk_class
from mamba_bench.data.images import ImageReadError, load_image_rgb
from mamba_bench.data.imageset import ImageSet, Sample
from mamba_bench.data.layouts import Layout, OpenRequest, register_layout
from mamba_bench.errors import DataLayoutError

#: folder names as released, in the order of each set's paper / official code
RELEASED_SETS: dict[str, tuple[str, ...]] = {
    # Hendrycks & Dietterich 2019: the 15 corruptions, then the 4 held-out extras
    "imagenet-c": ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                   "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                   "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate"),
    # Mintun et al. 2021 (facebookresearch/augmentation-corruption, imagenet_c_bar/imagenet_c_bar.csv order;
    # "cocentric" and "greyscale" are the release's spellings)
    "imagenet-c-bar": ("caustic_refraction", "inverse_sparkles", "sparkles", "perlin_noise", "blue_noise_sample",
                       "plasma_noise", "checkerboard_cutout", "cocentric_sine_waves", "single_frequency_greyscale",
                       "brownish_noise"),
    # Kar et al. 2022 (EPFL-VILAB/3DCommonCorruptions)
    "imagenet-3dcc": ("near_focus", "far_focus", "fog_3d", "flash", "color_quant", "low_light", "xy_motion_blur",
                      "z_motion_blur", "iso_noise", "bit_error", "h265_abr", "h265_crf"),
}
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 224


@dataclass
class ReleasedCells:
    """What a released set holds on disk: severities per corruption (in the set's order)."""

    set_name: str
    root: Path
    cells: dict[str, list[int]] = field(default_factory=dict)


class ReleasedReader:
    """Reads ``(corruption, severity, image id)`` of a released set as it is (picklable for workers)."""

    def __init__(self, root: str | Path, size: int = SIZE):
        self.root, self.size = Path(root), size

    def __call__(self, corruption: str, severity: int, image_id: str) -> np.ndarray:
        path = self.root / corruption / str(severity) / image_id
        try:
            arr = np.array(load_image_rgb(path))
        except ImageReadError as exc:
            raise DataLayoutError(f"{path} cannot be read ({exc}); every cell of a released set must hold "
                                  "the same readable images: repair or re-download it") from None
        if arr.shape[:2] != (self.size, self.size):
            raise DataLayoutError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, not {self.size}x{self.size} as the "
                                  "released files are: this is not an untouched copy of the release")
        return arr


def _subdirs(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def which_set(root: Path) -> str | None:
    """The released set whose corruption folders ``root`` holds (at least one, with a severity folder)."""
    try:
        folders = set(_subdirs(root))
    except OSError:
        return None
    for name, corruptions in RELEASED_SETS.items():
        present = [c for c in corruptions if c in folders]
        if any((root / c / str(s)).is_dir() for c in present for s in SEVERITIES):
            return name
    return None


def _cell_files(cell: Path) -> list[str]:
    try:
        wnids = _subdirs(cell)
    except OSError as exc:
        raise DataLayoutError(f"cannot read {cell}: {exc.strerror or exc}") from None
    odd = [w for w in wnids if not WNID.match(w) or w not in imagenet_index()]
    if odd:
        raise DataLayoutError(f"{cell} holds folders that are not ImageNet-1k wnids (e.g. {odd[0]}): "
                              "expected <corruption>/<severity>/<wnid>/<file>")
    return sorted(p.relative_to(cell).as_posix() for w in wnids for p in walk_class(cell, w))


def _open(root: Path, request: OpenRequest, set_name: str | None = None) -> ImageSet:
    set_name = set_name or which_set(root)
    if set_name is None:
        raise DataLayoutError(f"{root} holds none of the corruption folders of "
                              f"{', '.join(RELEASED_SETS)}: expected ROOT/<corruption>/<severity>/<wnid>/<file>")
    corruptions = RELEASED_SETS[set_name]
    try:
        folders = set(_subdirs(root))
    except OSError as exc:
        raise DataLayoutError(f"cannot read {root}: {exc.strerror or exc}") from None
    foreign = sorted(folders - set(corruptions))
    if foreign:
        raise DataLayoutError(f"{root} ({set_name}) holds folders that are not its corruptions: "
                              f"{', '.join(foreign[:5])}; {set_name}'s are {', '.join(corruptions)}")
    held = ReleasedCells(set_name, root)
    reference: tuple[str, list[str]] | None = None
    notes = []
    for c in corruptions:
        if c not in folders:
            continue
        sevs = [s for s in SEVERITIES if (root / c / str(s)).is_dir()]
        extra = sorted(set(_subdirs(root / c)) - {str(s) for s in SEVERITIES})
        if extra or not sevs:
            raise DataLayoutError(f"{root / c} must hold severity folders 1..5" +
                                  (f", not {', '.join(extra[:3])}" if extra else " and holds none"))
        if len(sevs) < len(SEVERITIES):
            notes.append(f"{c} holds severities {','.join(map(str, sevs))} only")
        for s in sevs:
            files = _cell_files(root / c / str(s))
            if reference is None:
                reference = (f"{c}/{s}", files)
            elif files != reference[1]:
                gone = sorted(set(reference[1]) - set(files))
                more = sorted(set(files) - set(reference[1]))
                what = (f"lacks {len(gone)} (e.g. {gone[0]})" if gone else "") + \
                    (" and " if gone and more else "") + (f"has {len(more)} more (e.g. {more[0]})" if more else "")
                raise DataLayoutError(f"{root / c / str(s)} {what} of the images in {root / reference[0]}: every "
                                      f"cell of {set_name} must hold the same images")
        held.cells[c] = sevs
    absent = [c for c in corruptions if c not in folders]
    if absent:
        notes.append(f"{set_name} without {', '.join(absent)} (not on disk)")
    if reference is None or not reference[1]:
        raise DataLayoutError(f"no images found in {root} ({set_name})")
    index = imagenet_index()
    samples = [Sample(f, index[f.split("/", 1)[0]], None) for f in reference[1]]
    return ImageSet(set_name, str(root), set_name, samples, list(imagenet_descriptions()), 1000, SIZE, notes,
                    list(imagenet_wnids()), released=held)


def _named(set_name: str):
    def open_(root: Path, request: OpenRequest) -> ImageSet:
        return _open(root, request, set_name)

    return open_


def _detects(set_name: str):
    return lambda root: which_set(root) == set_name


for _set in RELEASED_SETS:
    register_layout(Layout(_set, _detects(_set), _named(_set), priority=20,
                           description=f"{_set} as released: DIR/<corruption>/<severity>/<wnid>/<file>"))

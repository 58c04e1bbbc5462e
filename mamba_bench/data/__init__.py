"""Data sets: one :func:`open_dataset` for directories and embedded names, giving an :class:`ImageSet`.

An :class:`ImageSet` is a sorted, deterministic list of :class:`Sample` (id, label, path) plus a
loader that returns the eval-preprocessed uint8 image. Preprocessing happens here, before any
corruption, so every corruption and every model sees the same clean pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamba_bench.data.embedded import DIGITS_SIZE, EMBEDDED_DATASETS, digits_split
from mamba_bench.data.imagenet import EXPECTED, add_capped, scan_directory
from mamba_bench.data.images import ImageReadError, default_resize, eval_preprocess, load_image_rgb, stretch_resize
from mamba_bench.errors import DataLayoutError, MambaBenchError

__all__ = ["EMBEDDED_DATASETS", "ImageReadError", "ImageSet", "Sample", "digits_split", "eval_preprocess",
           "load_image_rgb", "open_dataset", "sample_per_class"]


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
        if self.materialized is not None:  # already preprocessed when it was written
            from mamba_bench.eval.materialize import read_png

            try:
                return read_png(path)
            except OSError as exc:
                raise ImageReadError(f"cannot read the materialized image ({exc})", path) from None
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


def open_dataset(data: str, *, per_class: int | None = None, seed: int = 0, labels: str | None = None,
                 image_size: int = 224, resize: int | None = None) -> ImageSet:
    """An embedded name (``digits``) or a directory in one of the documented layouts.

    Embedded names win over a directory of the same name; write ``./digits`` for the directory.
    ``resize=None`` is ``floor(image_size * 256 / 224)`` (256 at 224). Digits are always 64 px
    (``image_size``/``resize`` do not apply). User mistakes raise :class:`DataLayoutError` /
    :class:`MambaBenchError` with a one-line message, never a traceback.
    """
    if per_class is not None and per_class < 1:
        raise MambaBenchError(f"--per-class must be >= 1, not {per_class}")
    if seed < 0:
        raise MambaBenchError(f"--seed must be >= 0, not {seed}")
    if data in EMBEDDED_DATASETS:
        imgs, y, ids = digits_split("test")
        samples = [Sample(i, int(label), None) for i, label in zip(ids, y, strict=True)]
        digits = [str(i) for i in range(10)]
        ds = ImageSet("digits", data, "embedded", samples, digits, 10, DIGITS_SIZE, class_ids=list(digits),
                      arrays=imgs)
        if labels is not None:
            ds.notes.append(f"--labels {labels} ignored: the embedded data set carries its own labels")
    else:
        if image_size < 1:
            raise MambaBenchError(f"image size must be >= 1, not {image_size}")
        if resize is not None and resize < image_size:
            raise MambaBenchError(f"resize ({resize}) must be >= the image size ({image_size})")
        ds = _open_directory(data, labels, image_size, resize)
    if per_class is not None:
        keep = sample_per_class(ds.samples, per_class, seed, ds.notes, ds.class_ids)
        ds.samples = [ds.samples[i] for i in keep]
        if ds.arrays is not None:
            ds.arrays = ds.arrays[keep]
    return ds


def _open_materialized(root: Path) -> ImageSet:
    """A set written by ``mamba-bench materialize``: the samples and classes of its manifest."""
    from mamba_bench.eval.materialize import read_manifest

    m = read_manifest(root)
    d = m["data"]
    samples = [Sample(s["image_id"], int(s["label"]), root / "clean" / "0" / s["file"]) for s in m["samples"]]
    return ImageSet(f"{d['name']} (materialized)", str(root), "materialized", samples, list(d["class_names"]),
                    int(d["num_classes"]), int(d["image_size"]), notes=list(d.get("notes", [])),
                    class_ids=list(d.get("class_ids", [])), resize=d.get("resize"), materialized=m)


def _open_directory(data: str, labels: str | None, image_size: int, resize: int | None) -> ImageSet:
    embedded = f"(or use an embedded data set: {', '.join(EMBEDDED_DATASETS)})"
    if not data.strip():
        raise DataLayoutError(f"no data directory given {embedded}")
    root = Path(data).expanduser()
    from mamba_bench.eval.materialize import MANIFEST

    if (root / MANIFEST).is_file():
        return _open_materialized(root)
    if not root.exists():
        raise DataLayoutError(f"data directory {data} does not exist {embedded}")
    if not root.is_dir():
        raise DataLayoutError(f"data directory {data} is a file, not a directory: {EXPECTED} {embedded}")
    scan = scan_directory(root, labels)
    samples = [Sample(iid, label, p) for iid, label, p in scan.items]
    return ImageSet(scan.name, str(root), scan.layout, samples, scan.class_names, scan.num_classes,
                    image_size, scan.notes, scan.class_ids,
                    resize if resize is not None else default_resize(image_size))

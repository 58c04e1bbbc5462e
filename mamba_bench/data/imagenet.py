"""ImageNet validation layouts (ImageFolder, flat + Kaggle CSV, flat + devkit) and generic ImageFolder.

Labels always live in the standard 1000-class index order (sorted wnids, as timm and torchvision
use), whatever the layout: the devkit's ILSVRC2012_IDs are in another order and are mapped through
``meta.mat``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mamba_bench.data.images import IMAGE_EXTENSIONS
from mamba_bench.errors import DataLayoutError

WNID = re.compile(r"^n\d{8}$")
KAGGLE_CSV = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
EXPECTED = ("expected ImageNet validation as DIR/<wnid>/*.JPEG (ImageFolder, or any DIR/<class>/<images>), "
            f"or flat DIR/*.JPEG with {KAGGLE_CSV} or the devkit's {DEVKIT_GT} + meta.mat "
            "(beside the images, in the parent folder, or given with --labels)")


def imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def imagenet_descriptions() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def scan_imagefolder(root: Path) -> tuple[list[tuple[str, str, Path]], list[str], list[str]] | None:
    """``(image_id, class, path)`` for DIR/<class>/<image>; None when there are no class folders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return None
    items, notes = [], []
    for c in classes:
        files = sorted(p for p in (root / c).rglob("*") if _is_image(p))
        if not files:
            notes.append(f"class folder {c} has no images")
        items += [(p.relative_to(root).as_posix(), c, p) for p in files]
    return items, classes, notes


def _find(root: Path, name: str, labels: str | None) -> Path | None:
    if labels is not None:
        p = Path(labels)
        if p.name == name and p.is_file():
            return p
        return None
    for d in (root, root.parent):
        for cand in (d / name, d / "ILSVRC2012_devkit_t12" / "data" / name):
            if cand.is_file():
                return cand
    return None


def read_kaggle_csv(path: Path) -> dict[str, str]:
    """ImageId → wnid (the first token of PredictionString)."""
    out = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
                raise DataLayoutError(f"{path} has no ImageId,PredictionString header (Kaggle {KAGGLE_CSV})")
            for row in reader:
                tokens = (row["PredictionString"] or "").split()
                if tokens:
                    out[row["ImageId"]] = tokens[0]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataLayoutError(f"cannot read {path}: {exc}") from None
    return out


def read_devkit(gt: Path, meta: Path | None) -> dict[str, str]:
    """ILSVRC2012_val_XXXXXXXX → wnid, via meta.mat's ILSVRC2012_ID → WNID table."""
    if meta is None or not meta.is_file():
        raise DataLayoutError(
            f"{gt.name} found but not the devkit's meta.mat beside it: the devkit's class IDs are not in "
            "ImageNet index order and need meta.mat to be mapped")
    try:
        import scipy.io

        syn = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in syn if int(s["num_children"]) == 0}
        ids = [int(line) for line in gt.read_text().split()]
    except (OSError, KeyError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataLayoutError(f"cannot read the devkit files {gt} / {meta}: {exc}") from None
    try:
        return {f"ILSVRC2012_val_{k:08d}": id_to_wnid[i] for k, i in enumerate(ids, 1)}
    except KeyError as exc:
        raise DataLayoutError(f"{gt} uses ILSVRC2012_ID {exc} that meta.mat does not define") from None


def scan_flat(root: Path, labels: str | None) -> tuple[list[tuple[str, str, Path]], str, list[str]]:
    """``(image_id, wnid, path)`` for flat DIR/*.JPEG with Kaggle or devkit labels."""
    files = sorted(p for p in root.iterdir() if _is_image(p))
    if not files:
        raise DataLayoutError(f"no images found in {root}: {EXPECTED}")
    kaggle = _find(root, KAGGLE_CSV, labels)
    gt = _find(root, DEVKIT_GT, labels)
    if kaggle is not None:
        table, layout = read_kaggle_csv(kaggle), "flat-kaggle-csv"
    elif gt is not None:
        table, layout = read_devkit(gt, _find(gt.parent, "meta.mat", None)), "flat-devkit"
    else:
        hint = f" (--labels {labels} is neither {KAGGLE_CSV} nor {DEVKIT_GT})" if labels else ""
        raise DataLayoutError(f"{root} holds images but no labels{hint}: {EXPECTED}")
    items, notes, unlabelled = [], [], 0
    on_disk = set()
    for p in files:
        on_disk.add(p.stem)
        wnid = table.get(p.stem)
        if wnid is None:
            unlabelled += 1
            continue
        items.append((p.name, wnid, p))
    if unlabelled:
        notes.append(f"{unlabelled} images have no label in the label file: skipped")
    missing = len(set(table) - on_disk)
    if missing:
        notes.append(f"{missing} labelled images are not in {root}")
    if not items:
        raise DataLayoutError(f"none of the images in {root} has a label in the label file: {EXPECTED}")
    return items, layout, notes

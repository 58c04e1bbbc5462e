"""Directory layouts: ImageNet val (ImageFolder, flat + Kaggle CSV, flat + devkit) and generic ImageFolder.

ImageNet labels always live in the standard 1000-class index order (the sorted wnids, the order
timm and torchvision models are trained with), whatever the layout: the devkit's ILSVRC2012_IDs
are in a different (WordNet-tree) order and are mapped ID → wnid → index through ``meta.mat``.
The wnid list and the human-readable class names come from timm, so they agree with the models.

Detection, in order (the first that fits wins):

1. images directly in DIR **and** a label file (Kaggle ``LOC_val_solution.csv`` or the devkit's
   ``ILSVRC2012_validation_ground_truth.txt``) → flat layout. Label files are looked for in DIR,
   its parent, and ``ILSVRC2012_devkit_t12/data/`` under either, then up to four levels up
   (Kaggle's download keeps the CSV four levels above ``ILSVRC/Data/CLS-LOC/val``), or taken
   from ``--labels`` (file or folder; the kind is read from the content, so it may be renamed).
   A devkit folder extracted inside DIR therefore does not turn DIR into an ImageFolder;
2. class folders holding images → ImageFolder. ImageNet indices when every folder name is an
   ImageNet-1k wnid, else a generic ImageFolder (classes = sorted folder names);
3. images directly in DIR without a label file → an error saying which label file to provide.

Hidden files and folders (names starting with ``.``) and ``__MACOSX`` folders are ignored; files
with extensions outside :data:`IMAGE_EXTENSIONS` are ignored.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from mamba_bench.data.images import IMAGE_EXTENSIONS, default_resize
from mamba_bench.data.imageset import ImageSet, Sample
from mamba_bench.data.layouts import Layout, register_layout
from mamba_bench.data.notes import add_capped, one_line
from mamba_bench.errors import DataLayoutError

WNID = re.compile(r"^n\d{8}$")
KAGGLE_CSV = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
EXPECTED = (
    "expected ImageNet validation as DIR/<wnid>/*.JPEG (ImageFolder, or any DIR/<class>/<images>), "
    f"or flat DIR/*.JPEG with {KAGGLE_CSV} or the devkit's {DEVKIT_GT} + {DEVKIT_META} "
    "(beside the images, in a parent folder, or given with --labels)")


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in standard index order (timm's list)."""
    from timm.data import ImageNetInfo

    wnids = tuple(ImageNetInfo().label_names())
    if len(wnids) != 1000:  # a timm that changed its default subset would silently relabel everything
        raise RuntimeError(f"timm's ImageNetInfo lists {len(wnids)} classes, expected 1000")
    return wnids


@lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    """Human-readable ImageNet-1k class names ("tench, Tinca tinca"), index = label."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


@lru_cache(maxsize=1)
def imagenet_index() -> dict[str, int]:
    """wnid → standard ImageNet-1k index."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


@dataclass
class DirectoryScan:
    """What a data directory holds: ``items`` are ``(image_id, label, path)``, sorted by image_id."""

    name: str
    layout: str
    items: list[tuple[str, int, Path]]
    class_names: list[str]
    class_ids: list[str]
    num_classes: int
    notes: list[str] = field(default_factory=list)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return not _ignored(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_top(root: Path) -> tuple[list[Path], list[str], int]:
    """Image files directly in ``root``, class-folder names, and the count of other files."""
    images, folders, others = [], [], 0
    with os.scandir(root) as it:
        for entry in it:
            if _ignored(entry.name):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file():
                if _is_image_name(entry.name):
                    images.append(Path(entry.path))
                else:
                    others += 1
    return sorted(images), sorted(folders), others


def walk_class(root: Path, cls: str) -> list[Path]:
    """Image files anywhere under ``root/cls`` (like torchvision's ImageFolder: symlinks followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        out += [Path(dirpath) / f for f in filenames if _is_image_name(f)]
    return out


def _label_kind(path: Path) -> str:
    """"kaggle" or "devkit", from the file's content (so a renamed --labels file still works)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = next((line.strip() for line in fh if line.strip()), "")
    except OSError as exc:
        raise DataLayoutError(f"cannot read --labels {path}: {exc.strerror or exc}") from None
    if first.replace(" ", "").startswith("ImageId,"):
        return "kaggle"
    if first.isdigit():
        return "devkit"
    raise DataLayoutError(
        f"--labels {path} is neither a Kaggle {KAGGLE_CSV} (header ImageId,PredictionString) nor the "
        f"devkit's {DEVKIT_GT} (one class ID per line)")


def _search_dirs(root: Path) -> list[Path]:
    """Where label files are looked for, nearest first (see the module docstring)."""
    near = [d for base in (root, root.parent) for d in (base, base / DEVKIT_DATA)]
    return near + list(root.parents)[1:4]


def find_label_file(root: Path, labels: str | None) -> tuple[str, Path] | None:
    """``("kaggle" | "devkit", path)`` of the label file for flat ``root``, or None."""
    if labels is not None:
        p = Path(labels).expanduser()
        if p.is_file():
            return _label_kind(p), p
        if p.is_dir():
            return find_label_file_in([p, p / DEVKIT_DATA])
        raise DataLayoutError(f"--labels {labels} does not exist")
    return find_label_file_in(_search_dirs(root))


def find_label_file_in(dirs: list[Path]) -> tuple[str, Path] | None:
    for d in dirs:
        if (d / KAGGLE_CSV).is_file():
            return "kaggle", d / KAGGLE_CSV
    for d in dirs:
        if (d / DEVKIT_GT).is_file():
            return "devkit", d / DEVKIT_GT
    return None


def read_kaggle_csv(path: Path) -> dict[str, str]:
    """ImageId (no extension) → wnid, the first token of PredictionString."""
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {f.strip() for f in reader.fieldnames or []}
            if not {"ImageId", "PredictionString"} <= fields:
                raise DataLayoutError(f"{path} has no ImageId,PredictionString header (Kaggle {KAGGLE_CSV})")
            for row in reader:
                row = {(k or "").strip(): v for k, v in row.items()}
                image_id = (row.get("ImageId") or "").strip()
                tokens = (row.get("PredictionString") or "").split()
                if image_id and tokens:
                    stem, ext = os.path.splitext(image_id)
                    out.setdefault(stem if ext.lower() in IMAGE_EXTENSIONS else image_id, tokens[0])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataLayoutError(f"cannot read {path}: {one_line(exc)}") from None
    return out


def find_meta(gt: Path, root: Path) -> Path | None:
    """meta.mat beside the ground-truth file, in its parent, or where the label files are searched."""
    dirs = [gt.parent, gt.parent.parent, gt.parent / DEVKIT_DATA, *_search_dirs(root)]
    return next((d / DEVKIT_META for d in dirs if (d / DEVKIT_META).is_file()), None)


def read_devkit_meta(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID → WNID for the 1000 leaf synsets (``num_children == 0``) of the devkit's meta.mat."""
    try:
        import scipy.io

        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        table = {int(s["ILSVRC2012_ID"]): str(s["WNID"]).strip() for s in synsets.ravel()
                 if int(s["num_children"]) == 0}
    except (OSError, KeyError, ValueError, TypeError, IndexError, NotImplementedError) as exc:
        raise DataLayoutError(f"cannot read the devkit's {meta} (expected a 'synsets' struct with "
                              f"ILSVRC2012_ID, WNID, num_children): {one_line(exc)}") from None
    if not table:
        raise DataLayoutError(f"{meta} defines no leaf synsets (num_children == 0)")
    return table


def read_devkit(gt: Path, meta: Path | None) -> dict[str, str]:
    """ILSVRC2012_val_XXXXXXXX → wnid: line k of the ground truth is image k, via meta.mat's table."""
    if meta is None:
        raise DataLayoutError(
            f"{gt} found but not the devkit's {DEVKIT_META} (looked beside it, in its parent, in "
            f"{DEVKIT_DATA.as_posix()}/ and beside the images): the devkit's class IDs are not in "
            f"ImageNet index order and need {DEVKIT_META} to be mapped; put it beside {gt.name} or use the "
            f"Kaggle {KAGGLE_CSV}")
    id_to_wnid = read_devkit_meta(meta)
    try:
        lines = gt.read_text(encoding="utf-8-sig").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"cannot read {gt}: {one_line(exc)}") from None
    out = {}
    for k, tok in enumerate(lines, 1):
        if not tok.isdigit():
            raise DataLayoutError(f"{gt} line {k} is {tok[:20]!r}, expected an ILSVRC2012_ID (1..1000)")
        if int(tok) not in id_to_wnid:
            raise DataLayoutError(f"{gt} line {k} uses ILSVRC2012_ID {tok} that {meta} does not define")
        out[f"ILSVRC2012_val_{k:08d}"] = id_to_wnid[int(tok)]
    return out


def _imagenet_scan(layout: str, pairs: list[tuple[str, str, Path]], notes: list[str]) -> DirectoryScan:
    index = imagenet_index()
    items = sorted(((iid, index[w], p) for iid, w, p in pairs), key=lambda t: t[0])
    return DirectoryScan("imagenet-val", layout, items, list(imagenet_descriptions()), list(imagenet_wnids()),
                         1000, notes)


def scan_flat(root: Path, files: list[Path], kind: str, label_path: Path) -> DirectoryScan:
    """Flat DIR/*.JPEG labelled by a Kaggle CSV or the devkit ground truth (+ meta.mat)."""
    if kind == "kaggle":
        table, layout = read_kaggle_csv(label_path), "flat-kaggle-csv"
    else:
        table, layout = read_devkit(label_path, find_meta(label_path, root)), "flat-devkit"
    notes = [f"labels from {label_path}"]
    pairs, unlabelled, on_disk = [], [], set()
    for p in files:
        stem = os.path.splitext(p.name)[0]
        on_disk.add(stem)
        wnid = table.get(stem)
        if wnid is None:
            unlabelled.append(p.name)
        else:
            pairs.append((p.name, wnid, p))
    if not pairs:
        raise DataLayoutError(
            f"none of the {len(files)} images in {root} (e.g. {files[0].name}) has a row in {label_path}: "
            "expected file names ILSVRC2012_val_XXXXXXXX.<ext> matching the label file")
    if unlabelled:
        notes.append(f"{len(unlabelled)} images have no label in {label_path.name} and are skipped "
                     f"(e.g. {unlabelled[0]})")
    missing = sorted(set(table) - on_disk)
    if missing:
        notes.append(f"{len(missing)} images listed in {label_path.name} are not in {root} "
                     f"(e.g. {missing[0]})")
    index = imagenet_index()
    unknown = sorted({w for _, w, _ in pairs if w not in index})
    if unknown:
        raise DataLayoutError(
            f"{label_path} names {len(unknown)} classes that are not ImageNet-1k wnids (e.g. {unknown[0]}): "
            "expected ImageNet-1k validation labels")
    return _imagenet_scan(layout, pairs, notes)


def scan_imagefolder(root: Path, folders: list[str]) -> DirectoryScan | None:
    """DIR/<class>/<images>; None when no class folder holds an image."""
    per_class = {c: walk_class(root, c) for c in folders}
    if not any(per_class.values()):
        return None
    notes: list[str] = []
    pairs = [(p.relative_to(root).as_posix(), c, p) for c, files in per_class.items() for p in files]
    index = imagenet_index()
    # Folders without images that are not wnids (an extracted devkit, "misc") must not turn an
    # ImageNet folder into a generic one: that would shift every label by one, silently.
    if all(c in index for c in folders if per_class[c]):
        stray = [c for c in folders if c not in index]
        if stray:
            notes.append(f"{len(stray)} sub-folders without images that are not ImageNet-1k wnids ignored "
                         f"(e.g. {stray[0]})")
        empty = [c for c in folders if c in index and not per_class[c]]
        add_capped(notes, [f"class folder {c} has no images" for c in empty],
                   "... and {n} more class folders without images")
        return _imagenet_scan("imagefolder", pairs, notes)
    add_capped(notes, [f"class folder {c} has no images" for c in folders if not per_class[c]],
               "... and {n} more class folders without images")
    if all(WNID.match(c) for c in folders):
        odd = [c for c in folders if c not in index]
        notes.append(f"{len(odd)} class folders are wnids outside ImageNet-1k (e.g. {odd[0]}): labels are "
                     "the sorted folder order, not ImageNet-1k indices")
    label = {c: i for i, c in enumerate(folders)}
    items = sorted(((iid, label[c], p) for iid, c, p in pairs), key=lambda t: t[0])
    return DirectoryScan("imagefolder", "imagefolder", items, list(folders), list(folders), len(folders),
                         notes)


def scan_directory(root: Path, labels: str | None = None) -> DirectoryScan:
    """Detect the layout of ``root`` (see the module docstring) and list its labelled images."""
    root = Path(os.path.abspath(root))  # lexical: "val" given in the download folder still has parents
    try:
        files, folders, others = list_top(root)
        label_file = find_label_file(root, labels) if files or labels is not None else None
        if files and label_file is not None:
            scan = scan_flat(root, files, *label_file)
            if folders:
                scan.notes.append(f"{len(folders)} sub-folders of {root} ignored (flat layout)")
            return scan
        folder_scan = scan_imagefolder(root, folders) if folders else None
    except PermissionError as exc:
        raise DataLayoutError(f"cannot read {exc.filename or root}: permission denied") from None
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        raise DataLayoutError(f"cannot read {exc.filename or root}: {reason}") from None
    if folder_scan is not None:
        if files:
            folder_scan.notes.append(f"{len(files)} images directly in {root} ignored (ImageFolder layout; "
                                     f"no {KAGGLE_CSV} or {DEVKIT_GT} found for a flat layout)")
        if labels is not None:
            folder_scan.notes.append(f"--labels {labels} ignored: ImageFolder labels come from folder names")
        return folder_scan
    if files:
        raise DataLayoutError(f"{root} holds {len(files)} images but no label file ({KAGGLE_CSV} or "
                              f"{DEVKIT_GT} in it, a parent folder or {DEVKIT_DATA.as_posix()}/, "
                              f"or --labels): {EXPECTED}")
    what = "no images found in " + (f"{root} or its {len(folders)} sub-folders" if folders else str(root))
    if others:
        what += f" ({others} files with other extensions)"
    raise DataLayoutError(f"{what}: {EXPECTED}")


def _open(root: Path, request) -> ImageSet:
    scan = scan_directory(root, request.labels)
    samples = [Sample(iid, label, p) for iid, label, p in scan.items]
    return ImageSet(scan.name, str(root), scan.layout, samples, scan.class_names, scan.num_classes,
                    request.image_size, scan.notes, scan.class_ids,
                    request.resize if request.resize is not None else default_resize(request.image_size))


# The catch-all: ImageNet val as ImageFolder or flat + labels, or any ImageFolder (asked last).
register_layout(Layout("imagenet", lambda root: True, _open, priority=100, description=EXPECTED))

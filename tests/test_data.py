"""Data layouts, deterministic sampling, awkward image files, embedded digits, eval preprocessing.

Everything runs on tiny files written into tmp_path; ImageNet indices and names are checked
against timm's own list, never against numbers copied into this file.
"""

import struct
import zlib

import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageFile
from timm.data import ImageNetInfo

from mamba_bench.data import (
    EMBEDDED_DATASETS,
    ImageReadError,
    ImageSet,
    Sample,
    eval_preprocess,
    load_image_rgb,
    open_dataset,
)
from mamba_bench.data import embedded as embedded_mod
from mamba_bench.data.embedded import digits_split
from mamba_bench.errors import DataLayoutError, MambaBenchError

TIMM_WNIDS = list(ImageNetInfo().label_names())
# tench, goldfish, great white shark (the first three ImageNet classes) and the last class
PICK = ["n01440764", "n01443537", "n01484850", TIMM_WNIDS[-1]]


def _jpeg(path, seed=0, size=(40, 30)):
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def _meta_mat(path, wnid_by_id):
    """A devkit-style meta.mat: a struct array 'synsets' with leaves and one inner node."""
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    arr = np.zeros((len(wnid_by_id) + 1,), dtype=dtype)
    for k, (i, w) in enumerate(wnid_by_id.items()):
        arr[k] = (i, w, "words", 0)
    arr[-1] = (len(wnid_by_id) + 1, "n00001740", "entity (an inner node)", 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": arr})


def _png16_rgb(path, arr):
    """A real 16-bit-per-channel RGB PNG (PIL cannot write one), written chunk by chunk."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# ---------------------------------------------------------------- layouts


def test_assumed_wnids_are_imagenet_1k():
    assert all(w in TIMM_WNIDS for w in PICK) and len(TIMM_WNIDS) == 1000


def test_imagefolder_with_wnids_uses_imagenet_indices(tmp_path):
    for k, w in enumerate(PICK):
        for i in range(2):
            _jpeg(tmp_path / w / f"ILSVRC2012_val_{k * 10 + i:08d}.JPEG", seed=k * 10 + i)
    (tmp_path / PICK[0] / ".DS_Store").write_bytes(b"junk")
    (tmp_path / PICK[0] / "notes.txt").write_text("not an image")
    (tmp_path / "__MACOSX" / PICK[0]).mkdir(parents=True)
    (tmp_path / "__MACOSX" / PICK[0] / "._ILSVRC2012_val_00000000.JPEG").write_bytes(b"resource fork")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)  # no images: must not count as a class
    ds = open_dataset(str(tmp_path))
    assert (ds.name, ds.layout, ds.num_classes, len(ds)) == ("imagenet-val", "imagefolder", 1000, 8)
    expected = {f"{w}/ILSVRC2012_val_{k * 10 + i:08d}.JPEG": TIMM_WNIDS.index(w)
                for k, w in enumerate(PICK) for i in range(2)}
    assert {s.image_id: s.label for s in ds.samples} == expected
    assert [s.image_id for s in ds.samples] == sorted(expected)
    tench = TIMM_WNIDS.index("n01440764")
    assert "tench" in ds.class_names[tench].lower() and ds.class_names[tench] != "n01440764"
    assert len(ds.class_names) == 1000 and ds.class_ids[tench] == "n01440764"
    assert any("ILSVRC2012_devkit_t12" in n for n in ds.notes)
    img = ds.load(0)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8


def test_generic_imagefolder(tmp_path):
    _jpeg(tmp_path / "dog" / "a.JPG")
    _jpeg(tmp_path / "cat" / "a.jpeg")
    Image.new("RGB", (30, 30), (10, 200, 30)).save(tmp_path / "cat" / "b.Png")
    (tmp_path / ".hidden").mkdir()
    _jpeg(tmp_path / ".hidden" / "x.jpg")
    ds = open_dataset(str(tmp_path), image_size=32)
    assert ds.name == "imagefolder" and ds.num_classes == 2 and ds.class_names == ["cat", "dog"]
    assert {s.image_id: s.label for s in ds.samples} == {"cat/a.jpeg": 0, "cat/b.Png": 0, "dog/a.JPG": 1}
    assert ds.resize == 36  # 32 * 256 // 224: the standard 0.875 crop ratio at any size
    assert ds.load(0).shape == (32, 32, 3)


def test_generic_imagefolder_notes_empty_class_and_sorts_by_id(tmp_path):
    _jpeg(tmp_path / "a" / "x.jpg")
    _jpeg(tmp_path / "a-b" / "x.jpg")
    (tmp_path / "zebra").mkdir()
    ds = open_dataset(str(tmp_path))
    assert ds.class_names == ["a", "a-b", "zebra"] and ds.num_classes == 3
    # '-' sorts before '/': the samples are in image-id order, not class order
    assert [s.image_id for s in ds.samples] == ["a-b/x.jpg", "a/x.jpg"]
    assert any("zebra has no images" in n for n in ds.notes)


def test_imagefolder_of_non_1k_wnids_is_generic_with_a_note(tmp_path):
    _jpeg(tmp_path / "n00000001" / "x.jpg")
    _jpeg(tmp_path / PICK[1] / "x.jpg")
    ds = open_dataset(str(tmp_path))
    assert ds.name == "imagefolder" and ds.num_classes == 2
    assert [s.label for s in ds.samples] == [0, 1]
    assert any("outside ImageNet-1k" in n for n in ds.notes)


def test_flat_kaggle_csv_in_parent(tmp_path):
    val = tmp_path / "val"
    rows = ["ImageId,PredictionString"]
    order = [PICK[3], PICK[0], PICK[2]]
    for i, w in enumerate(order, 1):
        _jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
        rows.append(f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4 {w} 5 6 7 8")
    rows.append(f"ILSVRC2012_val_{99:08d},{PICK[0]} 1 2 3 4")  # listed, not on disk
    _jpeg(val / "ILSVRC2012_val_00000050.JPEG")  # on disk, no row
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(str(val))
    assert ds.layout == "flat-kaggle-csv" and ds.num_classes == 1000 and len(ds) == 3
    assert [s.label for s in ds.samples] == [TIMM_WNIDS.index(w) for w in order]
    assert ds.samples[0].image_id == "ILSVRC2012_val_00000001.JPEG"
    assert any("not in" in n and "ILSVRC2012_val_00000099" in n for n in ds.notes)
    assert any("no label" in n and "ILSVRC2012_val_00000050.JPEG" in n for n in ds.notes)


def test_kaggle_download_layout_finds_the_csv_four_levels_up(tmp_path):
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _jpeg(val / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{PICK[2]} 0 0 1 1\n")
    ds = open_dataset(str(val))
    assert ds.layout == "flat-kaggle-csv" and [s.label for s in ds.samples] == [TIMM_WNIDS.index(PICK[2])]
    assert any("LOC_val_solution.csv" in n for n in ds.notes)


def test_labels_option_points_at_a_renamed_csv(tmp_path):
    _jpeg(tmp_path / "imgs" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "elsewhere").mkdir()
    csv = tmp_path / "elsewhere" / "my_labels.csv"
    csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{PICK[1]} 0 0 1 1\n")
    ds = open_dataset(str(tmp_path / "imgs"), labels=str(csv))
    assert ds.layout == "flat-kaggle-csv" and [s.label for s in ds.samples] == [TIMM_WNIDS.index(PICK[1])]
    with pytest.raises(DataLayoutError, match="does not exist"):
        open_dataset(str(tmp_path / "imgs"), labels=str(tmp_path / "nope.csv"))


def _devkit_val(tmp_path, meta_dir, gt_dir):
    """Three flat images; devkit IDs deliberately NOT in sorted-wnid order (ID 1 is the last class)."""
    val = tmp_path / "val"
    _meta_mat(meta_dir / "meta.mat", {1: PICK[3], 2: PICK[0], 3: PICK[2]})
    gt_dir.mkdir(parents=True, exist_ok=True)
    (gt_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n3\n2\n")
    for i in range(1, 4):
        _jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    return val, [TIMM_WNIDS.index(w) for w in (PICK[3], PICK[2], PICK[0])]


def test_flat_devkit_maps_ids_through_meta(tmp_path):
    val, expected = _devkit_val(tmp_path, tmp_path, tmp_path)
    ds = open_dataset(str(val))
    assert ds.layout == "flat-devkit" and [s.label for s in ds.samples] == expected


def test_flat_devkit_in_devkit_folder_and_via_labels(tmp_path):
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    val, expected = _devkit_val(tmp_path, data, data)
    assert [s.label for s in open_dataset(str(val)).samples] == expected
    gt = data / "ILSVRC2012_validation_ground_truth.txt"
    moved = tmp_path / "labels" / "gt.txt"  # renamed, meta.mat beside it
    moved.parent.mkdir()
    moved.write_text(gt.read_text())
    (data / "meta.mat").rename(moved.parent / "meta.mat")
    gt.unlink()
    ds = open_dataset(str(val), labels=str(moved))
    assert ds.layout == "flat-devkit" and [s.label for s in ds.samples] == expected


def test_devkit_without_meta_is_a_layout_error(tmp_path):
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DataLayoutError, match="meta.mat") as exc:
        open_dataset(str(tmp_path / "val"))
    assert "\n" not in str(exc.value)


def test_flat_images_without_labels_name_the_label_files(tmp_path):
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataLayoutError, match="LOC_val_solution.csv") as exc:
        open_dataset(str(tmp_path / "val"))
    assert "ImageFolder" in str(exc.value)


def test_flat_layout_wins_over_a_devkit_folder_inside_the_images(tmp_path):
    val = tmp_path / "val"
    data = val / "ILSVRC2012_devkit_t12" / "data"
    _meta_mat(data / "meta.mat", {7: PICK[1]})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("7\n")
    _jpeg(val / "ILSVRC2012_val_00000001.JPEG")
    ds = open_dataset(str(val))
    assert ds.layout == "flat-devkit" and [s.label for s in ds.samples] == [TIMM_WNIDS.index(PICK[1])]


@pytest.mark.parametrize("setup", ["missing", "file", "empty", "text-only", "empty-classes"])
def test_bad_directories_say_the_expected_layout(tmp_path, setup):
    target = tmp_path / "d"
    if setup == "file":
        target.write_text("x")
    elif setup == "empty":
        target.mkdir()
    elif setup == "text-only":
        target.mkdir()
        (target / "readme.txt").write_text("x")
    elif setup == "empty-classes":
        (target / "n01440764").mkdir(parents=True)
    with pytest.raises(DataLayoutError) as exc:
        open_dataset(str(target))
    msg = str(exc.value)
    assert "\n" not in msg
    if setup == "missing":
        assert "does not exist" in msg and "digits" in msg
    else:
        assert "DIR/<wnid>/*.JPEG (ImageFolder" in msg and "LOC_val_solution.csv" in msg


def test_bad_arguments_are_user_errors(tmp_path):
    _jpeg(tmp_path / "a" / "x.jpg")
    with pytest.raises(MambaBenchError, match="per-class"):
        open_dataset(str(tmp_path), per_class=0)
    with pytest.raises(MambaBenchError, match="resize"):
        open_dataset(str(tmp_path), image_size=224, resize=100)
    with pytest.raises(DataLayoutError, match="no data directory"):
        open_dataset("")


# ---------------------------------------------------------------- per-class sampling


def _many(tmp_path, classes=("a", "b"), n=10):
    for c in classes:
        for i in range(n):
            _jpeg(tmp_path / c / f"{i:02d}.jpg", seed=i, size=(8, 8))


def test_per_class_sampling_is_deterministic(tmp_path):
    _many(tmp_path)
    _jpeg(tmp_path / "c" / "only.jpg", size=(8, 8))
    one = open_dataset(str(tmp_path), per_class=3, seed=0)
    again = open_dataset(str(tmp_path), per_class=3, seed=0)
    other = open_dataset(str(tmp_path), per_class=3, seed=1)
    ids = [s.image_id for s in one.samples]
    assert ids == [s.image_id for s in again.samples] and ids == sorted(ids)
    a_ids = [i for i in ids if i.startswith("a/")]
    assert a_ids != [s.image_id for s in other.samples if s.image_id.startswith("a/")]
    labels = [s.label for s in one.samples]
    assert labels.count(0) == 3 and labels.count(1) == 3 and labels.count(2) == 1
    assert any("class c has 1 images < --per-class 3" in n for n in one.notes)
    assert not any("class a " in n for n in one.notes)
    # the documented rule: class-sorted ids, default_rng([seed, label]).permutation(n)[:K]
    pos = np.random.default_rng([0, 0]).permutation(10)[:3]
    assert a_ids == sorted(f"a/{p:02d}.jpg" for p in pos)


def test_per_class_choice_does_not_depend_on_other_classes(tmp_path):
    _many(tmp_path / "two", classes=("a", "b"))
    _many(tmp_path / "three", classes=("a", "b", "c"))
    two = open_dataset(str(tmp_path / "two"), per_class=4, seed=5)
    three = open_dataset(str(tmp_path / "three"), per_class=4, seed=5)
    assert [s.image_id for s in two.samples] == [s.image_id for s in three.samples if s.label < 2]
    assert len(open_dataset(str(tmp_path / "two"), per_class=None)) == 20


def test_per_class_on_digits(tmp_path):
    ds = open_dataset("digits", per_class=5, seed=3)
    assert len(ds) == 50 and np.bincount([s.label for s in ds.samples]).tolist() == [5] * 10
    x, _, ids = digits_split("test")
    j = ids.index(ds.samples[7].image_id)
    assert np.array_equal(ds.load(7), x[j])
    assert any("< --per-class 100" in n for n in open_dataset("digits", per_class=100).notes)


# ---------------------------------------------------------------- awkward files

RGB = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
_XY = np.meshgrid(np.linspace(20, 230, 30), np.linspace(40, 200, 20))
SMOOTH = np.dstack([*_XY, np.full((20, 30), 90.0)])  # compresses well: JPEG round trips stay close


def _write(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "cmyk":
        path = tmp_path / "cmyk.jpg"
        Image.fromarray(SMOOTH.astype(np.uint8)).convert("CMYK").save(path, quality=95)
    elif kind == "rgba":
        a = np.dstack([RGB, np.zeros((20, 30, 1), np.uint8)])
        a[:, 15:, 3] = 255  # left half transparent (→ white), right half opaque (→ the pixels)
        Image.fromarray(a, "RGBA").save(path)
    elif kind == "la":
        Image.fromarray(np.dstack([RGB[..., 0], np.full((20, 30), 0, np.uint8)]), "LA").save(path)
    elif kind == "gray":
        Image.fromarray(RGB[..., 0]).save(path)
    elif kind == "bit":
        Image.fromarray(RGB[..., 0] > 128).save(path)
    elif kind == "palette":
        Image.fromarray(RGB).convert("P").save(path)
    elif kind == "palette-transparent":
        p = Image.fromarray(np.zeros((20, 30), np.uint8), "P")
        p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        p.putpixel((0, 0), 1)
        p.save(path, transparency=0)
    elif kind == "gray16":
        g = np.full((20, 30), 32768, np.uint16)
        g[0, 0] = 65535
        g[0, 1] = 255  # dark in 16 bits: must NOT become white
        Image.fromarray(g).save(path)
    elif kind == "gray16-tiff":
        path = tmp_path / "g16.tif"
        Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(path)
    elif kind == "int32-tiff":
        path = tmp_path / "i32.tif"
        Image.fromarray(np.full((20, 30), 32768, np.int32), "I").save(path)
    elif kind == "float-tiff":
        path = tmp_path / "f.tif"
        Image.fromarray(np.full((20, 30), 0.5, np.float32), "F").save(path)
    elif kind == "rgb16":
        a = np.zeros((20, 30, 3), np.uint16)
        a[0, 0] = 65535
        a[0, 1] = 32768
        a[0, 2] = 255
        _png16_rgb(path, a)
    elif kind == "exif-rotated":
        path = tmp_path / "rot.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° CW to display"
        Image.fromarray(SMOOTH.astype(np.uint8)).save(path, exif=exif, quality=95)
    return path


KINDS = ["cmyk", "rgba", "la", "gray", "bit", "palette", "palette-transparent", "gray16", "gray16-tiff",
         "int32-tiff", "float-tiff", "rgb16", "exif-rotated"]


@pytest.mark.parametrize("kind", KINDS)
def test_awkward_files_become_rgb(tmp_path, kind):
    img = load_image_rgb(_write(tmp_path, kind))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (20, 30, 3) and arr.dtype == np.uint8  # exif: not rotated
    checks = {
        "cmyk": lambda: np.abs(arr.astype(int) - SMOOTH.astype(int)).mean() < 8,
        "rgba": lambda: (arr[:, :15] == 255).all() and np.array_equal(arr[:, 15:], RGB[:, 15:]),
        "la": lambda: (arr == 255).all(),
        "gray": lambda: np.array_equal(arr[..., 2], RGB[..., 0]) and np.array_equal(arr[..., 0], arr[..., 1]),
        "bit": lambda: set(np.unique(arr)) <= {0, 255}
        and np.array_equal(arr[..., 0] == 255, RGB[..., 0] > 128),
        "palette": lambda: np.abs(arr.astype(int) - RGB.astype(int)).mean() < 40,
        "palette-transparent": lambda: (arr[5, 5] == 255).all() and arr[0, 0].tolist() == [255, 0, 0],
        "gray16": lambda: arr[0, 0, 0] == 255 and arr[0, 1, 0] <= 1 and abs(int(arr[5, 5, 0]) - 128) <= 1,
        "gray16-tiff": lambda: abs(int(arr[5, 5, 0]) - 128) <= 1,
        "int32-tiff": lambda: abs(int(arr[5, 5, 0]) - 128) <= 1,
        "float-tiff": lambda: abs(int(arr[5, 5, 0]) - 128) <= 1,
        "rgb16": lambda: arr[0, 0].tolist() == [255] * 3 and arr[0, 1].tolist() == [128] * 3
        and arr[0, 2, 0] <= 1,
        "exif-rotated": lambda: np.abs(arr.astype(int) - SMOOTH.astype(int)).mean() < 8,
    }
    assert checks[kind]()


def test_awkward_files_load_through_an_image_set(tmp_path):
    for kind in KINDS:
        path = _write(tmp_path, kind)
        (tmp_path / "set" / "c").mkdir(parents=True, exist_ok=True)
        path.rename(tmp_path / "set" / "c" / path.name)
    ds = open_dataset(str(tmp_path / "set"), image_size=48)
    assert len(ds) == len(KINDS)
    for i in range(len(ds)):
        out = ds.load(i)
        assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def test_unusable_files_raise_image_read_error(tmp_path):
    _jpeg(tmp_path / "c" / "good.jpg", size=(200, 200))
    data = (tmp_path / "c" / "good.jpg").read_bytes()
    (tmp_path / "c" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(RGB).save(tmp_path / "full.png")
    png = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "c" / "empty.jpg").write_bytes(b"")
    (tmp_path / "c" / "text.jpg").write_text("hello, not an image")
    cases = {tmp_path / "c" / "trunc.jpg": "truncated", tmp_path / "trunc.png": "truncated",
             tmp_path / "c" / "empty.jpg": "empty", tmp_path / "c" / "text.jpg": "cannot identify",
             tmp_path / "missing.jpg": "not found"}
    for path, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as exc:
            load_image_rgb(path)
        assert exc.value.path == path and "\n" not in str(exc.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody switched truncation detection off
    ds = open_dataset(str(tmp_path))
    by_id = {s.image_id: i for i, s in enumerate(ds.samples)}
    assert ds.load(by_id["c/good.jpg"]).shape == (224, 224, 3)
    with pytest.raises(ImageReadError, match="truncated"):
        ds.load(by_id["c/trunc.jpg"])
    with pytest.raises(ImageReadError, match="empty"):
        ds.load(by_id["c/empty.jpg"])


# ---------------------------------------------------------------- embedded digits


def test_digits_split_is_fixed_and_stratified():
    x, y, ids = digits_split("test")
    xt, yt, ids_t = digits_split("train")
    assert x.shape == (450, 64, 64, 3) and x.dtype == np.uint8 and xt.shape[0] == 1347 and y.dtype == np.int64
    totals = np.bincount(y, minlength=10) + np.bincount(yt, minlength=10)
    assert np.all(np.abs(np.bincount(y, minlength=10) - 0.25 * totals) <= 1)  # stratified
    assert not set(ids) & set(ids_t) and ids == sorted(ids) and ids[0].startswith("digits/test/")
    assert x.max() >= 250 and x.min() == 0 and np.array_equal(x[..., 0], x[..., 2])  # 0..16 → 0..255, gray
    embedded_mod._digits.cache_clear()  # recomputed from scratch: the same split and pixels
    x2, y2, ids2 = digits_split("test")
    assert ids2 == ids and np.array_equal(x2, x) and np.array_equal(y2, y)
    ds = open_dataset("digits")
    assert "digits" in EMBEDDED_DATASETS and isinstance(ds, ImageSet) and isinstance(ds.samples[0], Sample)
    assert (ds.name, ds.layout, ds.num_classes, ds.image_size, len(ds)) == ("digits", "embedded", 10, 64, 450)
    assert ds.class_names == [str(i) for i in range(10)] and ds.samples[3].path is None
    assert [s.label for s in ds.samples] == y.tolist() and [s.image_id for s in ds.samples] == ids
    first = ds.load(3)
    assert np.array_equal(first, x[3])
    first[:] = 0  # callers may corrupt in place; the data set must not change
    assert np.array_equal(ds.load(3), x[3])


# ---------------------------------------------------------------- eval preprocessing


def test_eval_preprocess_resizes_then_center_crops():
    arr = np.zeros((375, 500, 3), np.uint8)
    arr[:, 250:] = 255  # left half black, right half white
    out = eval_preprocess(Image.fromarray(arr))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    row = out[112, :, 0].astype(int)
    edge = int(np.argmax(row > 127))
    assert abs(edge - 112) <= 1 and row[: edge - 3].max() < 10 and row[edge + 3:].min() > 245
    tall = np.zeros((500, 375, 3), np.uint8)
    tall[250:] = 255  # top black, bottom white
    col = eval_preprocess(Image.fromarray(tall))[:, 112, 0].astype(int)
    assert abs(int(np.argmax(col > 127)) - 112) <= 1


def test_eval_preprocess_matches_torchvision_and_scales_resize():
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])(img)
    assert np.array_equal(eval_preprocess(img), np.asarray(ref))
    ref64 = T.Compose([T.Resize(73, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64)])(img)
    assert np.array_equal(eval_preprocess(img, image_size=64), np.asarray(ref64))
    assert eval_preprocess(img.convert("L"), image_size=64, resize=100).shape == (64, 64, 3)

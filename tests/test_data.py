"""Data layouts, deterministic sampling, awkward image files, embedded digits, eval preprocessing."""

import numpy as np
import pytest
import scipy.io
from PIL import Image

from mamba_bench.data import ImageReadError, eval_preprocess, load_image_rgb, open_dataset
from mamba_bench.data.embedded import digits_split
from mamba_bench.data.imagenet import imagenet_wnids
from mamba_bench.errors import DataLayoutError

WNIDS = imagenet_wnids()
PICK = [WNIDS[5], WNIDS[400], WNIDS[999]]


def _jpeg(path, seed=0, size=(40, 30)):
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def test_imagefolder_with_wnids_uses_imagenet_indices(tmp_path):
    for k, w in enumerate(PICK):
        for i in range(2):
            _jpeg(tmp_path / w / f"ILSVRC2012_val_{k * 10 + i:08d}.JPEG", seed=k * 10 + i)
    ds = open_dataset(str(tmp_path))
    assert ds.num_classes == 1000 and ds.layout == "imagefolder" and len(ds) == 6
    assert sorted({s.label for s in ds.samples}) == [5, 400, 999]
    assert ds.samples[0].image_id == f"{PICK[0]}/ILSVRC2012_val_00000000.JPEG"
    assert "," in ds.class_names[5] or ds.class_names[5].isalpha()  # a human description, not a wnid
    assert ds.class_names[5] != WNIDS[5]
    assert ds.load(0).shape == (224, 224, 3)


def test_generic_imagefolder(tmp_path):
    for c in ("dog", "cat"):
        _jpeg(tmp_path / c / "a.jpg")
    (tmp_path / ".hidden").mkdir()
    ds = open_dataset(str(tmp_path), image_size=32)
    assert ds.num_classes == 2 and ds.class_names == ["cat", "dog"]
    assert {s.image_id: s.label for s in ds.samples} == {"cat/a.jpg": 0, "dog/a.jpg": 1}
    assert ds.load(0).shape == (32, 32, 3)


def test_flat_kaggle_csv(tmp_path):
    val = tmp_path / "val"
    rows = ["ImageId,PredictionString"]
    for i, w in enumerate([PICK[2], PICK[0], PICK[1]], 1):
        _jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
        rows.append(f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4 {w} 5 6 7 8")
    rows.append(f"ILSVRC2012_val_{99:08d},{PICK[0]} 1 2 3 4")  # listed, not on disk
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")  # in the parent folder
    ds = open_dataset(str(val))
    assert ds.layout == "flat-kaggle-csv"
    assert [s.label for s in ds.samples] == [999, 5, 400]
    assert any("not in" in n for n in ds.notes)


def _meta_mat(path, wnid_by_id):
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    arr = np.zeros((len(wnid_by_id) + 1,), dtype=dtype)
    for k, (i, w) in enumerate(sorted(wnid_by_id.items())):
        arr[k] = (i, w, "words", 0)
    arr[-1] = (1001, "n00000001", "an inner node", 3)
    scipy.io.savemat(str(path), {"synsets": arr})


def test_flat_devkit_maps_ids_through_meta(tmp_path):
    val = tmp_path / "val"
    # devkit IDs deliberately not in wnid order: ID 1 ↔ the last of PICK
    _meta_mat(tmp_path / "meta.mat", {1: PICK[2], 2: PICK[0], 3: PICK[1]})
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n3\n2\n")
    for i in range(1, 4):
        _jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    ds = open_dataset(str(val))
    assert ds.layout == "flat-devkit"
    assert [s.label for s in ds.samples] == [999, 400, 5]


def test_devkit_without_meta_is_a_layout_error(tmp_path):
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DataLayoutError, match="meta.mat"):
        open_dataset(str(tmp_path / "val"))


def test_labels_option_points_at_the_file(tmp_path):
    _jpeg(tmp_path / "imgs" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "elsewhere").mkdir()
    csv = tmp_path / "elsewhere" / "LOC_val_solution.csv"
    csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{PICK[1]} 0 0 1 1\n")
    ds = open_dataset(str(tmp_path / "imgs"), labels=str(csv))
    assert [s.label for s in ds.samples] == [400]


def test_per_class_sampling_is_deterministic(tmp_path):
    for c in ("a", "b"):
        for i in range(10):
            _jpeg(tmp_path / c / f"{i}.jpg", seed=i)
    _jpeg(tmp_path / "c" / "only.jpg")
    one = open_dataset(str(tmp_path), per_class=3, seed=0)
    again = open_dataset(str(tmp_path), per_class=3, seed=0)
    other = open_dataset(str(tmp_path), per_class=3, seed=1)
    ids = [s.image_id for s in one.samples]
    assert ids == [s.image_id for s in again.samples]
    assert ids != [s.image_id for s in other.samples]
    assert [s.label for s in one.samples].count(0) == 3 and [s.label for s in one.samples].count(2) == 1
    assert any("has 1 images < --per-class 3" in n for n in one.notes)


@pytest.mark.parametrize("maker", ["cmyk", "rgba", "gray", "bit", "palette", "gray16", "rgb16"])
def test_awkward_files_become_rgb(tmp_path, maker):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / f"{maker}.png"
    if maker == "cmyk":
        path = tmp_path / "c.jpg"
        Image.fromarray(rgb).convert("CMYK").save(path)
    elif maker == "rgba":
        a = np.dstack([rgb, np.zeros((20, 30, 1), np.uint8)])  # fully transparent → white
        Image.fromarray(a, "RGBA").save(path)
    elif maker == "gray":
        Image.fromarray(rgb[..., 0]).save(path)
    elif maker == "bit":
        Image.fromarray(rgb[..., 0] > 128).save(path)
    elif maker == "palette":
        Image.fromarray(rgb).convert("P").save(path)
    elif maker == "gray16":
        g = np.full((20, 30), 32768, np.uint16)
        g[0, 0] = 65535
        Image.fromarray(g).save(path)
    elif maker == "rgb16":
        Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(path)
    img = load_image_rgb(path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    if maker == "rgba":
        assert (arr == 255).all()
    if maker == "gray16":
        assert arr[0, 0, 0] == 255 and abs(int(arr[5, 5, 0]) - 128) <= 1


def test_unusable_files_raise_image_read_error(tmp_path):
    _jpeg(tmp_path / "good.jpg", size=(200, 200))
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match="truncated"):
        load_image_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(ImageReadError, match="empty"):
        load_image_rgb(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="cannot identify"):
        load_image_rgb(tmp_path / "text.jpg")


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
    assert ("ImageFolder" in msg or "does not exist" in msg) and "\n" not in msg


def test_digits_split_is_fixed_and_stratified():
    x, y, ids = digits_split("test")
    xt, yt, _ = digits_split("train")
    assert x.shape == (450, 64, 64, 3) and x.dtype == np.uint8 and len(xt) == 1347
    totals = np.bincount(y) + np.bincount(yt)
    assert np.all(np.abs(np.bincount(y) - 0.25 * totals) <= 1)  # stratified
    assert not set(ids) & set(digits_split("train")[2])
    ds = open_dataset("digits")
    assert len(ds) == 450 and ds.num_classes == 10 and ds.image_size == 64
    assert np.array_equal(ds.load(3), x[3])


def test_eval_preprocess_resizes_then_center_crops():
    arr = np.zeros((375, 500, 3), np.uint8)
    arr[:, 250:] = 255  # left half black, right half white
    out = eval_preprocess(Image.fromarray(arr))
    assert out.shape == (224, 224, 3)
    row = out[112, :, 0].astype(int)
    assert row[:100].max() < 30 and row[124:].min() > 225  # the edge stays in the middle

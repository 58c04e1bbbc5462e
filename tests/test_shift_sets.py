"""Released shift sets read as published: ImageNet-C/-C-bar/-3DCC folders, ImageNet-V2/-R/-A/-Sketch,
and one run over several of them. Every tree is made here, tiny, in the set's released layout."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mamba_bench.data import open_dataset
from mamba_bench.data.imagenet import imagenet_index, imagenet_wnids
from mamba_bench.data.natural import subset_wnids
from mamba_bench.errors import DataLayoutError, MambaBenchError
from mamba_bench.eval.corrupt import CorruptConfig, _CellImages, run_corrupt
from mamba_bench.models import get_spec
from mamba_bench.models.preprocess import to_model_input

WNIDS = list(imagenet_wnids()[:3])
FILES = ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]


def _img(path, seed, size=(224, 224)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def _imagenet_c(root, corruptions=("gaussian_noise", "fog"), severities=(1, 2)):
    k = 0
    for c in corruptions:
        for s in severities:
            for w_i, w in enumerate(WNIDS):
                for f in FILES:
                    k += 1
                    _img(root / c / str(s) / w / f.replace("0000000", f"{w_i}000000"), k)
    return root


def _val(root, size=(300, 260)):
    for w_i, w in enumerate(WNIDS):
        for j, f in enumerate(FILES):
            _img(root / w / f.replace("0000000", f"{w_i}000000"), 1000 + 10 * w_i + j, size)
    return root


def test_imagenet_c_folders_are_fed_as_they_are(tmp_path):
    root = _imagenet_c(tmp_path / "ImageNet-C")
    ds = open_dataset(str(root))
    assert ds.layout == "imagenet-c" and ds.name == "imagenet-c" and len(ds) == 6
    assert ds.released.cells == {"gaussian_noise": [1, 2], "fog": [1, 2]}
    assert any("without shot_noise" in n for n in ds.notes)  # the corruptions not on disk are named
    assert [s.label for s in ds.samples] == sorted(imagenet_index()[w] for w in WNIDS for _ in FILES)
    from mamba_bench.data.released import ReleasedReader
    from mamba_bench.eval.corrupt import ReleasedCorruption

    reader = ReleasedReader(root)
    cells = [(None, 0), (ReleasedCorruption("fog"), 2)]
    ids = [s.image_id for s in ds.samples]
    items = _CellImages(np.zeros((6, 224, 224, 3), np.uint8), ids, cells, seed=0, reader=reader)
    spec = get_spec("convnext-t")
    for i, iid in enumerate(ids):
        want = np.array(Image.open(root / "fog" / "2" / iid).convert("RGB"))
        got = items[len(ids) + i].numpy()
        assert np.array_equal(got, want)  # no resize, no crop: the file's pixels
        x = to_model_input(torch.from_numpy(got)[None], spec, torch.device("cpu"))[0]
        ref = (torch.from_numpy(want).permute(2, 0, 1).float() / 255 - torch.tensor(spec.mean)[:, None, None]) \
            / torch.tensor(spec.std)[:, None, None]
        assert torch.allclose(x, ref, atol=1e-6)  # only the model's normalisation


def test_released_cells_must_hold_the_same_images(tmp_path):
    root = _imagenet_c(tmp_path / "C")
    victim = root / "fog" / "2" / WNIDS[1]
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    with pytest.raises(DataLayoutError, match=r"fog/2 lacks 2 .* every cell of imagenet-c must hold the same images"):
        open_dataset(str(root))
    (root / "stray").mkdir()
    with pytest.raises(DataLayoutError, match="not its corruptions: stray"):
        open_dataset(str(root))


def test_imagenet_c_bar_and_3dcc_are_recognised(tmp_path):
    assert open_dataset(str(_imagenet_c(tmp_path / "bar", ("sparkles",), (3,)))).layout == "imagenet-c-bar"
    assert open_dataset(str(_imagenet_c(tmp_path / "3d", ("near_focus", "fog_3d"), (1,)))).layout == "imagenet-3dcc"


def _natural(root, folders, per=1, size=(90, 70), filled=None):
    """Every class folder, images in the first ``3 * per`` (or in ``filled``)."""
    filled = set(filled or folders[:3 * per])
    for i, f in enumerate(folders):
        (root / f).mkdir(parents=True, exist_ok=True)
        if f in filled:
            _img(root / f / f"img{i}.jpg", i, size)
    return root


def test_imagenet_v2_index_folders_map_to_their_labels(tmp_path):
    root = _natural(tmp_path / "v2", [str(i) for i in range(1000)], filled=["0", "10", "100"])
    ds = open_dataset(str(root))
    assert ds.layout == "imagenet-v2" and ds.natural_shift
    # folder "100" is ImageNet index 100, not its place among the sorted folder names (0, 1, 10, 100, ...)
    assert {s.image_id.split("/")[0]: s.label for s in ds.samples} == {"0": 0, "10": 10, "100": 100}
    wnid_tree = _natural(tmp_path / "wrong", WNIDS)
    with pytest.raises(DataLayoutError, match="is not imagenet-v2: 3 folders are not its classes"):
        open_dataset(f"imagenet-v2={wnid_tree}")


def test_imagenet_r_and_a_are_restricted_to_their_classes(tmp_path):
    r = subset_wnids("imagenet-r")
    a = subset_wnids("imagenet-a")
    assert len(r) == len(set(r)) == 200 and len(a) == len(set(a)) == 200 and set(r) != set(a)
    import timm.data

    info = timm.data.ImageNetInfo()  # the shipped lists equal timm's copies of the official ones
    assert set(r) <= set(info.label_names()) and set(a) <= set(info.label_names())
    ds = open_dataset(str(_natural(tmp_path / "r", list(r))))
    assert ds.layout == "imagenet-r" and ds.class_subset == sorted(imagenet_index()[w] for w in r)
    missing = _natural(tmp_path / "r2", list(r)[:-1])
    with pytest.raises(DataLayoutError, match=f"lacks 1 of its 200 class folders: {r[-1]}"):
        open_dataset(f"imagenet-r={missing}")


def test_one_run_over_val_imagenet_c_and_r(tmp_path):
    c_root = _imagenet_c(tmp_path / "C")
    val = _val(tmp_path / "val")
    r = subset_wnids("imagenet-r")
    r_root = _natural(tmp_path / "R", list(r), per=2)
    cfg = CorruptConfig(models=["convnext-nano"], data=[str(c_root), str(r_root), str(val)], out=str(tmp_path / "run"),
                        clean_data=str(val), random_init=True, workers=0, progress=False, save_predictions=True,
                        corruptions=["fog,fliplr"], batch_size=4)
    res = run_corrupt(cfg)
    m = res.metrics
    cells = {(d, c, s) for d, c, s in zip(m.dataset, m.corruption, m.severity, strict=True)}
    assert cells == {("imagenet-c", "clean", 0), ("imagenet-c", "fog", 1), ("imagenet-c", "fog", 2),
                     ("imagenet-r", "clean", 0), ("imagenet-val", "clean", 0), ("imagenet-val", "fliplr", 0)}
    assert (m[m.dataset == "imagenet-c"].n == 6).all()
    p = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    pr = p[p.dataset == "imagenet-r"]
    allowed = {imagenet_index()[w] for w in r}
    assert len(pr) == 6 and set(pr.pred) <= allowed and set(pr.label) <= allowed
    # ImageNet-C's clean cell is --clean-data's images of the same files (resize 256 + crop 224 as made)
    clean_c = p[(p.dataset == "imagenet-c") & (p.corruption == "clean")].set_index("image_id")
    clean_val = p[(p.dataset == "imagenet-val") & (p.corruption == "clean")].set_index("image_id")
    assert clean_c.pred.sort_index().tolist() == clean_val.pred.sort_index().tolist()
    man = res.manifest
    assert [d["name"] for d in man["datasets"]] == ["imagenet-c", "imagenet-r", "imagenet-val"]
    again = run_corrupt(cfg)  # resumes: nothing recomputed, the same tables
    pd.testing.assert_frame_equal(again.metrics, m)


def test_released_set_needs_its_clean_images(tmp_path):
    c_root = _imagenet_c(tmp_path / "C")
    cfg = CorruptConfig(models=["convnext-nano"], data=str(c_root), out=str(tmp_path / "run"), random_init=True,
                        workers=0, progress=False)
    with pytest.raises(MambaBenchError, match="holds no clean images: pass --clean-data"):
        run_corrupt(cfg)
    other = _natural(tmp_path / "val", WNIDS, size=(300, 260))
    cfg.clean_data = str(other)
    with pytest.raises(MambaBenchError, match="lacks the clean image of 6 of the 6 images"):
        run_corrupt(cfg)


def test_released_selection_all_extras_and_missing(tmp_path):
    from mamba_bench.eval.corrupt import _released_cells

    ds = open_dataset(str(_imagenet_c(tmp_path / "C", ("gaussian_noise", "fog", "spatter"), (1,))))
    cfg = CorruptConfig(models=[], data="", out="", severities="all")
    names = [c.name if c else "clean" for c, _ in _released_cells(ds, cfg, None)]
    assert names == ["clean", "gaussian_noise", "fog"]  # 'all' is the 15 on disk; spatter is an extra
    assert [c.name for c, _ in _released_cells(ds, cfg, ["all", "extras"])[1:]] == ["gaussian_noise", "fog", "spatter"]
    with pytest.raises(MambaBenchError, match="holds no snow"):
        _released_cells(ds, cfg, ["snow"])
    cfg.severities = [1, 3]
    with pytest.raises(MambaBenchError, match="holds no severity 3"):
        _released_cells(ds, cfg, ["fog"])

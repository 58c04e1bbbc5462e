"""The corruption suite: contents, monotone strength, per-image determinism, user suites, gallery."""

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from mamba_bench.corruptions import (
    apply_corruption,
    corruption_seed,
    default_suite_path,
    eval_crop,
    load_suite,
    make_gallery,
    mean_abs_change,
)
from mamba_bench.corruptions.gallery import PANEL_PX, TITLE_PX
from mamba_bench.errors import MambaBenchError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ["additive_gaussian_noise", "affine", "crop", "hue_saturation", "crop_and_pad", "cutout",
            "dropout", "edge_detect", "emboss", "piecewise_affine", "salt", "fast_snowy_landscape",
            "fliplr", "gaussian_blur", "grayscale", "invert", "linear_contrast", "multiply", "multiply_0",
            "perspective"]
RANDOM = ["additive_gaussian_noise", "dropout", "salt", "cutout", "crop_and_pad", "perspective",
          "piecewise_affine"]
PHOTOS = (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee)


@pytest.fixture(scope="module")
def suite():
    return load_suite()


@pytest.fixture(scope="module")
def photos():
    """Three real photos, preprocessed as for ImageNet evaluation (224x224)."""
    return [eval_crop(Image.fromarray(f()), 224) for f in PHOTOS]


@pytest.fixture(scope="module")
def small(photos):
    """The same photos at 64x64: piecewise_affine costs ~150 ms per 224 px image."""
    return [np.asarray(Image.fromarray(p).resize((64, 64), Image.BICUBIC)) for p in photos]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------ contents


def test_default_suite_is_the_reports_21_entries(suite):
    assert default_suite_path().is_file()
    assert suite.name == "imgaug21"
    assert suite.sha256 == hashlib.sha256(default_suite_path().read_bytes()).hexdigest()
    assert list(suite.corruptions) == EXPECTED
    assert [c.name for c in suite.select("all")] == EXPECTED
    assert suite.clean.name == "clean" and suite.clean.is_clean and suite.clean.augmenter == "Identity"
    assert suite.clean.severity_free and suite.clean.severities == (0,)
    assert {c.name for c in suite.corruptions.values() if c.severity_free} == {"fliplr", "invert"}
    for c in suite.corruptions.values():
        assert c.title and c.role == "corruption"
        assert c.severities == ((0,) if c.severity_free else (1, 2, 3, 4, 5)), c.name
    # "Multiply" changes brightness with one factor; "Multiply 0" is the per-channel configuration
    assert suite.corruptions["multiply"].augmenter == suite.corruptions["multiply_0"].augmenter == "Multiply"
    assert "per_channel" not in suite.corruptions["multiply"].params_for(3)
    assert suite.corruptions["multiply_0"].params_for(3)["per_channel"] is True


def test_eval_crop_matches_imagenet_eval(photos):
    assert all(p.shape == (224, 224, 3) and p.dtype == np.uint8 for p in photos)
    cat = skimage.data.chelsea()  # 300 x 451: shorter side 300 → 256, long side int(256 * 451 / 300) = 384
    resized = np.asarray(Image.fromarray(cat).resize((384, 256), Image.BICUBIC))
    assert np.array_equal(eval_crop(Image.fromarray(cat), 224), resized[16:240, 80:304])


# ---------------------------------------------------------------------------------------- strength


@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in ("fliplr", "invert")])
def test_strength_never_falls_as_severity_rises(suite, photos, small, name):
    c = suite.corruptions[name]
    imgs = small if name == "piecewise_affine" else photos
    strength = [np.mean([mean_abs_change(c, s, im, seed=k, image_id=f"img{j}")
                         for j, im in enumerate(imgs) for k in range(2)]) for s in c.severities]
    assert strength[0] > 1.0, strength  # severity 1 visibly changes the image
    for lo, hi in zip(strength, strength[1:], strict=False):
        assert hi >= lo * 0.99, strength


def test_severity_free_corruptions(suite, photos):
    img = photos[0]
    flipped = apply_corruption(suite.corruptions["fliplr"], 0, img, seed=0, image_id="a")
    assert np.array_equal(flipped, img[:, ::-1])
    inverted = apply_corruption(suite.corruptions["invert"], 0, img, seed=0, image_id="a")
    assert np.array_equal(inverted, 255 - img)
    clean = apply_corruption(suite.clean, 0, img, seed=0, image_id="a")
    assert np.array_equal(clean, img) and not np.shares_memory(clean, img)
    with pytest.raises(UnknownNameError, match="valid: 0"):
        apply_corruption(suite.corruptions["fliplr"], 3, img, seed=0, image_id="a")


def test_every_corruption_keeps_shape_dtype_and_input(suite):
    img = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    before = img.copy()
    for c in [*suite.corruptions.values(), suite.clean]:
        for s in c.severities:
            out = apply_corruption(c, s, img, seed=0, image_id="a")
            assert out.shape == img.shape and out.dtype == np.uint8, (c.name, s)
            assert not np.shares_memory(out, img), (c.name, s)
            assert np.array_equal(img, before), (c.name, s)  # the input is never modified
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        apply_corruption(suite.corruptions["crop"], 1, img.astype(np.float32), seed=0, image_id="a")


# ------------------------------------------------------------------------------------- determinism


def test_corruption_seed_is_pinned():
    """Pinned values: a change here silently changes every corrupted image of every future run."""
    assert corruption_seed(0, "n01440764/ILSVRC2012_val_00000293.JPEG", "gaussian_blur", 3) == 2003609644
    assert corruption_seed(1, "a", "dropout", 5) == 1300805712
    seeds = {corruption_seed(s, i, c, v) for s in (0, 1) for i in ("a", "b", "a|b") for c in ("crop", "salt")
             for v in (1, 2)}
    assert len(seeds) == 24 and all(0 <= x < 2**31 for x in seeds)
    # no ambiguity when an image id contains a separator-like character
    assert corruption_seed(0, "a|crop", "salt", 1) != corruption_seed(0, "a", "crop|salt", 1)


def test_same_key_same_bytes_other_key_other_bytes(suite, small):
    img = small[1]
    for name in RANDOM:
        c = suite.corruptions[name]
        first = apply_corruption(c, 3, img, seed=1, image_id="b")
        assert np.array_equal(apply_corruption(c, 3, img, seed=1, image_id="b"), first), name
        assert not np.array_equal(apply_corruption(c, 3, img, seed=2, image_id="b"), first), name
        assert not np.array_equal(apply_corruption(c, 3, img, seed=1, image_id="c"), first), name
        assert not np.array_equal(apply_corruption(c, 4, img, seed=1, image_id="b"), first), name


def test_result_does_not_depend_on_previous_calls(suite, small):
    """B alone (in a fresh thread: empty augmenter cache) == B after A, for every corruption."""
    a, b = small[0], small[2]
    alone: dict[str, np.ndarray] = {}

    def run_alone():
        for c in suite.corruptions.values():
            s = c.severities[-1]
            alone[c.name] = apply_corruption(c, s, b, seed=5, image_id="b")

    t = threading.Thread(target=run_alone)
    t.start()
    t.join()
    assert len(alone) == len(EXPECTED)
    for c in suite.corruptions.values():
        s = c.severities[-1]
        for k in range(3):  # other images, other seeds, other severities in between
            apply_corruption(c, s, a, seed=k, image_id=f"a{k}")
            apply_corruption(c, c.severities[0], b, seed=k, image_id="b")
        assert np.array_equal(apply_corruption(c, s, b, seed=5, image_id="b"), alone[c.name]), c.name


def test_identical_in_a_fresh_process(suite, small):
    img = small[2]
    here = {n: digest(apply_corruption(suite.corruptions[n], 4, img, seed=7, image_id="z")) for n in RANDOM}
    code = (
        "import hashlib, json, sys, numpy as np, skimage.data\n"
        "from PIL import Image\n"
        "from mamba_bench.corruptions import apply_corruption, eval_crop, load_suite\n"
        "img = eval_crop(Image.fromarray(skimage.data.coffee()), 224)\n"
        "img = np.asarray(Image.fromarray(img).resize((64, 64), Image.BICUBIC))\n"
        "s = load_suite()\n"
        f"print(json.dumps({{n: hashlib.sha256(apply_corruption(s.corruptions[n], 4, img, seed=7, "
        f"image_id='z').tobytes()).hexdigest() for n in {RANDOM!r}}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


# ------------------------------------------------------------------------------------------- names


def test_select_and_unknown_names(suite):
    assert [c.name for c in suite.select("crop, salt")] == ["crop", "salt"]
    assert [c.name for c in suite.select(["salt", "crop,salt"])] == ["salt", "crop"]
    assert suite.select("clean") == []  # clean is always measured; naming it is harmless
    with pytest.raises(UnknownNameError) as exc:
        suite.select("gaussian_blur,blurry")
    msg = str(exc.value)
    assert "'blurry'" in msg and ", ".join(EXPECTED) in msg and "(or 'all', or 'none')" in msg and "\n" not in msg
    with pytest.raises(UnknownNameError):
        suite.select("")
    assert suite.get("clean") is suite.clean and suite.get("crop") is suite.corruptions["crop"]


def test_severities_and_unknown_severities(suite):
    crop, flip = suite.corruptions["crop"], suite.corruptions["fliplr"]
    assert suite.severities(crop, "all") == [1, 2, 3, 4, 5]
    assert suite.severities(crop, [5, 1, 5]) == [1, 5]
    assert suite.severities(crop, "3,1") == [1, 3]
    assert suite.severities(flip, [3]) == [0] and suite.severities(flip, "all") == [0]
    msg = r"^severity 7 is not valid; valid: 1, 2, 3, 4, 5 \(or 'all'\)$"
    with pytest.raises(UnknownNameError, match=msg):
        suite.severities(crop, [1, 7])
    with pytest.raises(UnknownNameError, match="severity 0 is not valid"):
        suite.severities(flip, [0])
    with pytest.raises(UnknownNameError, match="'high' is not valid"):
        suite.severities(crop, "high")


# ------------------------------------------------------------------------------------- user suites

USER_SUITE = """
[suite]
name = "mine"
[[corruption]]
name = "blur"
augmenter = "GaussianBlur"
params = [{sigma = 1.0}, {sigma = 3.0}]
[[corruption]]
name = "flip"
title = "Upside down"
augmenter = "Flipud"
severity_free = true
fixed = {p = 1.0}
[[corruption]]
name = "shift"
augmenter = "Affine"
fixed = {mode = "constant"}
params = [{translate_px = {choice = [-4, 4]}, rotate = [-3, 3]}]
"""


def test_user_suite_loads_and_applies(tmp_path, photos):
    (tmp_path / "s.toml").write_text(USER_SUITE)
    s = load_suite(tmp_path / "s.toml")
    assert s.name == "mine" and list(s.corruptions) == ["blur", "flip", "shift"]
    assert s.clean.name == "clean" and s.clean.is_clean  # supplied when the file has none
    assert s.corruptions["blur"].severities == (1, 2) and s.corruptions["flip"].title == "Upside down"
    assert s.severities(s.corruptions["blur"], [1, 3, 5]) == [1]  # severities it lacks are skipped
    shift = s.corruptions["shift"].params_for(1)  # fixed merged in; {choice} → list, [a, b] → tuple
    assert shift == {"mode": "constant", "translate_px": [-4, 4], "rotate": (-3, 3)}
    flipped = apply_corruption(s.corruptions["flip"], 0, photos[0], seed=0, image_id="a")
    assert np.array_equal(flipped, photos[0][::-1])
    blurred = [mean_abs_change(s.corruptions["blur"], v, photos[1], seed=0, image_id="a") for v in (1, 2)]
    assert 0 < blurred[0] < blurred[1]


@pytest.mark.parametrize("text, needle", [
    ("[[corruption]\nname=", "is not valid TOML"),
    (USER_SUITE.replace("GaussianBlur", "GaussianBlurr"), "unknown imgaug augmenter 'GaussianBlurr'"),
    (USER_SUITE.replace('"GaussianBlur"', '"meta"'), "unknown imgaug augmenter 'meta'"),
    (USER_SUITE.replace("sigma = 3.0", "sigmaa = 3.0"), "severity 2: GaussianBlur rejects its params"),
    (USER_SUITE.replace("sigma = 3.0", "sigma = -3.0"), "rejects its params"),
    (USER_SUITE.replace('name = "flip"', 'name = "blur"'), "'blur' is defined twice"),
    (USER_SUITE.replace('augmenter = "Flipud"\n', ""), "missing field 'augmenter'"),
    (USER_SUITE.replace('name = "blur"\n', ""), "missing field 'name'"),
    (USER_SUITE.replace("params = [{sigma = 1.0}, {sigma = 3.0}]", ""), "missing field 'params'"),
    (USER_SUITE.replace("params = [{sigma", "parms = [{sigma"), "unknown field 'parms'"),
    (USER_SUITE.replace("sigma = 3.0", "sigma = [1, 2, 3]"), "an array must be a range of two numbers"),
    (USER_SUITE.replace("fixed = {p = 1.0}", "params = [{p = 1.0}]"), "takes its parameters from 'fixed'"),
    (USER_SUITE + '[[corruption]]\nname = "small"\naugmenter = "Resize"\nparams = [{size = 16}]\n',
     "changes the image shape"),
    (USER_SUITE + '[[corruption]]\nname = "clean"\naugmenter = "Identity"\n', "clean reference"),
    (USER_SUITE.replace('name = "blur"', 'name = "Blur it"'), "must be snake_case"),
    ("[suite]\nname='x'\n", "no [[corruption]] entries"),
    ("[[corruptions]]\nname='x'\n", "unknown top-level key 'corruptions'"),
])
def test_bad_user_suites(tmp_path, text, needle):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(MambaBenchError) as exc:
        load_suite(tmp_path / "s.toml")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(MambaBenchError, match="does not exist"):
        load_suite(tmp_path / "nope.toml")
    with pytest.raises(MambaBenchError, match="cannot read suite file"):
        load_suite(tmp_path)


# ----------------------------------------------------------------------------------------- gallery


def test_gallery_png(tmp_path, suite):
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    out = make_gallery(tmp_path / "cat.png", tmp_path / "sub" / "g.png", suite, severities=(1, 5), size=96)
    assert out == tmp_path / "sub" / "g.png" and out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert abs(w - 3 * PANEL_PX) <= 2 and abs(h - 20 * (PANEL_PX + TITLE_PX)) <= 2  # 20 rows x (clean, 1, 5)
    assert pixels.std() > 10  # images were drawn, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["g.png"]  # no temporary file left behind

    (tmp_path / "s.toml").write_text(USER_SUITE)
    mine = load_suite(tmp_path / "s.toml")
    out2 = make_gallery(tmp_path / "cat.png", tmp_path / "g2.png", mine, severities=(1, 2, 3), size=64)
    with Image.open(out2) as im:
        assert abs(im.size[0] - 4 * PANEL_PX) <= 2 and abs(im.size[1] - 3 * (PANEL_PX + TITLE_PX)) <= 2


def test_gallery_bad_input(tmp_path, suite):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(MambaBenchError, match="cannot read image") as exc:
        make_gallery(tmp_path / "broken.png", tmp_path / "g.png", suite)
    assert "\n" not in str(exc.value)
    with pytest.raises(MambaBenchError, match="file not found"):
        make_gallery(tmp_path / "missing.jpg", tmp_path / "g.png", suite)
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    with pytest.raises(UnknownNameError, match="severity 9 is not valid"):
        make_gallery(tmp_path / "cat.png", tmp_path / "g.png", suite, severities=(1, 9))
    assert not (tmp_path / "g.png").exists()

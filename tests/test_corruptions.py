"""The corruption suite: contents, monotone strength, per-image determinism, user suites, gallery."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from mamba_bench.corruptions import (
    apply_corruption,
    corruption_seed,
    load_suite,
    make_gallery,
    mean_abs_change,
)
from mamba_bench.data import eval_preprocess
from mamba_bench.errors import MambaBenchError, UnknownNameError

from .conftest import ROOT

EXPECTED = ["additive_gaussian_noise", "affine", "crop", "hue_saturation", "crop_and_pad", "cutout", "dropout",
            "edge_detect", "emboss", "piecewise_affine", "salt", "fast_snowy_landscape", "fliplr",
            "gaussian_blur", "grayscale", "invert", "linear_contrast", "multiply", "multiply_0", "perspective"]


@pytest.fixture(scope="module")
def suite():
    return load_suite()


@pytest.fixture(scope="module")
def photos():
    return [eval_preprocess(Image.fromarray(f())) for f in
            (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee)]


def test_suite_has_the_reports_21_entries(suite):
    assert list(suite.corruptions) == EXPECTED
    assert suite.clean is not None and suite.clean.name == "clean" and suite.clean.severities == (0,)
    assert [c.name for c in suite.select("all")] == EXPECTED
    free = {c.name for c in suite.corruptions.values() if c.severity_free}
    assert free == {"fliplr", "invert"}
    assert all(c.severities == (1, 2, 3, 4, 5) for c in suite.corruptions.values() if not c.severity_free)


def test_strength_never_falls_as_severity_rises(suite, photos):
    for c in suite.corruptions.values():
        if c.severity_free:
            continue
        imgs = photos if c.name != "piecewise_affine" else [p[::2, ::2].copy() for p in photos]
        strength = [np.mean([mean_abs_change(c, s, im, seed=k, image_id=f"img{j}")
                             for j, im in enumerate(imgs) for k in range(2)]) for s in c.severities]
        assert strength[0] > 0.5, (c.name, strength)
        for lo, hi in zip(strength, strength[1:], strict=False):
            assert hi >= lo * 0.99, (c.name, strength)


def test_every_corruption_keeps_shape_and_dtype(suite):
    img = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    for c in suite.corruptions.values():
        for s in c.severities:
            out = apply_corruption(c, s, img, seed=0, image_id="a")
            assert out.shape == img.shape and out.dtype == np.uint8, c.name


def test_depends_only_on_seed_id_corruption_severity(suite, photos):
    noise, drop = suite.corruptions["additive_gaussian_noise"], suite.corruptions["dropout"]
    a, b = photos[0], photos[1]
    first = apply_corruption(noise, 3, b, seed=1, image_id="b")
    apply_corruption(noise, 3, a, seed=1, image_id="a")  # something else in between
    apply_corruption(drop, 3, a, seed=1, image_id="a")
    assert np.array_equal(apply_corruption(noise, 3, b, seed=1, image_id="b"), first)
    assert not np.array_equal(apply_corruption(noise, 3, b, seed=2, image_id="b"), first)
    assert not np.array_equal(apply_corruption(noise, 3, b, seed=1, image_id="c"), first)
    assert corruption_seed(0, "x", "dropout", 1) != corruption_seed(0, "x", "dropout", 2)


def test_identical_in_a_fresh_process(suite, photos):
    c = suite.corruptions["piecewise_affine"]
    img = photos[2][::4, ::4].copy()
    here = hashlib.sha256(apply_corruption(c, 4, img, seed=7, image_id="z").tobytes()).hexdigest()
    code = ("import hashlib, numpy as np, skimage.data; from PIL import Image;"
            "from mamba_bench.data import eval_preprocess; from mamba_bench.corruptions import *;"
            "img = eval_preprocess(Image.fromarray(skimage.data.coffee()))[::4, ::4].copy();"
            "c = load_suite().corruptions['piecewise_affine'];"
            "print(hashlib.sha256(apply_corruption(c, 4, img, seed=7, image_id='z').tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.stdout.strip() == here, out.stderr


def test_unknown_names_list_the_valid_ones(suite):
    with pytest.raises(UnknownNameError) as exc:
        suite.select("gaussian_blur,blurry")
    assert "'blurry'" in str(exc.value) and "perspective" in str(exc.value)
    with pytest.raises(UnknownNameError, match="severity 7 is not valid; valid: 1, 2, 3, 4, 5"):
        suite.severities(suite.corruptions["crop"], [1, 7])
    assert suite.severities(suite.corruptions["fliplr"], [3]) == [0]


USER_SUITE = """
[suite]
name = "mine"
[[corruption]]
name = "blur"
augmenter = "GaussianBlur"
params = [{sigma = 1.0}, {sigma = 3.0}]
[[corruption]]
name = "flip"
augmenter = "Flipud"
severity_free = true
fixed = {p = 1.0}
"""


def test_user_suite_loads_and_applies(tmp_path, photos):
    (tmp_path / "s.toml").write_text(USER_SUITE)
    s = load_suite(tmp_path / "s.toml")
    assert s.name == "mine" and list(s.corruptions) == ["blur", "flip"] and s.clean is None
    assert s.corruptions["blur"].severities == (1, 2)
    flipped = apply_corruption(s.corruptions["flip"], 0, photos[0], seed=0, image_id="a")
    assert np.array_equal(flipped, photos[0][::-1])


@pytest.mark.parametrize("text, needle", [
    ("[[corruption]\nname=", "not valid TOML"),
    (USER_SUITE.replace("GaussianBlur", "GaussianBlurr"), "unknown imgaug augmenter 'GaussianBlurr'"),
    (USER_SUITE.replace("sigma = 3.0", "sigmaa = 3.0"), "rejects its params"),
    (USER_SUITE.replace('name = "flip"', 'name = "blur"'), "defined twice"),
    (USER_SUITE.replace('augmenter = "Flipud"\n', ""), "missing field 'augmenter'"),
    ("[suite]\nname='x'\n", "no [[corruption]]"),
])
def test_bad_user_suites(tmp_path, text, needle):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(MambaBenchError) as exc:
        load_suite(tmp_path / "s.toml")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_gallery_png(tmp_path, suite):
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    out = make_gallery(tmp_path / "cat.png", tmp_path / "g.png", suite, severities=(1, 5))
    w, h = Image.open(out).size
    assert h > 3 * w  # 20 rows of 3 panels
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(MambaBenchError):
        make_gallery(tmp_path / "broken.png", tmp_path / "g2.png", suite)
    assert not (tmp_path / "g2.png").exists()

"""The ImageNet-C suite (transforms/imagenet-c.toml), suites by name, selection keywords, reserved names."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import imagecorruptions
import imgaug.random as iarandom
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.filters import gaussian

from mamba_bench.corruptions import apply_corruption, corruption_seed, eval_crop, load_suite, mean_abs_change
from mamba_bench.corruptions.suite import _PROBE, RESERVED_NAMES, resolve_suite_path, shipped_suites
from mamba_bench.errors import MambaBenchError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
FIFTEEN = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
           "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
EXTRAS = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
# no random draw at all: the same pixels whatever the seed
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


@pytest.fixture(scope="module")
def suite():
    return load_suite("imagenet-c")


@pytest.fixture(scope="module")
def photo():
    return eval_crop(Image.fromarray(skimage.data.astronaut()), 224)


def numpy_seed(seed: int, image_id: str, name: str, severity: int) -> int:
    """The seed numpy's global RNG gets for this image, derived as imgaug's imgcorruptlike augmenter does
    after apply_corruption's ``aug.seed_(corruption_seed(...))``: its RNG advances once (drawing the
    constant severity) and then draws one seed per image (``generate_seeds_``)."""
    rng = iarandom.RNG(corruption_seed(seed, image_id, name, severity))
    rng.advance_()
    return int(rng.generate_seeds_(1)[0])


def reference(img: np.ndarray, name: str, severity: int, k: int) -> np.ndarray:
    """``imagecorruptions.corrupt`` with numpy's global RNG seeded by ``k`` (its state restored after)."""
    state = np.random.get_state()
    try:
        np.random.seed(k)
        # impulse_noise takes the seed as its own argument (scikit-image's random_noise(rng=...))
        extra = {"seed": k} if name == "impulse_noise" else {}
        return imagecorruptions.corrupt(img, corruption_name=name, severity=severity, **extra)
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------ contents


def test_suite_by_name_contents_and_official_names(suite):
    assert set(shipped_suites()) >= {"imgaug21", "imagenet-c"}
    assert suite.path == (ROOT / "transforms" / "imagenet-c.toml").resolve() and suite.name == "imagenet-c"
    assert suite.sha256 == hashlib.sha256((ROOT / "transforms" / "imagenet-c.toml").read_bytes()).hexdigest()
    # the released ImageNet-C folder names, which are imagecorruptions' names, in its order
    assert list(suite.corruptions) == FIFTEEN + EXTRAS == imagecorruptions.get_corruption_names("all")
    assert imagecorruptions.get_corruption_names("common") == FIFTEEN
    for c in suite.corruptions.values():
        assert c.augmenter.startswith("imgcorruptlike.") and c.seeds_numpy_global_rng, c.name
        assert c.severities == (1, 2, 3, 4, 5) and not c.severity_free
        assert [c.params_for(s) for s in c.severities] == [{"severity": s} for s in c.severities]
        assert c.in_all == (c.name in FIFTEEN)
    assert suite.groups == {"noise": FIFTEEN[:3], "blur": FIFTEEN[3:7], "weather": FIFTEEN[7:11],
                            "digital": FIFTEEN[11:], "extras": EXTRAS}
    assert suite.clean.is_clean and not suite.clean.seeds_numpy_global_rng
    # the default suite by name, and a path still works
    assert load_suite("imgaug21").sha256 == load_suite().sha256 == load_suite(None).sha256
    assert load_suite(str(ROOT / "transforms" / "imagenet-c.toml")).sha256 == suite.sha256


def test_unknown_suite_name_says_which_are_shipped(tmp_path):
    with pytest.raises(MambaBenchError) as exc:
        load_suite("imagenet_c")
    msg = str(exc.value)
    assert "does not exist" in msg and "imagenet-c" in msg and "imgaug21" in msg and "\n" not in msg
    # a path-like argument is only a path (no hint), and a file named like a shipped suite needs ./
    assert resolve_suite_path("./imgaug21") == Path("./imgaug21")
    assert resolve_suite_path(Path("imgaug21")) == Path("imgaug21")


def test_names_resolve_from_an_installed_wheel_layout(tmp_path):
    """pyproject's force-include puts transforms/ at mamba_bench/_suites; without a checkout around the
    package, the names resolve there."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert mapping == {"transforms": "mamba_bench/_suites"}
    site = tmp_path / "site"
    shutil.copytree(ROOT / "mamba_bench", site / "mamba_bench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "transforms", site / mapping["transforms"])
    code = ("import json; from mamba_bench.corruptions.suite import resolve_suite_path as r\n"
            "print(json.dumps([str(r('imagenet-c')), str(r('imgaug21')), str(r(None))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    suites = site / "mamba_bench" / "_suites"
    assert json.loads(out.stdout) == [str(suites / "imagenet-c.toml"), str(suites / "imgaug21.toml"),
                                      str(suites / "imgaug21.toml")]


# ------------------------------------------------------------------------------------------- pixels

EQUAL_CASES = [("gaussian_noise", 2), ("shot_noise", 5), ("impulse_noise", 3), ("defocus_blur", 1),
               ("motion_blur", 4), ("snow", 3), ("frost", 1), ("fog", 5), ("brightness", 2), ("contrast", 4),
               ("elastic_transform", 2), ("pixelate", 3), ("jpeg_compression", 5), ("speckle_noise", 1),
               ("gaussian_blur", 3), ("spatter", 2), ("spatter", 5), ("saturate", 4)]


@pytest.mark.parametrize("name, severity", EQUAL_CASES)
def test_equals_imagecorruptions_corrupt_for_the_same_seed(suite, photo, name, severity):
    c = suite.corruptions[name]
    for seed, iid in ((0, "n01440764/ILSVRC2012_val_00000293.JPEG"), (3, "b")):
        ours = apply_corruption(c, severity, photo, seed=seed, image_id=iid)
        theirs = reference(photo, name, severity, numpy_seed(seed, iid, name, severity))
        assert theirs.dtype == np.uint8 and np.array_equal(ours, theirs), (name, severity, seed)
    assert not np.array_equal(ours, photo)


def _glass_blur_original(x: np.ndarray, severity: int) -> np.ndarray:
    """ImageNet-C's glass blur as make_imagenet_c.py defines it (224-px loop bounds, one
    np.random.randint pair per pixel, bottom-right to top-left), written out for this test."""
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    for _ in range(iterations):
        for h in range(224 - delta, delta, -1):
            for w in range(224 - delta, delta, -1):
                dx, dy = np.random.randint(-delta, delta, size=(2,))
                # the original's tuple "swap" of two views: the first pixel takes the second's value
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return np.uint8(np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


def test_glass_blur_equals_the_original_algorithm(suite, photo):
    """imgaug re-implements glass blur (imagecorruptions' own version draws from numba's RNG instead):
    under the same numpy seed it gives the original's pixels. Severity 2: one pass, the cheapest."""
    ours = apply_corruption(suite.corruptions["glass_blur"], 2, photo, seed=1, image_id="g")
    state = np.random.get_state()
    try:
        np.random.seed(numpy_seed(1, "g", "glass_blur", 2))
        original = _glass_blur_original(photo, 2)
    finally:
        np.random.set_state(state)
    assert np.array_equal(ours, original)


def test_every_cell_deterministic_on_a_small_image(suite):
    """All 19 x 5 cells on a 64-px image: same key → same bytes, whatever numpy's global RNG held before
    (and it is left as it was); another image id → other bytes where the corruption draws at random."""
    img = skimage.data.chelsea()[::4, ::4][:64, :64].copy()
    for c in suite.corruptions.values():
        for s in c.severities:
            np.random.seed(11)
            a = apply_corruption(c, s, img, seed=0, image_id="a")
            after = np.random.random()
            np.random.seed(99)
            b = apply_corruption(c, s, img, seed=0, image_id="a")
            np.random.seed(11)
            assert np.random.random() == after, (c.name, s)  # the global RNG is restored around the image
            assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b), (c.name, s)
            other = apply_corruption(c, s, img, seed=0, image_id="b")
            assert np.array_equal(other, a) == (c.name in DETERMINISTIC), (c.name, s)


def test_identical_in_a_fresh_process(suite, photo):
    names = ["gaussian_noise", "frost", "glass_blur", "elastic_transform"]
    small = np.asarray(Image.fromarray(photo).resize((64, 64), Image.BICUBIC))
    here = {n: hashlib.sha256(apply_corruption(suite.corruptions[n], 4, small, seed=7, image_id="z").tobytes())
            .hexdigest() for n in names}
    code = (
        "import hashlib, json, numpy as np, skimage.data\n"
        "from PIL import Image\n"
        "from mamba_bench.corruptions import apply_corruption, eval_crop, load_suite\n"
        "img = eval_crop(Image.fromarray(skimage.data.astronaut()), 224)\n"
        "img = np.asarray(Image.fromarray(img).resize((64, 64), Image.BICUBIC))\n"
        "s = load_suite('imagenet-c')\n"
        "np.random.seed(5)\n"
        f"print(json.dumps({{n: hashlib.sha256(apply_corruption(s.corruptions[n], 4, img, seed=7, "
        f"image_id='z').tobytes()).hexdigest() for n in {names!r}}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "4321"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_threads_do_not_share_numpy_draws(suite, photo):
    """imgcorruptlike seeds numpy's global RNG per image; threads corrupting at once get what they
    would alone."""
    c = suite.corruptions["gaussian_noise"]
    ids = [f"t{i}" for i in range(24)]
    alone = {i: apply_corruption(c, 3, photo, seed=0, image_id=i) for i in ids}
    got: dict[str, np.ndarray] = {}

    def work(part):
        for i in part:
            got[i] = apply_corruption(c, 3, photo, seed=0, image_id=i)

    threads = [threading.Thread(target=work, args=(ids[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[i], alone[i]) for i in ids)


# ImageNet-C's strength grows with severity in one parameter for these; not for glass_blur (severity 3
# has 3 passes, 4 has 2), frost and fog (blend weights and a renormalisation), snow and spatter (several
# parameters change at once; spatter switches from water to mud at 4), saturate (0.3, 0.1, 2, 5, 20 by
# design): on these photos their mean absolute change dips at some severity, by ImageNet-C's definition.
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "gaussian_blur",
            "motion_blur", "zoom_blur", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]


@pytest.mark.parametrize("name", MONOTONE)
def test_strength_never_falls_as_severity_rises(suite, name):
    photos = [eval_crop(Image.fromarray(f()), 224) for f in (skimage.data.chelsea, skimage.data.coffee)]
    c = suite.corruptions[name]
    strength = [np.mean([mean_abs_change(c, s, im, seed=0, image_id=f"img{j}") for j, im in enumerate(photos)])
                for s in c.severities]
    assert strength[0] > 1.0, strength
    for lo, hi in zip(strength, strength[1:], strict=False):
        assert hi >= lo * 0.99, strength


def test_small_images_and_nan_are_refused(suite):
    with pytest.raises(MambaBenchError, match=r"at least 32 x 32 px, got 32 x 20") as exc:
        apply_corruption(suite.corruptions["fog"], 1, _PROBE[:20], seed=0, image_id="x")
    assert "\n" not in str(exc.value)
    # on this 32-px image spatter forms no drop and imagecorruptions divides 0 by 0: NaN, never black pixels
    with pytest.raises(MambaBenchError, match=r"spatter \(severity 1\) produced NaN pixels on image 'probe'"):
        apply_corruption(suite.corruptions["spatter"], 1, _PROBE, seed=0, image_id="probe")
    assert apply_corruption(suite.corruptions["spatter"], 1, _PROBE, seed=0, image_id="other").dtype == np.uint8


# ---------------------------------------------------------------------------------------- selection


def test_select_all_groups_extras_none(suite):
    names = lambda sel: [c.name for c in suite.select(sel)]  # noqa: E731
    assert names("all") == FIFTEEN and names("extras") == EXTRAS
    assert names("all,extras") == names(["extras", "all"]) == FIFTEEN + EXTRAS  # all's 15 first, then the rest
    assert names("noise,gaussian_noise,saturate") == FIFTEEN[:3] + ["saturate"]
    assert names("saturate, blur") == ["saturate"] + FIFTEEN[3:7]
    assert suite.select("none") == [] and suite.select(["none", "clean"]) == [] and suite.select("clean") == []
    with pytest.raises(UnknownNameError, match="'none' selects no corruption and cannot be combined with 'fog'"):
        suite.select("none,fog")
    with pytest.raises(UnknownNameError) as exc:
        suite.select("all,extra")
    msg = str(exc.value)
    assert "'extra'" in msg and "groups: noise, blur, weather, digital, extras" in msg and "'none'" in msg
    # imgaug21 has no groups and nothing outside 'all': every old selection means what it meant
    old = load_suite()
    assert names_of(old.select("salt,all")) == names_of(old.select("all")) == list(old.corruptions)
    assert old.select("none") == []


def names_of(cs):
    return [c.name for c in cs]


def test_bench_projects_the_cells_all_runs(suite):
    from mamba_bench.eval.bench import project_study

    study = project_study(100.0, suite)  # clean + the 15 (extras are opt-in), at one or all 5 severities
    assert (study["cells_one_severity"], study["cells_all_severities"]) == (16, 76)
    assert study["minutes_all_severities"] == pytest.approx(15_000 * 76 / 100.0 / 60)


def test_cli_lists_the_suite_by_name(cli):
    res = cli("corruptions", "--suite", "imagenet-c", "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["suite"] == "imagenet-c" and [r["name"] for r in doc["corruptions"]] == FIFTEEN + EXTRAS
    assert [r["name"] for r in doc["corruptions"] if not r["in_all"]] == EXTRAS
    assert [r["name"] for r in doc["corruptions"] if r["group"] == "weather"] == FIFTEEN[7:11]
    res = cli("corruptions", "--suite", "imagenet_c")
    assert res.returncode == 2 and "not the name of a shipped suite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------- reserved names

BASE = """
[suite]
name = "mine"
[[corruption]]
name = "blur"
augmenter = "GaussianBlur"
params = [{sigma = 1.0}, {sigma = 3.0}]
"""


@pytest.mark.parametrize("text, needle", [
    (BASE.replace('"blur"', '"mean"'), "the name 'mean' is reserved"),
    (BASE.replace('"blur"', '"none"'), "the name 'none' is reserved"),
    (BASE.replace('"blur"', '"all"'), "the name 'all' is reserved"),
    (BASE.replace('"blur"', '"clean"'), "the name 'clean' is reserved for the clean reference"),
    (BASE + 'group = "mean"\n', "the group name 'mean' is reserved"),
    (BASE + 'group = "all"\n', "the group name 'all' is reserved"),
    (BASE + 'group = "Blurs"\n', "'group' must be a snake_case name"),
    (BASE + 'group = "blur"\n', "group 'blur' is also the name of a corruption"),
    (BASE + "in_all = false\n", "every corruption has in_all = false"),
    (BASE + 'in_all = "no"\n', "'in_all' must be true or false"),
    (BASE + '[[corruption]]\nname = "clean"\naugmenter = "Identity"\nrole = "clean"\ngroup = "g"\n',
     "no 'group' or 'in_all'"),
    (BASE.replace('"GaussianBlur"', '"imgcorruptlike.Nope"'), "unknown imgaug augmenter 'imgcorruptlike.Nope'"),
    (BASE.replace('"GaussianBlur"', '"numpy.ndarray"'), "unknown imgaug augmenter 'numpy.ndarray'"),
    (BASE.replace('"GaussianBlur"', '"meta._x.GaussianBlur"'), "unknown imgaug augmenter"),
])
def test_reserved_and_bad_names_refused_at_load(tmp_path, text, needle):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(MambaBenchError) as exc:
        load_suite(tmp_path / "s.toml")
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert set(RESERVED_NAMES) == {"clean", "mean", "none", "all"}


def test_user_suite_with_groups_and_opt_in(tmp_path):
    (tmp_path / "s.toml").write_text(BASE + 'group = "soft"\n' + """
[[corruption]]
name = "noise"
augmenter = "imgcorruptlike.GaussianNoise"
group = "soft"
in_all = false
params = [{severity = 1}]
""")
    s = load_suite(tmp_path / "s.toml")
    assert names_of(s.select("all")) == ["blur"] and names_of(s.select("soft")) == ["blur", "noise"]
    assert s.corruptions["noise"].seeds_numpy_global_rng and not s.corruptions["blur"].seeds_numpy_global_rng

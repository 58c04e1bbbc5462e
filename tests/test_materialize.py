"""materialize: the written images are the on-the-fly ones, and corrupt on them gives identical results."""

import json

import numpy as np
import pandas as pd
import pytest

from mamba_bench.corruptions import apply_corruption, load_suite
from mamba_bench.data import open_dataset
from mamba_bench.data.materialized import MANIFEST, read_png
from mamba_bench.eval.materialize import materialize

CORR = "additive_gaussian_noise,affine,invert"


@pytest.fixture(scope="module")
def mat(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "digits-c"
    manifest = materialize("digits", out, corruptions=CORR.split(","), severities=[1, 3], per_class=2, seed=5,
                           workers=0)
    return out, manifest


def test_files_are_the_on_the_fly_corruptions(mat):
    out, manifest = mat
    assert manifest["cells"] == [["clean", 0], ["additive_gaussian_noise", 1], ["additive_gaussian_noise", 3],
                                 ["affine", 1], ["affine", 3], ["invert", 0]]
    assert len(manifest["samples"]) == 20 and manifest["images_written"] == 20 * 6
    ds = open_dataset("digits", per_class=2, seed=5)
    suite = load_suite()
    for k in (0, 7, 19):
        image_id, clean = ds.samples[k].image_id, ds.load(k)
        f = manifest["samples"][k]["file"]
        assert manifest["samples"][k]["image_id"] == image_id
        np.testing.assert_array_equal(read_png(out / "clean" / "0" / f), clean)
        for name, sev in (("additive_gaussian_noise", 3), ("affine", 1), ("invert", 0)):
            want = apply_corruption(suite.get(name), sev, clean, seed=5, image_id=image_id)
            np.testing.assert_array_equal(read_png(out / name / str(sev) / f), want)
    # the same command again: complete, nothing rewritten
    again = materialize("digits", out, corruptions=CORR.split(","), severities=[1, 3], per_class=2, seed=5, workers=0)
    assert again["images_written"] == 20 * 6 and again == json.loads((out / MANIFEST).read_text())


def test_corrupt_from_disk_equals_on_the_fly(mat, cli, tmp_path):
    out, _ = mat
    common = ["--model", "convnext-nano", "--random-init", "--corruptions", CORR, "--severities", "1,3",
              "--seed", "5", "--save-predictions", "--device", "cpu", "--workers", "1", "--no-progress"]
    r1 = cli("corrupt", "--data", "digits", "--per-class", "2", "--out", str(tmp_path / "fly"), *common)
    assert r1.returncode == 0, r1.stderr
    r2 = cli("corrupt", "--data", str(out), "--out", str(tmp_path / "disk"), *common)
    assert r2.returncode == 0, r2.stderr
    for table in ("metrics", "predictions"):
        a = pd.read_parquet(tmp_path / "fly" / f"{table}.parquet").drop(columns=["dataset"], errors="ignore")
        b = pd.read_parquet(tmp_path / "disk" / f"{table}.parquet").drop(columns=["dataset"], errors="ignore")
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    disk = json.loads((tmp_path / "disk" / "manifest.json").read_text())
    assert disk["data"]["layout"] == "materialized"


def test_materialized_set_refuses_what_it_does_not_hold(mat, cli, tmp_path):
    out, _ = mat
    base = ["corrupt", "--data", str(out), "--model", "convnext-nano", "--random-init", "--device", "cpu",
            "--no-progress"]
    r = cli(*base, "--seed", "0", "--corruptions", "invert", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--seed 5" in r.stderr and "Traceback" not in r.stderr
    r = cli(*base, "--seed", "5", "--corruptions", "affine", "--severities", "5", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "holds no affine 5" in r.stderr
    r = cli(*base, "--seed", "5", "--corruptions", "invert", "--per-class", "1", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "materialized with --per-class 2" in r.stderr
    r = cli("materialize", "--data", "digits", "--per-class", "1", "--out", str(out))
    assert r.returncode == 2 and "another materialized set" in r.stderr


def test_interrupted_materialize_resumes(tmp_path):
    out = tmp_path / "m"
    first = materialize("digits", out, corruptions=["invert"], per_class=1, workers=0)
    victim = out / "invert" / "0" / first["samples"][3]["file"]
    victim.unlink()
    (out / MANIFEST).unlink()  # as if it had stopped before the end
    (out / ".partial.json").write_text(json.dumps(first["config"]))
    again = materialize("digits", out, corruptions=["invert"], per_class=1, workers=0)
    assert again["images_written"] == 1 and victim.is_file()

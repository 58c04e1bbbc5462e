"""End-to-end `mamba-bench corrupt`: tables, schema, determinism, resume after kill -9, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mamba_bench.models import create_model, save_checkpoint
from mamba_bench.results.store import METRICS_SCHEMA, PREDICTIONS_SCHEMA, SUMMARY_SCHEMA

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

BASE = ["--data", "digits", "--per-class", "3", "--model", "convnext-nano", "--model", "swin-nano",
        "--random-init", "--baseline", "convnext-nano", "--save-predictions", "--no-progress"]


def _assert_schema(df: pd.DataFrame, schema: dict[str, str]) -> None:
    assert list(df.columns) == list(schema)
    for col, dtype in schema.items():
        kind = {"string": "string", "int64": "int64", "float64": "float64", "bool": "bool"}[dtype]
        assert str(df[col].dtype).startswith(kind), (col, df[col].dtype)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    res = run_cli("corrupt", *BASE, "--corruptions", "gaussian_blur,fliplr,additive_gaussian_noise",
                  "--severities", "1,3", "--batch-size", "7", "--workers", "0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out, res


def test_run_directory_tables_and_schema(small_run):
    out, res = small_run
    m = pd.read_parquet(out / "metrics.parquet")
    _assert_schema(m, METRICS_SCHEMA)
    _assert_schema(pd.read_parquet(out / "summary.parquet"), SUMMARY_SCHEMA)
    p = pd.read_parquet(out / "predictions.parquet")
    _assert_schema(p, PREDICTIONS_SCHEMA)
    cells = set(zip(m.corruption, m.severity, strict=True))
    assert cells == {("clean", 0), ("gaussian_blur", 1), ("gaussian_blur", 3), ("fliplr", 0),
                     ("additive_gaussian_noise", 1), ("additive_gaussian_noise", 3)}
    assert len(m) == 2 * len(cells) and not m.duplicated(["model", "corruption", "severity"]).any()
    assert (m.n == 30).all()  # 3 per class × 10 digits
    assert len(p) == 2 * len(cells) * 30
    # the table agrees with the per-image predictions it was reduced from
    g = p.groupby(["model", "corruption", "severity"])["correct"].mean().mul(100)
    for row in m.itertuples():
        assert row.top1 == pytest.approx(g[(row.model, row.corruption, row.severity)])
    clean = m[m.corruption == "clean"].set_index("model").top1
    assert np.allclose(m.top1_drop, clean.reindex(m.model).to_numpy() - m.top1.to_numpy())
    for png in ("per_corruption.png", "severity_curves.png", "best_worst.png"):
        assert Image.open(out / png).size[0] > 200
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert manifest["data"]["usable"] == 30 and manifest["versions"]["torch"] == torch.__version__
    assert "convnext-nano" in res.stdout  # the summary table was printed


def test_same_images_for_every_model_and_every_knob(small_run, tmp_path):
    """Batch size, worker count and the set of models never change a prediction."""
    out, _ = small_run
    other = tmp_path / "r2"
    res = run_cli("corrupt", "--data", "digits", "--per-class", "3", "--model", "swin-nano", "--random-init",
                  "--save-predictions", "--no-progress", "--corruptions", "additive_gaussian_noise,fliplr",
                  "--severities", "3", "--batch-size", "4", "--workers", "2", "--out", str(other))
    assert res.returncode == 0, res.stderr
    a = pd.read_parquet(out / "predictions.parquet")
    b = pd.read_parquet(other / "predictions.parquet")
    key = ["model", "corruption", "severity", "image_id"]
    merged = b.merge(a, on=key, suffixes=("_b", "_a"))
    assert len(merged) == len(b) == 3 * 30
    assert (merged.pred_b == merged.pred_a).all()
    assert np.allclose(merged.nll_b, merged.nll_a, atol=1e-4)


def test_kill_minus_9_then_resume_gives_identical_tables(small_run, tmp_path):
    out_ref, _ = small_run
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "mamba_bench.cli", "corrupt", *BASE, "--corruptions",
            "gaussian_blur,fliplr,additive_gaussian_noise", "--severities", "1,3", "--batch-size", "2",
            "--workers", "0", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "parts").glob("metrics-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "parts").glob("metrics-*.parquet")))
    assert 2 <= done < 6, f"kill landed after {done} cells; the test needs a partial run"
    assert not (out / "metrics.parquet").exists()
    res = run_cli("corrupt", *BASE, "--corruptions", "gaussian_blur,fliplr,additive_gaussian_noise",
                  "--severities", "1,3", "--batch-size", "5", "--workers", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    for table in ("metrics.parquet", "predictions.parquet", "summary.parquet"):
        a, b = pd.read_parquet(out_ref / table), pd.read_parquet(out / table)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 2 and manifest["sessions"][1]["cells_run"] == 6 - done


def test_ctrl_c_exits_130_and_keeps_finished_cells(tmp_path):
    out = tmp_path / "int"
    args = [sys.executable, "-m", "mamba_bench.cli", "corrupt", *BASE, "--corruptions", "all",
            "--batch-size", "2", "--workers", "0", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    # a shell's background jobs inherit SIGINT ignored, and Python then installs no handler: restore it
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "parts").glob("metrics-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume" in err
    parts = list((out / "parts").glob("metrics-*.parquet"))
    assert 1 <= len(parts) < 98 and not (out / "metrics.parquet").exists()
    assert all(pd.read_parquet(p).shape[0] == 2 for p in parts)  # whole parts only: two models each


def test_different_run_in_same_out_is_refused(small_run):
    out, _ = small_run
    before = (out / "metrics.parquet").read_bytes()
    res = run_cli("corrupt", *BASE, "--corruptions", "crop", "--out", str(out))
    assert res.returncode == 2
    assert "holds a different run" in res.stderr and "Traceback" not in res.stderr
    assert (out / "metrics.parquet").read_bytes() == before


@pytest.mark.parametrize("args, needle", [
    (["--model", "vmamba-zz", "--corruptions", "crop"], "unknown model 'vmamba-zz'"),
    (["--model", "convnext-nano", "--corruptions", "blurry"], "unknown corruption 'blurry'"),
    (["--model", "convnext-nano", "--corruptions", "crop", "--severities", "7"], "severity 7"),
    (["--model", "convnext-nano", "--corruptions", "crop"], "no released weights"),
    (["--model", "convnext-nano", "--random-init", "--batch-size", "0"], "--batch-size"),
    (["--model", "convnext-nano", "--random-init", "--baseline", "swin-b"], "--baseline swin-b"),
    (["--model", "convnext-nano", "--random-init", "--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    res = run_cli("corrupt", "--data", "digits", "--per-class", "1", "--no-progress", *args,
                  "--out", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "o" / "metrics.parquet").exists()


def test_empty_data_dir_says_which_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_cli("corrupt", "--data", str(tmp_path / "empty"), "--model", "convnext-nano", "--random-init",
                  "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "ImageFolder" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_malicious_checkpoint_via_cli_runs_no_code(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    res = run_cli("corrupt", "--data", "digits", "--model", "convnext-nano", "--weights", str(tmp_path / "evil.pth"),
                  "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "refusing to load" in res.stderr
    assert not marker.exists()


def _write_image_folder(root):
    """A generic 2-class ImageFolder with every kind of awkward file the real world has."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(root / cls / f"ok{i}.jpg")
    rgb = rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(root / "cat" / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "cat" / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (70, 70))).astype(np.uint16)).save(root / "dog" / "gray16.png")
    Image.fromarray(rgb[..., 0]).save(root / "dog" / "gray.png")
    good = root / "cat" / "ok0.jpg"
    (root / "dog" / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")


def test_awkward_images_are_converted_or_skipped_and_counted(tmp_path):
    data = tmp_path / "folder"
    _write_image_folder(data)
    out = tmp_path / "o"
    res = run_cli("corrupt", "--data", str(data), "--model", "convnext-nano", "--random-init",
                  "--corruptions", "invert", "--no-progress", "--workers", "0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["image_id"] for s in manifest["skipped"]] == ["dog/truncated.jpg"]
    assert manifest["data"]["usable"] == 10
    m = pd.read_parquet(out / "metrics.parquet")
    assert (m.n == 10).all()


def test_resume_over_changed_data_is_refused(tmp_path):
    """A resumed run must not put cells of two image sets in one table (the fingerprint holds the path only)."""
    data = tmp_path / "folder"
    _write_image_folder(data)
    out = tmp_path / "o"
    args = ("corrupt", "--data", str(data), "--model", "convnext-nano", "--random-init", "--corruptions",
            "invert,fliplr", "--no-progress", "--workers", "0", "--out", str(out))
    assert run_cli(*args).returncode == 0
    (out / "parts" / "metrics-fliplr@0.parquet").unlink()  # as if interrupted before the last cell
    again = run_cli(*args)  # same data: resumes
    assert again.returncode == 0, again.stderr
    assert (pd.read_parquet(out / "metrics.parquet").n == 10).all()
    (out / "parts" / "metrics-fliplr@0.parquet").unlink()
    good = data / "cat" / "ok0.jpg"
    (data / "dog" / "truncated.jpg").write_bytes(good.read_bytes())  # a repaired file: 11 usable images now
    r = run_cli(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "holds cells computed on other images (10 usable then, 11 now" in r.stderr
    assert not (out / "parts" / "metrics-fliplr@0.parquet").exists()
    # the refused session left the run as it was: complete, its tables whole
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert run_cli("report", str(out), "--out", str(tmp_path / "rep")).returncode == 0


def test_trained_checkpoint_via_weights(tmp_path):
    """--weights pairs with the models in order; a checkpoint trained on digits loads strictly."""
    torch.manual_seed(0)
    a = save_checkpoint(create_model("convnext-nano"), tmp_path / "a.safetensors", {})
    b = save_checkpoint(create_model("swin-nano"), tmp_path / "b.safetensors", {})
    res = run_cli("corrupt", "--data", "digits", "--per-class", "1", "--model", "convnext-nano", "--weights",
                  str(a), "--model", "swin-nano", "--weights", str(b), "--corruptions", "invert", "--no-progress",
                  "--workers", "0", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [m["weights"] for m in manifest["models"]] == [str(a), str(b)]
    swapped = run_cli("corrupt", "--data", "digits", "--per-class", "1", "--model", "convnext-nano", "--weights",
                      str(b), "--corruptions", "invert", "--out", str(tmp_path / "o2"))
    assert swapped.returncode == 2 and "does not fit convnext-nano" in swapped.stderr


def test_non_finite_logits_stop_the_run_before_a_wrong_row(tmp_path):
    """NaN logits would be scored as class 0 (right for every digit 0) with NaN NLL/ECE: one clear line."""
    model = create_model("convnext-nano")
    last = [mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[3] = float("nan")
    w = save_checkpoint(model, tmp_path / "nan.safetensors", {})
    out = tmp_path / "o"
    res = run_cli("corrupt", "--data", "digits", "--per-class", "1", "--model", "convnext-nano", "--weights", str(w),
                  "--corruptions", "invert", "--no-progress", "--workers", "0", "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "convnext-nano gave non-finite logits (NaN/inf) for 10 of 10 images of clean" in res.stderr
    assert not (out / "metrics.parquet").exists() and not list(out.rglob("*.parquet"))


def test_atomic_write_bytes_leaves_the_old_file_whole(tmp_path, monkeypatch):
    from mamba_bench.results import store

    path = tmp_path / "state.pt"
    store.atomic_write_bytes(path, b"old")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "fsync", fail)  # the new bytes are written, then the write fails
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_bytes(path, b"new and longer")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]

"""`predict`, `corruptions`, `models`, `bench` from the command line."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mamba_bench.models import create_model, get_spec, save_checkpoint
from mamba_bench.models.preprocess import to_model_input


@pytest.fixture
def digit_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = create_model("convnext-nano")
    names = [f"digit-{i}" for i in range(10)]
    path = save_checkpoint(model, tmp_path / "nano.safetensors", {"class_names": json.dumps(names)})
    return model, path, names


def test_predict_json_matches_the_model(cli, tmp_path, digit_checkpoint):
    model, path, names = digit_checkpoint
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    res = cli("predict", "--model", "convnext-nano", "--weights", str(path), str(tmp_path / "x.png"),
              "--topk", "3", "--format", "json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    top = out[0]["topk"]
    assert [t["rank"] for t in top] == [1, 2, 3]
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    with torch.inference_mode():  # a 64 px image with crop_pct 1.0 reaches the model unchanged
        logits = model(to_model_input(torch.from_numpy(img)[None], get_spec("convnext-nano"),
                                      torch.device("cpu")))[0]
    want = logits.topk(3)
    assert [t["index"] for t in top] == want.indices.tolist()
    assert [t["logit"] for t in top] == pytest.approx(want.values.tolist(), abs=1e-4)
    assert top[0]["label"] == names[top[0]["index"]]


def test_predict_unreadable_image_is_exit_2(cli, tmp_path, digit_checkpoint):
    _, path, _ = digit_checkpoint
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = cli("predict", "--model", "convnext-nano", "--weights", str(path), str(tmp_path / "bad.jpg"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "bad.jpg" in res.stderr


def test_predict_offline_without_weights_names_the_file(cli, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    res = cli("predict", "--model", "convnext-b", str(tmp_path / "x.png"),
              env={"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert res.returncode == 2
    assert "model.safetensors of timm/convnext_base.fb_in1k" in res.stderr
    assert "--weights /path/to/model.safetensors" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_corruptions_list_json(cli):
    res = cli("corruptions", "--format", "json")
    assert res.returncode == 0, res.stderr
    names = [c["name"] for c in json.loads(res.stdout)["corruptions"]]
    assert len(names) == 20 and "multiply_0" in names and "clean" not in names


def test_corruptions_preview_gallery(cli, tmp_path):
    import skimage.data

    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    res = cli("corruptions", "--preview", str(tmp_path / "cat.png"), "--out", str(tmp_path / "g.png"),
              "--severities", "1,5")
    assert res.returncode == 0, res.stderr
    w, h = Image.open(tmp_path / "g.png").size
    assert h > w  # one row per corruption, three columns


def test_unknown_format_is_exit_2(cli):
    res = cli("models", "--format", "yaml")
    assert res.returncode == 2 and "--format" in res.stderr


def test_models_lists_registry(cli):
    res = cli("models", "--format", "json")
    names = {m["name"] for m in json.loads(res.stdout)}
    assert {"swin-b", "convnext-b", "convnext-nano"} <= names


def test_bench_corrupt_reports_every_corruption(cli, tmp_path):
    res = cli("bench", "corrupt", "--model", "convnext-nano", "--model", "swin-nano", "--images", "4",
              "--repeats", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out",
              str(tmp_path), "--format", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "bench_corrupt.json").read_text())
    assert len(data["ms_per_image"]) == 20 and all(v > 0 for v in data["ms_per_image"].values())
    p = data["pipeline"]
    # ratios of timings: only their meaning is held here (no timing thresholds: a busy machine skews them)
    assert p["cells"] == 20 and p["ratio"] == pytest.approx(p["end_to_end_ips"] / p["model_only_combined_ips"])
    assert p["from_disk_ratio"] == pytest.approx(p["from_disk_ips"] / p["model_only_combined_ips"])
    assert all(math.isfinite(v) and v > 0 for v in (p["end_to_end_ips"], p["from_disk_ips"]))
    assert p["model_only_combined_ips"] < min(p["model_only_ips"].values())
    # both figures count the same images: one pass over the clean images per cell
    assert p["model_only_combined_ips"] == pytest.approx(1 / sum(1 / v for v in p["model_only_ips"].values()))
    assert p["input_pipeline_ips"] > 0 and p["compile"] is False
    # the report's study: 15 000 images × (clean + 18 graded × 5 + 2 severity-free) at the end-to-end rate
    study = p["projected_study"]
    assert (study["cells_one_severity"], study["cells_all_severities"]) == (21, 93)
    assert study["minutes_all_severities"] == pytest.approx(15_000 * 93 / p["end_to_end_ips"] / 60)


@pytest.mark.parametrize("args", [["bench", "models", "--model", "start-m", "--device", "cpu", "--repeats", "1"],
                                  ["predict", "--model", "start-x", "x.png"]])
def test_dg_models_without_a_checkpoint_are_a_clear_error(cli, tmp_path, args):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "dg-train" in r.stderr and "best.pt" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["corrupt", "--model", "convnext-nano", "--data", "digits"], "Missing option '--out'"),
    (["corrupt", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["bench", "scan", "--nope"], "No such option: --nope"),
    (["bench", "pipeline", "--workers", "-1"], "--workers must be 0 or more"),
    (["bench", "models", "--repeats", "0"], "--repeats must be positive"),
    (["bench", "corrupt", "--images", "0"], "--images must be positive"),
    # 0 is refused, not taken for "the default"
    (["dg-train", "--dataset", "rotated-digits", "--init", "vmamba-nano", "--image-size", "0", "--out", "never"],
     "--image-size must be positive"),
    (["finetune", "--data", "synthetic-roads", "--eval-every", "0", "--out", "never"], "--eval-every must be positive"),
    (["explain", "--model", "vmamba-nano", "--data", "digits", "--batch-size", "0", "--out", "never"],
     "--batch-size must be positive"),
])
def test_usage_errors_are_one_line_and_exit_2(cli, args, msg):
    """Typer's own parsing errors (its vendored click's exceptions) follow the same contract as ours."""
    r = cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("mamba-bench: error: ") and msg in r.stderr


@pytest.mark.parametrize("args", [[], ["bench"]])
def test_a_bare_command_prints_its_help_and_no_error_line(cli, args):
    r = cli(*args)
    assert r.returncode == 2 and "Usage" in r.stdout and r.stderr.strip() == "", r.stderr


def test_outputs_that_cannot_be_written_are_one_line(cli, tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, msg in [(["corruptions", "--preview", str(photo), "--out", str(tmp_path)], "is a directory"),
                      (["corruptions", "--preview", str(photo), "--out", str(afile / "g.png")], "cannot create"),
                      (["materialize", "--data", "digits", "--out", str(afile)], str(afile))]:
        r = cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr and msg in r.stderr, (args, r.stderr)

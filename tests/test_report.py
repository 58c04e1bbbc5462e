"""report (Markdown + self-contained HTML, escaping, headless-browser check) and compare (exit codes, McNemar)."""

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mamba_bench.report.compare import mcnemar_p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("runs") / "base<b>&"
    r = run_cli("corrupt", "--model", "convnext-nano", "--random-init", "--data", "digits", "--per-class", "10",
                "--corruptions", "gaussian_blur,invert", "--severities", "1,3", "--save-predictions", "--out", str(out),
                "--no-progress", "--workers", "0", "--device", "cpu",
                env={"MAMBA_BENCH_CACHE": str(out.parent / "cache")})
    assert r.returncode == 0, r.stderr
    return out


def _plant(src: Path, dst: Path, corruption: str, severity: int, flip: int | None) -> Path:
    """A copy of ``src`` whose (corruption, severity) cell loses ``flip`` correct predictions (None: all)."""
    shutil.copytree(src, dst)
    p = pd.read_parquet(dst / "predictions.parquet")
    cell = (p.corruption == corruption) & (p.severity == severity)
    idx = p[cell & p.correct].index
    idx = idx if flip is None else idx[:flip]
    p.loc[idx, "correct"] = False
    p.loc[idx, "pred"] = (p.loc[idx, "label"] + 1) % 10
    p.to_parquet(dst / "predictions.parquet", index=False)
    m = pd.read_parquet(dst / "metrics.parquet")
    mc = (m.corruption == corruption) & (m.severity == severity)
    m.loc[mc, "top1"] = 100.0 * p[cell].correct.mean()
    m.to_parquet(dst / "metrics.parquet", index=False)
    return dst


def test_mcnemar_exact():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_p(3, 2) == pytest.approx(1.0)


def test_compare_rerun_planted_regression_and_noise(run_dir, tmp_path, cli):
    r = cli("compare", str(run_dir), str(run_dir))
    assert r.returncode == 0, r.stderr
    base = pd.read_parquet(run_dir / "predictions.parquet")
    cell = base[(base.corruption == "gaussian_blur") & (base.severity == 1)]
    assert cell.correct.sum() >= 6  # enough correct images to plant a significant drop
    bad = _plant(run_dir, tmp_path / "bad", "gaussian_blur", 1, None)
    r = cli("compare", str(run_dir), str(bad), "--format", "json")
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    reg = [x for x in res["rows"] if x["verdict"] == "regression"]
    assert [(x["corruption"], x["severity"]) for x in reg] == [("gaussian_blur", 1)]
    assert reg[0]["paired_images"] == 100 and reg[0]["p_value"] < 0.05
    # two flipped images: a 2-point drop, above --max-drop but within the noise of 100 paired images
    small = _plant(run_dir, tmp_path / "small", "invert", 0, 2)
    r = cli("compare", str(run_dir), str(small), "--format", "markdown")
    assert r.returncode == 0, r.stderr
    assert "within noise" in r.stdout and "regression(s)" in r.stdout
    # without per-image predictions the threshold alone decides
    for d in (tmp_path / "small",):
        (d / "predictions.parquet").unlink()
    r = cli("compare", str(run_dir), str(small), "--format", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["regressions"] == 1
    r = cli("compare", str(run_dir), str(small))  # the rich table, with no p-values to show
    assert r.returncode == 1 and "regression" in r.stdout and "Traceback" not in r.stderr, r.stderr


def test_one_sided_rows_seeds_and_bad_input(run_dir, tmp_path, cli):
    part = tmp_path / "part"
    shutil.copytree(run_dir, part)
    m = pd.read_parquet(part / "metrics.parquet")
    m[m.corruption != "invert"].to_parquet(part / "metrics.parquet", index=False)
    r = cli("compare", str(run_dir), str(part))
    assert r.returncode == 0 and "row(s) only in the baseline" in " ".join(r.stdout.split())
    r = cli("compare", str(run_dir), str(part), "--format", "json")
    assert json.loads(r.stdout)["only_baseline"] == [{"model": "convnext-nano", "dataset": "digits",
                                                      "corruption": "invert", "severity": 0}]
    other = tmp_path / "seed1"
    shutil.copytree(run_dir, other)
    man = json.loads((other / "manifest.json").read_text())
    man["seed"] = 1
    (other / "manifest.json").write_text(json.dumps(man))
    r = cli("compare", str(run_dir), str(other))
    assert r.returncode == 0 and "warning: baseline and candidate use different seeds" in r.stderr
    r = cli("compare", str(run_dir), str(other), "--strict")
    assert r.returncode == 2 and "--strict" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "metrics.parquet").write_bytes(b"not parquet")
    running = tmp_path / "running"
    shutil.copytree(run_dir, running)
    man = json.loads((running / "manifest.json").read_text())
    man["status"] = "running"
    (running / "manifest.json").write_text(json.dumps(man))
    for cand, msg in ((broken, "not a readable Parquet file"), (running, "still in progress"),
                      (tmp_path / "nope", "is not a directory")):
        r = cli("compare", str(run_dir), str(cand))
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_report_escapes_and_is_a_baseline(run_dir, tmp_path, cli):
    out = tmp_path / "rep"
    r = cli("report", str(run_dir), "--out", str(out), "--title", "study <script>alert(1)</script>")
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "base&lt;b&gt;&amp;" in page and "base<b>&" not in page  # the run's path, escaped
    assert "http://" not in page and "https://" not in page and "src=\"data:image/png;base64," in page
    md = (out / "report.md").read_text()
    assert "\\<script\\>" in md and "| gaussian" in md.replace("\\_", "_")
    # the report directory is a baseline for compare
    r = cli("compare", str(out), str(run_dir))
    assert r.returncode == 0, r.stderr
    # made again into the same folder from a run of that name without predictions: none are left behind
    again = tmp_path / "again" / run_dir.name
    shutil.copytree(run_dir, again)
    (again / "predictions.parquet").unlink()
    assert (out / "data" / run_dir.name / "predictions.parquet").exists()
    r = cli("report", str(again), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert not (out / "data" / run_dir.name / "predictions.parquet").exists()
    assert (out / "data" / run_dir.name / "metrics.parquet").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium (make test installs Debian's chromium when it can)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path, cli):
    out = tmp_path / "rep"
    assert cli("report", str(run_dir), "--out", str(out)).returncode == 0
    shot = tmp_path / "phone.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
         "--window-size=412,1600", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
         (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (412, 1600)
    extrema = img.getextrema()
    assert extrema[0] < 100 and extrema[1] > 200  # text and background: something was drawn


def _run(name: str, cells: list[tuple[str, int]], wrong: dict, n: int = 200):
    """A corrupt Run in memory: ``n`` images per cell, all correct except ``wrong[cell]`` first images."""
    from mamba_bench.report.runs import Run

    preds, metrics = [], []
    for corruption, severity in cells:
        correct = [i >= wrong.get((corruption, severity), 0) for i in range(n)]
        preds += [{"model": "m", "dataset": "d", "corruption": corruption, "severity": severity,
                   "image_id": f"img{i}", "correct": c} for i, c in enumerate(correct)]
        metrics.append({"model": "m", "dataset": "d", "corruption": corruption, "severity": severity,
                        "top1": 100.0 * sum(correct) / n})
    man = {"seed": 0, "suite": {"sha256": "s"}}
    return Run(name, Path(name), "corrupt", man, {"metrics": pd.DataFrame(metrics), "predictions": pd.DataFrame(preds)})


def test_compare_counts_a_row_measured_in_several_runs_once():
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.report.compare import compare

    # two runs per side (severities 1 and 3 apart), each measuring the clean images again
    base = [_run("b1", [("clean", 0), ("blur", 1)], {}), _run("b2", [("clean", 0), ("blur", 3)], {})]
    cand = [_run("c1", [("clean", 0), ("blur", 1)], {("clean", 0): 3}),
            _run("c2", [("clean", 0), ("blur", 3)], {("clean", 0): 3})]
    for i, r in enumerate(base):  # NLL to float noise (another batch split, bf16): not a difference
        r.tables["metrics"]["nll"] = 0.25 + i * 1e-9
    c = compare(base, cand, max_drop=1.0)
    assert len(c.rows) == 3 and not c.warnings
    clean = c.rows[c.rows.corruption == "clean"].iloc[0]
    # 3 of 200 images flipped: paired once each (not 4×), p of McNemar(3, 0), a 1.5-point drop within noise
    assert clean.paired_images == 200 and clean.p_value == pytest.approx(mcnemar_p(3, 0))
    assert clean.verdict == "within noise" and len(c.regressions) == 0
    # copies that disagree: the first run's is used, with a warning; --strict refuses
    cand[1] = _run("c2", [("clean", 0), ("blur", 3)], {("clean", 0): 50})
    c = compare(base, cand, max_drop=1.0)
    assert c.rows[c.rows.corruption == "clean"].iloc[0].top1_cand == pytest.approx(98.5)
    assert len(c.warnings) == 1 and "m/d/clean/0" in c.warnings[0] and "candidate" in c.warnings[0]
    with pytest.raises(MambaBenchError, match="--strict"):
        compare(base, cand, max_drop=1.0, strict=True)


def test_compare_refuses_when_nothing_matches_and_warns_on_other_images():
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.report.compare import compare

    base, cand = _run("b", [("clean", 0)], {}), _run("c", [("clean", 0)], {})
    other = _run("o", [("clean", 0)], {})
    other.tables["metrics"]["model"] = "another"
    with pytest.raises(MambaBenchError, match="no row matches: the baseline has models m on d, the candidate "
                                              "models another on d"):
        compare([base], [other])  # a CI gate that compared nothing must not pass
    base.manifest["data"] = {"name": "d", "samples_sha256": "1"}
    cand.manifest["data"] = {"name": "d", "samples_sha256": "2"}
    c = compare([base], [cand])
    assert c.warnings == ["baseline and candidate use different evaluated images on 1 matched row(s) (m/d/clean/0): "
                          "baseline run b has 1, candidate run c has 2; other files, sampling or skips, deltas "
                          "include that"]
    cand.manifest["data"]["samples_sha256"] = "1"
    assert compare([base], [cand]).warnings == []

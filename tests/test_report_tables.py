"""Report tables and plots on tiny synthetic tables: the best/worst panel's bars, the heat-map, the
per-severity table's severity-free row, data sets never mixed, natural shifts, NaN shown as "—", and
compare's per-row checks of seed / suite / images / precision."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamba_bench.report.runs import Run

NAN = float("nan")


def _metrics(dataset: str, models: dict[str, float], corruptions: dict[str, float], severities=(1, 2),
             free: dict[str, float] | None = None, clean: bool = True, top5=None) -> pd.DataFrame:
    """metrics rows: top-1 = corruption level + model offset (− severity for graded corruptions)."""
    rows = []
    for model, off in models.items():
        if clean:
            rows.append({"model": model, "dataset": dataset, "corruption": "clean", "severity": 0, "top1": 90.0 + off})
        for c, level in corruptions.items():
            for s in severities:
                rows.append({"model": model, "dataset": dataset, "corruption": c, "severity": s,
                             "top1": level + off - s})
        for c, level in (free or {}).items():
            rows.append({"model": model, "dataset": dataset, "corruption": c, "severity": 0, "top1": level + off})
    df = pd.DataFrame(rows)
    df["n"] = 100
    df["top5"] = df["top1"] + 5 if top5 is None else top5
    df["nll"], df["ece"] = 1.0, 2.0
    return df


# ---------------------------------------------------------------------------------------------- plots

def _capture(monkeypatch):
    """Record each figure write_corruption_plots saves: name → [(title, xtick labels, bars per model)]."""
    from mamba_bench.results import plots

    seen = {}
    real = plots.save_figure

    def save(fig, path):
        seen[Path(path).name] = [
            (ax.get_title(), [t.get_text() for t in ax.get_xticklabels()],
             [[float(b.get_height()) for b in bc] for bc in ax.containers]) for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    return seen


@pytest.mark.parametrize("n_models", [1, 3])
def test_best_worst_panel_draws_k_corruptions_per_side(tmp_path, monkeypatch, n_models):
    from mamba_bench.results.plots import best_worst, corruption_table, write_corruption_plots

    models = {f"m{i}": float(i) for i in range(n_models)}
    cors = {f"c{i}": 10.0 * i for i in range(10)}  # c9 best … c0 worst for every model
    m = _metrics("d", models, cors, free={"flip": 45.0})
    table = corruption_table(m, list(models))
    best, worst = best_worst(table, 4)
    assert best == ["c9", "c8", "c7", "c6"] and worst == ["c3", "c2", "c1", "c0"]
    seen = _capture(monkeypatch)
    paths = write_corruption_plots(m, tmp_path, list(models))
    assert [p.name for p in paths] == ["per_corruption.png", "severity_curves.png", "best_worst.png"]
    (t1, x1, bars1), (t2, x2, bars2) = seen["best_worst.png"]
    assert t1 == "(a) best 4 corruptions" and t2 == "(b) worst 4 corruptions"
    assert x1 == best and x2 == worst
    # one bar container per model, each with one bar per corruption, at that model's mean top-1
    assert len(bars1) == len(bars2) == n_models
    for i, (b1, b2) in enumerate(zip(bars1, bars2, strict=True)):
        assert b1 == pytest.approx([10.0 * j + i - 1.5 for j in (9, 8, 7, 6)])
        assert b2 == pytest.approx([10.0 * j + i - 1.5 for j in (3, 2, 1, 0)])


def test_best_worst_with_few_corruptions():
    from mamba_bench.results.plots import best_worst, corruption_table

    m = _metrics("d", {"a": 0.0, "b": 1.0}, {"x": 50.0, "y": 20.0, "z": 70.0})
    assert best_worst(corruption_table(m, ["a", "b"]), 4) == (["z"], ["y"])  # k ≤ half: the sides never overlap
    one = _metrics("d", {"a": 0.0}, {"x": 50.0})
    assert best_worst(corruption_table(one, ["a"]), 4) == (["x"], ["x"])


def test_plots_are_drawn_per_data_set(tmp_path, monkeypatch):
    from mamba_bench.results.plots import write_corruption_plots

    models = {"a": 0.0, "b": 2.0}
    m = pd.concat([_metrics("imagenet-val", models, {"blur": 60.0, "noise": 40.0}),
                   _metrics("set/two", models, {"blur": 20.0, "noise": 10.0}),
                   _metrics("imagenet-v2", models, {})], ignore_index=True)
    seen = _capture(monkeypatch)
    names = [p.name for p in write_corruption_plots(m, tmp_path, list(models))]
    assert names == [f"{kind}-{tag}.png" for tag in ("imagenet-val", "set_two")
                     for kind in ("per_corruption", "severity_curves", "best_worst")]
    # each data set's bars are its own means, never the mean of two data sets
    title, ticks, bars = seen["per_corruption-set_two.png"][0]
    assert "set/two" in title and ticks == ["clean", "blur", "noise"]
    assert bars[0] == pytest.approx([90.0, 18.5, 8.5]) and bars[1] == pytest.approx([92.0, 20.5, 10.5])
    # one data set with corruptions beside a shift set: the usual names, that data set's rows only
    m2 = m[m.dataset != "set/two"]
    seen.clear()
    (tmp_path / "one").mkdir()
    names = [p.name for p in write_corruption_plots(m2, tmp_path / "one", list(models))]
    assert names == ["per_corruption.png", "severity_curves.png", "best_worst.png"]
    assert seen["per_corruption.png"][0][2][0] == pytest.approx([90.0, 58.5, 38.5])


def test_heatmap_table_and_figure():
    from mamba_bench.results.plots import heatmap_figure, heatmap_table

    m = _metrics("d", {"a": 0.0, "b": 10.0}, {"blur": 50.0, "noise": 30.0}, free={"flip": 20.0})
    m = m[~((m.model == "b") & (m.corruption == "noise"))]  # b never saw noise: NaN, and NaN mean
    t = heatmap_table(m)
    assert list(t.index) == ["a", "b"] and list(t.columns) == ["clean", "blur", "noise", "flip", "mean"]
    assert t.loc["a"].tolist() == pytest.approx([90.0, 48.5, 28.5, 20.0, (48.5 + 28.5 + 20.0) / 3])
    assert np.isnan(t.loc["b", "noise"]) and np.isnan(t.loc["b", "mean"])
    fig = heatmap_figure(t, "x")
    texts = [x.get_text() for x in fig.axes[0].texts]
    assert len(texts) == 10 and texts[:5] == ["90.0", "48.5", "28.5", "20.0", "32.3"] and texts.count("—") == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# --------------------------------------------------------------------------------------------- tables

def test_split_datasets_and_natural_shifts():
    from mamba_bench.report.tables import natural_shifts, split_datasets

    models = {"a": 0.0, "b": 4.0}
    val = _metrics("imagenet-val", models, {"blur": 50.0})
    v2 = _metrics("imagenet-v2", {"a": -12.0, "b": -10.0}, {})
    r = _metrics("imagenet-r", {"a": -50.0}, {})  # b not evaluated on imagenet-r
    # the one data set with clean and corrupted rows is the main one, whatever its name
    digits = val.assign(dataset="digits")
    assert split_datasets(pd.concat([v2, digits, r])) == ("digits", ["imagenet-v2", "imagenet-r"], "")
    table, main, _ = natural_shifts(pd.concat([val, v2, r]))
    assert main == "imagenet-val"
    assert list(table.columns) == ["model", "imagenet-val (clean)", "imagenet-v2", "Δ imagenet-v2",
                                   "imagenet-r", "Δ imagenet-r"]
    a, b = table.iloc[0], table.iloc[1]
    assert (a["imagenet-val (clean)"], a["imagenet-v2"], a["Δ imagenet-v2"]) == (90.0, 78.0, -12.0)
    assert a["Δ imagenet-r"] == -50.0 and np.isnan(b["imagenet-r"]) and np.isnan(b["Δ imagenet-r"])
    # released ImageNet-C folders (no clean rows) beside the clean validation set: imagenet-val by name
    c = val[val.corruption != "clean"].assign(dataset="imagenet-c")
    clean_val = val[val.corruption == "clean"]
    assert split_datasets(pd.concat([c, clean_val, v2])) == ("imagenet-val", ["imagenet-v2"], "")
    # two corrupted sets and no imagenet-val: no main set, no drop, and the reason
    main, shifts, why = split_datasets(pd.concat([digits, digits.assign(dataset="other"), v2]))
    assert main is None and shifts == ["imagenet-v2"] and "digits, other" in why
    table, main, why = natural_shifts(pd.concat([digits, digits.assign(dataset="other"), v2]))
    assert list(table.columns) == ["model", "imagenet-v2"] and why
    assert natural_shifts(val) == (None, "imagenet-val", "")  # one data set: no shift table


def test_per_severity_labels_the_severity_free_row():
    from mamba_bench.report.tables import per_severity

    m = _metrics("d", {"a": 0.0}, {"blur": 50.0, "noise": 30.0}, severities=(1, 3),
                 free={"fliplr": 20.0, "invert": 10.0})
    t = per_severity(pd.concat([m, m.assign(dataset="other", top1=0.0)]), "d")
    assert t.severity.tolist() == ["1", "3", "severity-free (fliplr, invert)"]
    # severity 1: blur 49, noise 29; severity-free: the mean of fliplr and invert only (clean 90 left out)
    assert t.a.tolist() == pytest.approx([39.0, 37.0, 15.0])


def _run_dir(root: Path, name: str, metrics: pd.DataFrame, summary: pd.DataFrame | None = None,
             manifest: dict | None = None) -> Path:
    from mamba_bench.eval.metrics import corruption_errors

    d = root / name
    d.mkdir(parents=True)
    metrics.to_parquet(d / "metrics.parquet", index=False)
    (corruption_errors(metrics, None) if summary is None else summary).to_parquet(d / "summary.parquet", index=False)
    man = {"kind": "corrupt", "status": "complete", "seed": 0, "suite": {"name": "s", "sha256": "x"},
           "command": ["mamba-bench", "corrupt"], "execution": {"amp": False}, "plots": [],
           "models": [{"name": n} for n in dict.fromkeys(metrics.model)],
           "datasets": [{"name": n, "usable": 100, "num_classes": 5 if n == "vlcs" else 1000}
                        for n in dict.fromkeys(metrics.dataset)], **(manifest or {})}
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def _section(md: str, heading: str) -> str:
    """The Markdown between ``heading`` and the next heading."""
    start = md.index(heading)
    nxt = md.find("\n#", start + len(heading))
    return md[start:nxt if nxt > 0 else None]


def test_report_groups_by_data_set_shows_shifts_and_missing_values(tmp_path):
    from mamba_bench.report.report import write_report

    models = {"a": 0.0, "b": 4.0}
    val = _metrics("imagenet-val", models, {"blur": 50.0}, free={"fliplr": 40.0})
    vlcs = _metrics("vlcs", models, {"blur": 10.0}, top5=NAN)  # ≤ 5 classes: top-5 NaN
    v2 = _metrics("imagenet-v2", {"a": -12.0, "b": -10.0}, {})
    metrics = pd.concat([val, vlcs, v2], ignore_index=True)
    from mamba_bench.eval.metrics import corruption_errors

    summary = corruption_errors(metrics, "a")
    summary.loc[(summary.model == "b") & (summary.dataset == "vlcs") & (summary.corruption == "mean"), "ce"] = NAN
    d = _run_dir(tmp_path, "multi", metrics, summary)
    res = write_report([d], tmp_path / "rep")
    md = res["markdown"].read_text()
    assert "- data: `imagenet-val (100 images, 1000 classes); vlcs (100 images, 5 classes); imagenet-v2" in md
    assert "- precision: `fp32`" in md
    val_part = _section(md, "### Data set imagenet-val")
    vlcs_part = md[md.index("### Data set vlcs"):md.index("### Natural shifts")]
    # per data set, never a mean of two: blur is 48.5/52.5 (means of severities 1, 2) on imagenet-val, 8.5/12.5 on vlcs
    assert "| blur | 48.50 | 52.50 |" in md[md.index("### Data set imagenet-val"):md.index("### Data set vlcs")]
    assert "| blur | 8.50 | 12.50 |" in vlcs_part and "48.50" not in vlcs_part
    assert val_part.startswith("### Data set imagenet-val")
    assert "| severity-free (fliplr) | 40.00 | 44.00 |" in md and "| 0 |" not in md
    # mCE per data set (baseline a: 100 %), and the run's NaN mCE of b on vlcs shown as —
    mce = _section(vlcs_part, "#### mCE and relative mCE (baseline a)")
    assert "| a | 8.50 | 100.00 | 100.00 |" in mce and "| b | 12.50 | — | 100.00 |" in mce
    shifts = _section(md, "### Natural shifts: top-1 (%) on each data set vs clean imagenet-val")
    assert "| model | imagenet-val (clean) | imagenet-v2 | Δ imagenet-v2 |" in shifts
    assert "| a | 90.00 | 78.00 | -12.00 |" in shifts and "| b | 94.00 | 80.00 | -14.00 |" in shifts
    assert "### Data set imagenet-v2" not in md  # a clean-only set: in the shift table, no section of its own
    # one heat-map per data set with corruptions, embedded in both documents
    heat = sorted(p.name for p in (tmp_path / "rep" / "plots").glob("*heatmap*"))
    assert heat == ["multi-heatmap-imagenet-val.png", "multi-heatmap-vlcs.png"]
    assert "](plots/multi-heatmap-vlcs.png)" in md
    page = res["html"].read_text()
    assert page.count('alt="multi: top-1 heat-map of') == 2
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "nan" not in text.lower() and "nan" not in md.lower() and "<td>—</td>" in text


def test_table_cells_show_missing_values_as_a_dash():
    from mamba_bench.report.report import _cell

    assert [_cell(v, "{:.2f}") for v in (NAN, None, pd.NA, np.float32(1.5), 2.0, 3, "x")] == \
        ["—", "—", "—", "1.50", "2.00", "3", "x"]


# -------------------------------------------------------------------------------------------- compare

def _crun(name: str, metrics: pd.DataFrame, **manifest) -> Run:
    man = {"seed": 0, "suite": {"sha256": "s"}, "execution": {"amp": False}, **manifest}
    return Run(name, Path(name), "corrupt", man, {"metrics": metrics})


def test_compare_checks_seed_per_matched_row():
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.report.compare import compare

    m1 = _metrics("d", {"m1": 0.0}, {"blur": 50.0}, severities=(1,))
    m2 = m1.assign(model="m2")
    # each side holds a seed-0 run and a seed-1 run: equal as sets, but m1's seed-0 cells meet seed-1 cells
    base = [_crun("b1", m1, seed=0), _crun("b2", m2, seed=1)]
    cand = [_crun("c1", m1, seed=1), _crun("c2", m2, seed=0)]
    c = compare(base, cand)
    assert len(c.rows) == 4 and len(c.warnings) == 2
    assert "different seeds on 1 matched row(s) (m1/d/blur/1): baseline run b1 has 0, candidate run c1 has 1" \
        in c.warnings[0]
    assert "(m2/d/blur/1): baseline run b2 has 1, candidate run c2 has 0" in c.warnings[1]
    assert "clean" not in " ".join(c.warnings)  # clean images depend on no seed
    with pytest.raises(MambaBenchError, match="--strict: baseline and candidate use different seeds"):
        compare(base, cand, strict=True)
    # the same seeds paired per row: no warning, even though each side mixes seeds
    assert compare(base, [_crun("c1", m1, seed=0), _crun("c2", m2, seed=1)], strict=True).warnings == []


def test_compare_checks_images_per_data_set_and_precision():
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.report.compare import compare

    m = pd.concat([_metrics("d", {"m": 0.0}, {"blur": 50.0}, severities=(1,)), _metrics("e", {"m": 0.0}, {})])
    base = _crun("b", m, datasets=[{"name": "d", "samples_sha256": "1" * 64}, {"name": "e", "samples_sha256": "2"}])
    cand = _crun("c", m, datasets=[{"name": "d", "samples_sha256": "1" * 64}, {"name": "e", "samples_sha256": "3"}])
    c = compare([base], [cand])
    assert c.warnings == ["baseline and candidate use different evaluated images on 1 matched row(s) (m/e/clean/0): "
                          "baseline run b has 2, candidate run c has 3; other files, sampling or skips, deltas "
                          "include that"]
    cand.manifest["datasets"][1]["samples_sha256"] = "2"
    cand.manifest["execution"] = {"amp": True}
    c = compare([base], [cand])
    assert len(c.warnings) == 1 and "different precision on 3 matched row(s)" in c.warnings[0]
    assert "baseline run b has fp32, candidate run c has bf16 autocast" in c.warnings[0]
    with pytest.raises(MambaBenchError, match="precision"):
        compare([base], [cand], strict=True)
    cand.manifest.pop("execution")  # not recorded: not checked
    assert compare([base], [cand], strict=True).warnings == []


def test_samples_hash_reads_every_manifest_form():
    from mamba_bench.report.compare import samples_hash

    assert samples_hash({"data": {"name": "d", "samples_sha256": "h"}}, "d") == "h"
    assert samples_hash({"data": {"samples_sha256": "h"}}, "d") == "h"
    assert samples_hash({"data": {"name": "other", "samples_sha256": "h"}}, "d") is None
    assert samples_hash({"data": [{"name": "d", "samples_sha256": "h"}]}, "d") == "h"
    assert samples_hash({"data": {"d": {"samples_sha256": "h"}}}, "d") == "h"
    man = {"data": {"name": "x", "samples_sha256": "old"}, "datasets": [{"name": "d", "samples_sha256": "h"}]}
    assert samples_hash(man, "d") == "h" and samples_hash(man, "x") == "old" and samples_hash({}, "d") is None


def test_compare_outputs_handle_nan_top5():
    from mamba_bench.report.compare import compare, to_json, to_markdown

    m = _metrics("vlcs", {"m": 0.0}, {"blur": 50.0}, severities=(1,), top5=NAN)
    worse = m.assign(top1=m.top1 - 5)
    c = compare([_crun("b", m)], [_crun("c", worse)])
    assert len(c.regressions) == 2
    md = to_markdown(c)
    assert "| m | vlcs | blur | 1 | 49.00 | 44.00 | -5.00 | — | regression |" in md
    js = to_json(c)
    assert all(r["top5_base"] is None and r["d_top5"] is None for r in js["rows"])
    json.dumps(js)  # NaN never reaches the JSON

"""What the terminal shows: the tables the commands and the demo print (rich tables, Markdown, JSON).

One module for both the CLI and ``demo``, so the demo prints exactly what the commands do without
reaching into the CLI. Printing only: every number comes from the library call that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

out_console = Console()


def print_run_summary(metrics, summary, out: Path) -> None:
    """One table per data set: clean and mean corrupted top-1, mCE and relative mCE, and why any is undefined."""
    def fmt(v):
        return "—" if v is None or v != v else f"{v:.1f}"

    for dataset in dict.fromkeys(metrics["dataset"]):
        m_ds, s_ds = metrics[metrics.dataset == dataset], summary[summary.dataset == dataset]
        table = Table(title=f"top-1 (%) — {dataset} — {out}")
        for col in ("model", "clean", "corrupted (mean)", "mCE", "relative mCE"):
            table.add_column(col, justify="left" if col == "model" else "right")
        clean = m_ds[m_ds.corruption == "clean"].set_index("model")["top1"]
        means = s_ds[s_ds.corruption == "mean"].set_index("model")
        for model in dict.fromkeys(m_ds["model"]):
            m = means.loc[model] if model in means.index else None
            table.add_row(model, fmt(clean.get(model)), fmt(None if m is None else m["mean_top1"]),
                          fmt(None if m is None else m["ce"]), fmt(None if m is None else m["relative_ce"]))
        out_console.print(table)
        notes = dict.fromkeys(n for n in means.get("note", []) if isinstance(n, str) and n)
        for note in notes:
            out_console.print(f"  note: {note}")


def print_dg(res: dict, selection: str, run: Path, fmt: str = "table", error_bar: str = "sem") -> None:
    """dg-eval's tables: accuracy per test domain (mean ± error bar over seeds) and the domain gap."""
    from mamba_bench.dg.run import ERROR_BARS, summary_table

    header, body = summary_table(res["frame"], selection, error_bar)
    gap_df = res.get("gap")
    if fmt == "json":
        print(json.dumps({"results": res["results"], "plot": res["plot"], "selection": selection,
                          "error_bar": error_bar,
                          "table": [dict(zip(header, r, strict=True)) for r in body],
                          "gap": None if gap_df is None else gap_df.to_dict("records")}, indent=2))
        return
    if fmt == "markdown":
        print(f"Test-domain top-1 (%), {selection} selection, mean ± {ERROR_BARS[error_bar]}:\n")
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in body:
            print("| " + " | ".join(r) + " |")
    else:
        table = Table(title=f"test-domain top-1 (%), {selection} selection, mean ± {ERROR_BARS[error_bar]} — {run}")
        for c in header:
            table.add_column(c, justify="right")
        for r in body:
            table.add_row(*r)
        out_console.print(table)
    if gap_df is not None:
        g = gap_df.groupby("algorithm", sort=False)[["delta", "B", "C", "feat"]].mean().reset_index()
        if fmt == "markdown":
            print("\n| algorithm | Δ | B | C | Feat. |\n|---|---|---|---|---|")
            for r in g.itertuples():
                print(f"| {r.algorithm} | {r.delta:.3f} | {r.B:.3f} | {r.C:.3f} | {r.feat:.3f} |")
        else:
            table = Table(title="domain gap: MMD source vs target (lower is better), mean over cells")
            for c in ("algorithm", "Δ", "B", "C", "Feat."):
                table.add_column(c, justify="right")
            for r in g.itertuples():
                table.add_row(r.algorithm, f"{r.delta:.3f}", f"{r.B:.3f}", f"{r.C:.3f}", f"{r.feat:.3f}")
            out_console.print(table)


def print_frame(df, fmt: str) -> bool:
    """Print a result table as JSON records or Markdown; False for ``table`` (the caller's rich table)."""
    if fmt == "json":
        print(df.to_json(orient="records", indent=2))
        return True
    if fmt == "markdown":
        print("| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns))
        for row in df.itertuples(index=False):
            print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
        return True
    return False


def print_predictions(results: list[dict], fmt: str) -> None:
    """predict's top-k per image: JSON, Markdown or a rich table each."""
    if fmt == "json":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if fmt == "markdown":
                print(f"### {r['image']}\n\n| rank | class | label | logit | probability |\n|---|---|---|---|---|")
                for t in r["topk"]:
                    print(f"| {t['rank']} | {t['index']} | {t['label']} | {t['logit']:.4f} | {t['probability']:.4f} |")
                print()
                continue
            table = Table(title=r["image"])
            for c in ("rank", "class", "label", "logit", "probability"):
                table.add_column(c)
            for t in r["topk"]:
                table.add_row(str(t["rank"]), str(t["index"]), t["label"], f"{t['logit']:.4f}",
                              f"{t['probability']:.4f}")
            out_console.print(table)


def print_models(specs, fmt: str) -> None:
    """The registry as JSON or a rich table."""
    rows = [{"name": s.name, "family": s.family, "description": s.description,
             "timm_name": s.timm_name} for s in specs]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="models (any timm model name works too)")
        for c in ("name", "family", "description", "timm_name"):
            table.add_column(c)
        for r in rows:
            table.add_row(r["name"], r["family"], r["description"], r["timm_name"] or "")
        out_console.print(table)


def print_suite(s, fmt: str) -> None:
    """A corruption suite's entries (name, augmenter, severities, group)."""
    rows = [{"name": c.name, "title": c.title, "augmenter": c.augmenter, "severities": list(c.severities),
             "group": c.group, "in_all": c.in_all} for c in s.corruptions.values()]

    def group(r: dict) -> str:
        return " ".join(filter(None, [r["group"], "" if r["in_all"] else "(not in 'all')"]))

    if fmt == "json":
        print(json.dumps({"suite": s.name, "path": str(s.path), "corruptions": rows}, indent=2))
        return
    if fmt == "markdown":
        print("| name | title | augmenter | severities | group |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['title']} | {r['augmenter']} | {','.join(map(str, r['severities']))} "
                  f"| {group(r)} |")
        return
    table = Table(title=f"suite {s.name} ({s.path}) — plus 'clean', always measured")
    for c in ("name", "title", "augmenter", "severities", "group"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["name"], r["title"], r["augmenter"], ",".join(map(str, r["severities"])), group(r))
    out_console.print(table)


def print_bench_corrupt(res: dict, severity: int, fmt: str) -> None:
    """bench corrupt: ms per image per corruption, then the pipeline's ratio."""
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"{res['suite']['name']}: corruption cost at 224 px, severity {severity} "
                        "(ms / image, 1 process)")
    table.add_column("corruption")
    table.add_column("ms/img", justify="right")
    for name, ms in res["ms_per_image"].items():
        table.add_row(name, f"{ms:.2f}")
    out_console.print(table)
    p = res["pipeline"]
    out_console.print(
        f"pipeline: {p['models']} on {p['cells']} cells × {p['images']} images, {p['workers']} workers\n"
        f"  model-only img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in p["model_only_ips"].items()) +
        f"\n  all models on one clean batch (model-only, combined): {p['model_only_combined_ips']:.2f} img/s\n"
        f"  end-to-end (corrupt once, feed every model): {p['end_to_end_ips']:.2f} img/s\n"
        f"  ratio end-to-end / model-only: {p['ratio']:.3f}")


def print_bench_pipeline(res: dict, batch_size: int, compile: bool, from_disk: bool, device: str) -> None:
    """bench pipeline: end-to-end vs model-only, where the time goes, the projected study."""
    p = res["pipeline"]
    corrupt_ms = sum(res["ms_per_image"].values()) / len(res["ms_per_image"])
    model_ms = 1000.0 / p["model_only_combined_ips"]
    out_console.print(
        f"pipeline on {p.get('device', device)}: {', '.join(p['models'])}; {p['cells']} cells × {p['images']} images, "
        f"batch {batch_size}, {p['workers']} corruption workers" + (", torch.compile" if compile else "") + "\n"
        "  model-only img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in p["model_only_ips"].items()) +
        f"\n  all models, model-only: {p['model_only_combined_ips']:.2f} img/s; end-to-end: "
        f"{p['end_to_end_ips']:.2f} img/s; ratio {p['ratio']:.3f}\n"
        + (f"  from a materialized set (PNG reads instead of corrupting): {p['from_disk_ips']:.2f} img/s; "
           f"ratio {p['from_disk_ratio']:.3f}\n" if from_disk else "")
        + f"  where the time goes, per image: corrupting {corrupt_ms:.2f} ms on one core (mean over the suite) "
        f"vs {model_ms:.2f} ms for all models; the input pipeline alone (workers corrupting, no model) hands "
        f"over {p['input_pipeline_ips']:.1f} img/s, {p['input_pipeline_ips'] / p['model_only_combined_ips']:.2f}× "
        "what the models take")
    study = p["projected_study"]
    out_console.print(
        "  projected wall time of the report's study (15 images × 1000 classes through every model at this "
        f"end-to-end rate): {_duration(study['minutes_one_severity'])} for its {study['cells_one_severity']} "
        f"transformations at one severity, {_duration(study['minutes_all_severities'])} with all severities "
        f"({study['cells_all_severities']} cells)")


def _duration(minutes: float) -> str:
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def print_bench_scan(res: dict, threads: int, fmt: str) -> None:
    """bench scan: time, peak memory and error of each backend vs the reference loop."""
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"selective scan, batch {res['shape']['batch']}, {res['shape']['dim']} channels, "
                        f"L {res['shape']['length']}, fp32, {res['device']}, {threads} threads")
    for c in ("backend", "d_state", "pass", "seconds (best)", "runs", "× vs ref", "peak MB", "max rel. error"):
        table.add_column(c, justify="right")
    for r in res["rows"]:
        table.add_row(r["backend"], str(r["d_state"]), r["pass"], f"{r['seconds']:.3f}", str(r["runs"]),
                      f"{r['speedup_vs_ref']:.1f}" if r.get("speedup_vs_ref") else "—", f"{r['peak_mb']:.0f}",
                      f"{r['max_rel_error_vs_ref']:.1e}" if "max_rel_error_vs_ref" in r else "—")
    out_console.print(table)


def print_bench_models(res: dict, batch_size: int, threads: int) -> None:
    table = Table(title=f"throughput, batch {batch_size}, {res['device']}, {res['precision']}, {threads} threads")
    for c in ("model", "scan backend", "precision", "params (M)", "images/s (best round)", "images/s (median round)"):
        table.add_column(c, justify="right")
    for r in res["rows"]:
        table.add_row(r["model"], r["scan_backend"] or "—", r["precision"], f"{r['params_m']:.1f}",
                      f"{r['images_per_second']:.2f}", f"{r['images_per_second_median']:.2f}")
    out_console.print(table)


def print_finetune(df, out: Path) -> None:
    """The last evaluation of each fine-tuning mode."""
    table = Table(title=f"road segmentation, final evaluation — {out}")
    for c in ("mode", "iters", "Dice", "IoU", "val loss", "s/iter", "trainable params", "frozen tensors"):
        table.add_column(c, justify="right")
    last = df.sort_values("step").groupby("mode", sort=False).tail(1)
    for r in last.itertuples():
        table.add_row(r.mode, str(r.step), f"{r.dice:.3f}", f"{r.iou:.3f}", f"{r.val_loss:.3f}",
                      f"{r.sec_per_iter:.3f}", f"{r.trainable_params:,}", str(r.frozen_tensors))
    out_console.print(table)
    out_console.print(f"wrote {out / 'metrics.parquet'}, {out / 'finetune.png'}")


def print_compare(c, baseline: Path, candidate: Path, fmt: str = "table") -> None:
    """``compare``'s verdict per matched row, and the rows only one side has."""
    from mamba_bench.report.compare import fmt as cell
    from mamba_bench.report.compare import to_json, to_markdown

    if fmt == "json":
        print(json.dumps(to_json(c), indent=2, default=str))
        return
    if fmt == "markdown":
        print(to_markdown(c), end="")
        return
    table = Table(title=f"{baseline} → {candidate}: {len(c.regressions)} regression(s) in {len(c.rows)} rows")
    for col in ("model", "data set", "corruption", "sev", "top-1 base", "top-1 cand", "Δ", "p", "verdict"):
        table.add_column(col, justify="right")
    for r in c.rows.itertuples():
        table.add_row(r.model, r.dataset, r.corruption, str(r.severity), cell(r.top1_base, ".2f"),
                      cell(r.top1_cand, ".2f"), cell(r.d_top1, "+.2f"), cell(r.p_value, ".3g"), r.verdict)
    out_console.print(table)
    for label, df in (("only in the baseline", c.only_baseline), ("only in the candidate", c.only_candidate)):
        if len(df):
            out_console.print(f"{len(df)} row(s) {label}: " + ", ".join(
                f"{r.model}/{r.dataset}/{r.corruption}/{r.severity}" for r in df.itertuples()))


def print_repair(res: dict, model: str, definition: str, out: Path) -> None:
    """Mender's repair arms: clean and corrupted top-1 and their change, ECS and ICS after fine-tuning."""
    table = Table(title=f"Mender repair of {model} ({definition} definition, blocks "
                        f"{', '.join(res['blocks'])}) — {out}")
    for c in ("arm", "clean top-1", "Δ", "corrupted top-1", "Δ", "ECS", "ICS"):
        table.add_column(c, justify="right")
    for r in res["table"].itertuples():
        table.add_row(r.arm, f"{r.clean_top1:.2f}", f"{r.clean_change:+.2f}", f"{r.corrupted_top1:.2f}",
                      f"{r.corrupted_change:+.2f}", f"{r.ecs:.3f}", f"{r.ics:.3f}")
    out_console.print(table)
    out_console.print(f"repaired checkpoint: {res['checkpoint']}")


def print_explain(res: dict, model: str, definition: str, out: Path, corruption: str | None) -> None:
    """ECS / ICS per block and state, simple vs difficult images; what is undefined and why."""
    scores = res["scores"]
    table = Table(title=f"{model}: ECS / ICS per block, simple vs difficult ({definition} definition) — {out}")
    for c in ("block", "state", "ECS simple", "ECS difficult", "ICS simple", "ICS difficult"):
        table.add_column(c, justify="left" if c in ("block", "state") else "right", no_wrap=True)
    wide = scores[scores.group != "all"].pivot_table(index=["index", "block", "state"], columns="group",
                                                      values=["ecs", "ics"], sort=False)

    def num(v) -> str:
        return "—" if v != v else f"{v:.3f}"

    for (_, block, state), r in wide.iterrows():
        table.add_row(block, state, num(r.get(("ecs", "simple"), float("nan"))),
                      num(r.get(("ecs", "difficult"), float("nan"))), num(r.get(("ics", "simple"), float("nan"))),
                      num(r.get(("ics", "difficult"), float("nan"))))
    out_console.print(table)
    if not res["masks"]:
        out_console.print("no --masks: ECS's segmentation test is undefined (ecs and iou are NaN)")
    if corruption:
        out_console.print(f"{len(res['flips'])} images flipped from right to wrong by {corruption}")
    for p in res["plots"]:
        out_console.print(f"plot: {p}")

"""The ``mamba-bench`` command line: one small function per command, no logic of its own.

Errors a user can cause (``MambaBenchError``) become one line on stderr and exit code 2; Ctrl-C
becomes exit code 130 with the finished part of the run kept on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mamba_bench.errors import MambaBenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Robustness benchmarks for vision models — state-space (Mamba) models first.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed and memory measurements, reported as ratios.")
app.add_typer(bench_app, name="bench")
out_console = Console()

ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="Registry name or any timm model name; repeat.")]
WeightsOpt = Annotated[list[str] | None, typer.Option(
    "--weights", help="Checkpoint PATH or URL for the last --model (or one per --model, in order).")]
SeedOpt = Annotated[int, typer.Option(help="The only source of randomness (sampling, corruptions).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, json or markdown.")]


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json", "markdown"):
        raise MambaBenchError(f"unknown --format {fmt!r}; valid: table, json, markdown")
    return fmt


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _severities(values: list[str] | None) -> str | list[int]:
    items = _split(values) or ["all"]
    if items == ["all"]:
        return "all"
    try:
        return [int(v) for v in items]
    except ValueError:
        raise MambaBenchError(f"--severities takes 'all' or integers 1-5, got {','.join(items)}") from None


@app.command()
def corrupt(
    model: ModelOpt,
    data: Annotated[str, typer.Option(help="ImageNet val dir (ImageFolder or flat + labels) or 'digits'.")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command with the same --out resumes.")],
    weights: WeightsOpt = None,
    corruptions: Annotated[list[str] | None, typer.Option(
        help="'all' (default) or names, comma-separated or repeated (see `mamba-bench corruptions`).")] = None,
    severities: Annotated[list[str] | None, typer.Option(help="'all' (default) or e.g. 1,3,5.")] = None,
    per_class: Annotated[int | None, typer.Option(help="Sample K images per class (the report used 15).")] = None,
    seed: SeedOpt = 0,
    labels: Annotated[str | None, typer.Option(
        help="Label file for a flat layout: LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt.")] = None,
    suite: Annotated[str | None, typer.Option(help="Corruption suite TOML (default transforms/imgaug21.toml).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Model of this run that CE / mCE are relative to.")] = None,
    save_predictions: Annotated[bool, typer.Option(help="Also write per-image predictions.parquet.")] = False,
    random_init: Annotated[bool, typer.Option(help="Allow models without weights (smoke tests only).")] = False,
    batch_size: Annotated[int, typer.Option(help="Execution knob; never changes results.")] = 64,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option(help="Corruption worker processes (default: cores - 1).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Accuracy of each model on clean and corrupted images, every corruption × severity."""
    from mamba_bench.eval.corrupt import CorruptConfig, run_corrupt

    cfg = CorruptConfig(models=model, data=data, out=str(out), weights=weights or [], labels=labels,
                        per_class=per_class, seed=seed, corruptions=_split(corruptions) or "all",
                        severities=_severities(severities), suite=suite, baseline=baseline,
                        batch_size=batch_size, device=device, workers=workers,
                        save_predictions=save_predictions, random_init=random_init, progress=progress)
    res = run_corrupt(cfg)
    _print_run_summary(res.metrics, res.summary, res.out)


def _print_run_summary(metrics, summary, out: Path) -> None:
    table = Table(title=f"top-1 (%) — {out}")
    for col in ("model", "clean", "corrupted (mean)", "mCE", "relative mCE"):
        table.add_column(col, justify="left" if col == "model" else "right")
    clean = metrics[metrics.corruption == "clean"].set_index("model")["top1"]
    means = summary[summary.corruption == "mean"].set_index("model")
    for model in dict.fromkeys(metrics["model"]):
        m = means.loc[model] if model in means.index else None

        def fmt(v):
            return "—" if v is None or v != v else f"{v:.1f}"

        table.add_row(model, fmt(clean.get(model)), fmt(None if m is None else m["mean_top1"]),
                      fmt(None if m is None else m["ce"]), fmt(None if m is None else m["relative_ce"]))
    out_console.print(table)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Registry or timm name.")],
    weights: Annotated[str | None, typer.Option(help="Checkpoint PATH or URL (default: released).")] = None,
    topk: Annotated[int, typer.Option(help="How many classes to list.")] = 5,
    fmt: FormatOpt = "table",
    device: DeviceOpt = "auto",
) -> None:
    """Top-k classes with logits and probabilities for each image."""
    from mamba_bench.eval.predict import predict_images

    _check_format(fmt)
    results, errors = predict_images(model, [str(p) for p in images], weights=weights, topk=topk, device=device)
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
    if errors:
        raise MambaBenchError(f"{len(errors)} of {len(images)} images could not be read: {errors[0]}")


@app.command()
def corruptions(
    preview: Annotated[Path | None, typer.Option(help="Write a gallery PNG of this image under every corruption.")]
    = None,
    out: Annotated[Path, typer.Option(help="Gallery PNG path (with --preview).")] = Path("gallery.png"),
    suite: Annotated[str | None, typer.Option(help="Suite TOML (default transforms/imgaug21.toml).")] = None,
    severities: Annotated[list[str] | None, typer.Option(help="Severities shown in the gallery.")] = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = "table",
) -> None:
    """List the corruption suite, or preview it on an image."""
    from mamba_bench.corruptions import load_suite, make_gallery

    _check_format(fmt)
    s = load_suite(suite)
    if preview is not None:
        sev = _severities(severities)
        path = make_gallery(preview, out, s, severities=(1, 3, 5) if sev == "all" else tuple(sev), seed=seed)
        out_console.print(f"wrote {path}")
        return
    rows = [{"name": c.name, "title": c.title, "augmenter": c.augmenter,
             "severities": list(c.severities)} for c in s.corruptions.values()]
    if fmt == "json":
        print(json.dumps({"suite": s.name, "path": str(s.path), "corruptions": rows}, indent=2))
        return
    if fmt == "markdown":
        print("| name | title | augmenter | severities |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['title']} | {r['augmenter']} | {','.join(map(str, r['severities']))} |")
        return
    table = Table(title=f"suite {s.name} ({s.path}) — plus 'clean', always measured")
    for c in ("name", "title", "augmenter", "severities"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["name"], r["title"], r["augmenter"], ",".join(map(str, r["severities"])))
    out_console.print(table)


@app.command()
def models(
    timm_names: Annotated[bool, typer.Option("--timm", help="Also list every timm model name.")] = False,
    fmt: FormatOpt = "table",
) -> None:
    """List the registry (and, with --timm, every timm model name)."""
    from mamba_bench.models.registry import registered_models

    _check_format(fmt)
    rows = [{"name": s.name, "family": s.family, "description": s.description,
             "timm_name": s.timm_name} for s in registered_models().values()]
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="models (any timm model name works too)")
        for c in ("name", "family", "description", "timm_name"):
            table.add_column(c)
        for r in rows:
            table.add_row(r["name"], r["family"], r["description"], r["timm_name"] or "")
        out_console.print(table)
    if timm_names:
        import timm

        print("\n".join(timm.list_models()))


@bench_app.command("corrupt")
def bench_corrupt(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models of the multi-model run.")] = None,
    images: Annotated[int, typer.Option(help="Images per cell.")] = 32,
    severity: Annotated[int, typer.Option(help="Severity timed per corruption.")] = 3,
    repeats: Annotated[int, typer.Option(help="Timing repeats per corruption (best kept).")] = 3,
    batch_size: Annotated[int, typer.Option()] = 16,
    workers: Annotated[int | None, typer.Option()] = None,
    device: DeviceOpt = "auto",
    out: Annotated[Path, typer.Option(help="Where bench_corrupt.json goes.")] = Path("runs/bench"),
    fmt: FormatOpt = "table",
) -> None:
    """ms per image per corruption at 224 px, and the pipeline's end-to-end/model-only throughput."""
    from mamba_bench.eval.bench import bench_corrupt as run

    _check_format(fmt)
    res = run(models=model or ["convnext-t", "swin-t"], images=images, severity=severity, repeats=repeats,
              batch_size=batch_size, workers=workers, device=device, out=out)
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"corruption cost at 224 px, severity {severity} (ms / image, 1 process)")
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


@bench_app.command("scan")
def bench_scan_cmd(
    backend: Annotated[list[str] | None, typer.Option(help="Backends to time (default: auto's CPU pick and ref).")]
    = None,
    d_state: Annotated[list[int] | None, typer.Option(help="State sizes (default 1 and 16).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 2,
    length: Annotated[int, typer.Option(help="Sequence length (VMamba-T stage 1: 3136).")] = 3136,
    backward: Annotated[bool, typer.Option(help="Also time forward+backward (the reference loop's backward "
                                                "at d_state 16 takes tens of minutes on 2 cores).")] = True,
    out: Annotated[Path, typer.Option(help="Where bench_scan.json goes.")] = Path("runs/bench"),
    fmt: FormatOpt = "table",
) -> None:
    """Selective scan at VMamba-T's stage-1 shape: time, peak memory and error vs the reference loop."""
    from mamba_bench.eval.bench_ssm import STAGE1, bench_scan
    from mamba_bench.ops.selective_scan import available_backends

    _check_format(fmt)
    backends = backend or [available_backends("cpu")[0], "ref"]
    res = bench_scan(backends=backends, d_states=d_state or [1, 16], threads=threads, out=out,
                     shape={**STAGE1, "length": length}, backward=(False, True) if backward else (False,))
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"selective scan, batch {res['shape']['batch']}, {res['shape']['dim']} channels, "
                        f"L {res['shape']['length']}, fp32, {threads} threads")
    for c in ("backend", "d_state", "pass", "seconds (best)", "runs", "× vs ref", "peak MB", "max rel. error"):
        table.add_column(c, justify="right")
    for r in res["rows"]:
        table.add_row(r["backend"], str(r["d_state"]), r["pass"], f"{r['seconds']:.3f}", str(r["runs"]),
                      f"{r['speedup_vs_ref']:.1f}" if r.get("speedup_vs_ref") else "—", f"{r['peak_mb']:.0f}",
                      f"{r['max_rel_error_vs_ref']:.1e}" if "max_rel_error_vs_ref" in r else "—")
    out_console.print(table)


@bench_app.command("models")
def bench_models_cmd(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models (default vmamba-t, swin-t, "
                                                    "convnext-t).")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    threads: Annotated[int, typer.Option()] = 2,
    repeats: Annotated[int, typer.Option(help="Timed rounds over all models (best kept per model).")] = 5,
    device: DeviceOpt = "auto",
    out: Annotated[Path, typer.Option(help="Where bench_models.json goes.")] = Path("runs/bench"),
    fmt: FormatOpt = "table",
) -> None:
    """Images/s at 224 px of VMamba next to Swin and ConvNeXt, same machine, same run."""
    from mamba_bench.eval.bench_ssm import bench_models

    _check_format(fmt)
    res = bench_models(models=model or ["vmamba-t", "swin-t", "convnext-t"], batch=batch_size, threads=threads,
                       repeats=repeats, device=device, out=out)
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"throughput, batch {batch_size}, {res['device']}, {threads} threads")
    for c in ("model", "params (M)", "images/s"):
        table.add_column(c, justify="right")
    for r in res["rows"]:
        table.add_row(r["model"], f"{r['params_m']:.1f}", f"{r['images_per_second']:.2f}")
    out_console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory of the demo.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Training epochs of the digit models (default per model).")]
    = None,
    workers: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """The whole pipeline offline on embedded data: train small models on digits, corrupt, plot."""
    from mamba_bench.demo import run_demo

    run_demo(out=out, epochs=epochs, workers=workers, progress=progress, console=out_console)


def main() -> None:
    """Console-script entry: user errors → one stderr line + exit 2; Ctrl-C → exit 130."""
    try:
        rv = app(standalone_mode=False)  # typer turns Ctrl-C into a returned 130 in this mode
        if rv == 130:
            raise KeyboardInterrupt
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except MambaBenchError as exc:
        print(f"mamba-bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("mamba-bench: interrupted; finished results are kept — run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("mamba-bench: interrupted", file=sys.stderr)
            sys.exit(130)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()

"""The ``mamba-bench`` command line: one small function per command, no logic of its own.

Errors a user can cause (``MambaBenchError``) become one line on stderr and exit code 2; Ctrl-C
becomes exit code 130 with the finished part of the run kept on disk.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mamba_bench.errors import MambaBenchError
from mamba_bench.present import (
    out_console,
    print_bench_corrupt,
    print_bench_models,
    print_bench_pipeline,
    print_bench_scan,
    print_compare,
    print_dg,
    print_explain,
    print_finetune,
    print_frame,
    print_models,
    print_predictions,
    print_repair,
    print_run_summary,
    print_suite,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Robustness benchmarks for vision models — state-space (Mamba) models first.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed and memory measurements, reported as ratios.")
app.add_typer(bench_app, name="bench")

ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="Registry name or any timm model name; repeat.")]
WeightsOpt = Annotated[list[str] | None, typer.Option(
    "--weights", help="Checkpoint PATH or URL for the last --model (or one per --model, in order).")]
SeedOpt = Annotated[int, typer.Option(help="The only source of randomness (sampling, corruptions).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, json or markdown.")]
SuiteOpt = Annotated[str | None, typer.Option(help="Corruption suite: a shipped name (imgaug21, imagenet-c) or a "
                                                   "TOML file (default imgaug21).")]


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
    data: Annotated[list[str], typer.Option(
        help="ImageNet val dir (ImageFolder or flat + labels), a released shift set (ImageNet-C/-C-bar/-3DCC, "
             "-V2/-R/-A; LAYOUT=DIR names one, e.g. imagenet-sketch=DIR) or 'digits'; repeat for several sets.")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command with the same --out resumes.")],
    weights: WeightsOpt = None,
    clean_data: Annotated[str | None, typer.Option(
        help="ImageNet val dir a released ImageNet-C/-C-bar/-3DCC set was made from (its clean images).")] = None,
    corruptions: Annotated[list[str] | None, typer.Option(
        help="'all' (default), 'none' (clean only), group names (imagenet-c: noise, blur, weather, digital, "
             "extras) or names, comma-separated or repeated (see `mamba-bench corruptions`).")] = None,
    severities: Annotated[list[str] | None, typer.Option(help="'all' (default) or e.g. 1,3,5.")] = None,
    per_class: Annotated[int | None, typer.Option(help="Sample K images per class (the report used 15).")] = None,
    seed: SeedOpt = 0,
    labels: Annotated[str | None, typer.Option(
        help="Label file for a flat layout: LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt.")] = None,
    suite: SuiteOpt = None,
    baseline: Annotated[str | None, typer.Option(
        help="What CE / mCE are relative to: a --model of this run, 'alexnet' (ImageNet-C's published AlexNet "
             "errors), or the model to take from --baseline-table.")] = None,
    baseline_table: Annotated[str | None, typer.Option(
        help="External baseline: another run's metrics.parquet or a CSV (corruption,severity,accuracy|top1|error).")]
    = None,
    save_predictions: Annotated[bool, typer.Option(help="Also write per-image predictions.parquet.")] = False,
    random_init: Annotated[bool, typer.Option(help="Allow models without weights (smoke tests only).")] = False,
    batch_size: Annotated[int, typer.Option(help="Execution knob; never changes results.")] = 64,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option(help="Corruption worker processes (default: cores - 1).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the models (GPU runs; compiled "
                                                          "before the first cell).")] = False,
) -> None:
    """Accuracy of each model on clean and corrupted images, every corruption × severity."""
    from mamba_bench.eval.corrupt import CorruptConfig, run_corrupt

    cfg = CorruptConfig(models=model, data=data[0] if len(data) == 1 else data, out=str(out), clean_data=clean_data,
                        weights=weights or [], labels=labels,
                        per_class=per_class, seed=seed, corruptions=_split(corruptions) or "all",
                        severities=_severities(severities), suite=suite, baseline=baseline,
                        batch_size=batch_size, device=device, workers=workers,
                        save_predictions=save_predictions, random_init=random_init, progress=progress,
                        compile=compile, baseline_table=baseline_table)
    res = run_corrupt(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the run
        print_run_summary(res.metrics, res.summary, res.out)


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
    print_predictions(results, fmt)
    if errors:
        raise MambaBenchError(f"{len(errors)} of {len(images)} images could not be read: {errors[0]}")


@app.command()
def corruptions(
    preview: Annotated[Path | None, typer.Option(help="Write a gallery PNG of this image under every corruption.")]
    = None,
    out: Annotated[Path, typer.Option(help="Gallery PNG path (with --preview).")] = Path("gallery.png"),
    suite: SuiteOpt = None,
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
    print_suite(s, fmt)


@app.command()
def models(
    timm_names: Annotated[bool, typer.Option("--timm", help="Also list every timm model name.")] = False,
    fmt: FormatOpt = "table",
) -> None:
    """List the registry (and, with --timm, every timm model name)."""
    from mamba_bench.models.registry import registered_models

    _check_format(fmt)
    print_models(registered_models().values(), fmt)
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
    suite: SuiteOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """ms per image per corruption at 224 px, and the pipeline's end-to-end/model-only throughput."""
    from mamba_bench.eval.bench import bench_corrupt as run

    _check_format(fmt)
    _bench_sizes(images=images, repeats=repeats, batch_size=batch_size, workers=workers)
    res = run(models=model or ["convnext-t", "swin-t"], images=images, severity=severity, repeats=repeats,
              batch_size=batch_size, workers=workers, device=device, out=out, suite=suite)
    print_bench_corrupt(res, severity, fmt)

@bench_app.command("pipeline")
def bench_pipeline(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models (default vmamba-t, swin-t, "
                                                    "convnext-t).")] = None,
    images: Annotated[int, typer.Option(help="Images per cell.")] = 32,
    batch_size: Annotated[int, typer.Option()] = 16,
    workers: Annotated[int | None, typer.Option()] = None,
    device: DeviceOpt = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile every model (as corrupt --compile).")]
    = False,
    from_disk: Annotated[bool, typer.Option(help="Also time the run from a materialized set (PNG files written "
                                                 "first, untimed).")] = True,
    out: Annotated[Path, typer.Option(help="Where bench_corrupt.json goes.")] = Path("runs/bench"),
) -> None:
    """End-to-end images/s of a 3-model run vs the models alone, and where the time goes."""
    from mamba_bench.eval.bench import bench_corrupt as run

    _bench_sizes(images=images, batch_size=batch_size, workers=workers)
    res = run(models=model or ["vmamba-t", "swin-t", "convnext-t"], images=images, severity=3, repeats=1,
              batch_size=batch_size, workers=workers, device=device, compile=compile, from_disk=from_disk, out=out)
    print_bench_pipeline(res, batch_size, compile, from_disk, device)

@bench_app.command("scan")
def bench_scan_cmd(
    backend: Annotated[list[str] | None, typer.Option(help="Backends to time (default: auto's CPU pick and ref; "
                                                           "on --device cuda every available one).")] = None,
    d_state: Annotated[list[int] | None, typer.Option(help="State sizes (default 1 and 16).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads.")] = 2,
    length: Annotated[int, typer.Option(help="Sequence length (VMamba-T stage 1: 3136).")] = 3136,
    backward: Annotated[bool, typer.Option(help="Also time forward+backward (the reference loop's backward "
                                                "at d_state 16 takes tens of minutes on 2 cores).")] = True,
    out: Annotated[Path, typer.Option(help="Where bench_scan.json goes.")] = Path("runs/bench"),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (CUDA: triton, cuda if mamba-ssm is installed, "
                                             "torch, ref).")] = "cpu",
    fmt: FormatOpt = "table",
) -> None:
    """Selective scan at VMamba-T's stage-1 shape: time, peak memory and error vs the reference loop."""
    from mamba_bench.eval.bench_ssm import STAGE1, bench_scan, check_bench_backends
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.ops.selective_scan import available_backends

    _check_format(fmt)
    _bench_sizes(threads=threads, length=length, d_state=min(d_state or [1]))
    dev = resolve_device(device)
    default = available_backends(dev) if dev.type == "cuda" else [available_backends("cpu")[0], "ref"]
    backends = check_bench_backends(backend or default, dev)
    res = bench_scan(backends=backends, d_states=d_state or [1, 16], threads=threads, out=out,
                     shape={**STAGE1, "length": length}, backward=(False, True) if backward else (False,),
                     device=str(dev))
    print_bench_scan(res, threads, fmt)

@bench_app.command("models")
def bench_models_cmd(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models (default vmamba-t, swin-t, "
                                                    "convnext-t).")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    threads: Annotated[int, typer.Option()] = 2,
    repeats: Annotated[int, typer.Option(help="Timed rounds over all models (best and median reported).")] = 5,
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 autocast on CUDA (--no-amp: fp32, as the official tables).")] = True,
    precision: Annotated[list[str] | None, typer.Option(help="fp32 and/or bf16 (CUDA autocast), repeat to time "
                                                             "both in one run (overrides --amp).")] = None,
    scan_backend: Annotated[list[str] | None, typer.Option(help="Selective-scan backends of the Mamba models "
                                                                "(auto, triton, cuda, torch, ...), repeat for "
                                                                "side-by-side rows (default auto).")] = None,
    out: Annotated[Path, typer.Option(help="Where bench_models.json goes.")] = Path("runs/bench"),
    fmt: FormatOpt = "table",
) -> None:
    """Images/s at 224 px of VMamba next to Swin and ConvNeXt, same machine, same run."""
    from mamba_bench.eval.bench_ssm import bench_models

    _check_format(fmt)
    _bench_sizes(batch_size=batch_size, threads=threads, repeats=repeats)
    res = bench_models(models=model or ["vmamba-t", "swin-t", "convnext-t"], batch=batch_size, threads=threads,
                       repeats=repeats, device=device, amp=amp, out=out, backends=scan_backend, precisions=precision)
    if fmt == "json":
        print(json.dumps(res, indent=2))
        return
    print_bench_models(res, batch_size, threads)


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise MambaBenchError(f"{name} must be positive, got {value}")


def _bench_sizes(workers: int | None = None, **sizes: int) -> None:
    """The bench commands' counts, checked before any model is built."""
    for name, value in sizes.items():
        _positive("--" + name.replace("_", "-"), value)
    if workers is not None and workers < 0:
        raise MambaBenchError(f"--workers must be 0 or more, got {workers}")


def _parse_hparams(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MambaBenchError(f"--hparam takes KEY=VALUE (a JSON value), got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            raise MambaBenchError(f"--hparam {key}: {value!r} is not a JSON value (e.g. 0.3 or [0,1])") from None
    return out


@app.command("dg-train")
def dg_train_cmd(
    dataset: Annotated[str, typer.Option(help="pacs, vlcs, office-home, terra-incognita, domain-net or "
                                              "rotated-digits (embedded).")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command resumes.")],
    algorithm: Annotated[list[str] | None, typer.Option(
        help="erm, start-m, start-x, mixstyle, dsu (official), dsu-ours; repeat.")] = None,
    test_domain: Annotated[list[str] | None, typer.Option(
        help="Held-out domain; repeat. Default: every domain in turn.")] = None,
    data_root: Annotated[str | None, typer.Option(help="Folder holding DomainBed's PACS/, VLCS/, ...")] = None,
    init: Annotated[str, typer.Option(help="Registry model to start from.")] = "vmamba-nano",
    weights: Annotated[str | None, typer.Option(help="Pre-trained weights of --init (e.g. vssm1_tiny_0230s.pth); "
                                                     "default: random init.")] = None,
    seeds: Annotated[str, typer.Option(help="Trial seeds, comma-separated (split, init, data order).")] = "0",
    recipe: Annotated[str, typer.Option(help="ours (AdamW 3e-4, cosine), domainbed (DomainBed's ERM: Adam 5e-5, "
                                             "5001 steps) or dgmamba (DGMamba's: drop-path, Mixup/CutMix); the "
                                             "options below override its values.")] = "ours",
    protocol: Annotated[str | None, typer.Option(
        help="Splits and evaluation points: domainbed (DomainBed's splits, evaluated after the first update and "
             "every --eval-every), dgmamba (stratified source splits, whole test domain) or ours (the earlier "
             "splits). Default: the recipe's (dgmamba for --recipe dgmamba, else domainbed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Default: the recipe's (ours 300).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per training domain per step "
                                                        "(default: the recipe's, ours 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Default: the recipe's (ours 3e-4).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Default: the recipe's (ours 0.05).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Default: --init's input size.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between evaluations (default: the recipe's; "
                                                        "ours steps/10).")] = None,
    augment: Annotated[str | None, typer.Option(help="imagenet, domainbed or none (default: the recipe's; none "
                                                     "for rotated-digits).")] = None,
    hparam: Annotated[list[str] | None, typer.Option(
        help="Algorithm hyper-parameter KEY=JSON, e.g. start_ratio=0.3, start_stages=[0,1]; repeat.")] = None,
    device: DeviceOpt = "auto",
    threads: Annotated[int, typer.Option(help="Image-decoding threads.")] = 8,
) -> None:
    """Leave-one-domain-out training (DomainBed protocol) of each algorithm × test domain × seed."""
    from mamba_bench.dg.run import dg_train
    from mamba_bench.dg.train import DGTrainConfig
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.models.registry import get_spec

    try:
        seed_list = [int(v) for v in _split([seeds])]
    except ValueError:
        raise MambaBenchError(f"--seeds takes integers, e.g. 0,1,2; got {seeds!r}") from None
    if not seed_list:
        raise MambaBenchError("--seeds is empty")
    from mamba_bench.dg.recipes import recipe_defaults

    rd = recipe_defaults(recipe, dataset)
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
             "eval_every": eval_every, "augment": augment, "protocol": protocol}
    r = {**rd, **{k: v for k, v in given.items() if v is not None}}  # 0 is refused below, not the default
    for name, v in (("--steps", r["steps"]), ("--batch-size", r["batch_size"]), ("--lr", r["lr"]),
                    ("--threads", threads)):
        _positive(name, v)
    spec = get_spec(init)
    size = spec.input_size if image_size is None else image_size  # 0 is refused, not the default
    _positive("--image-size", size)
    every = max(1, r["steps"] // 10) if r["eval_every"] is None else r["eval_every"]
    _positive("--eval-every", every)
    base = DGTrainConfig(dataset=dataset, algorithm="erm", test_domain="", seed=0, init=init, weights=weights,
                         steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], weight_decay=r["weight_decay"],
                         label_smoothing=r["label_smoothing"], image_size=size, eval_every=every,
                         augment=r["augment"], protocol=r["protocol"], recipe=recipe,
                         hparams=_parse_hparams(hparam))
    dev = resolve_device(device)
    algorithms = _split(algorithm) or ["erm"]

    def on_cell(cfg):
        out_console.print(f"[bold]{cfg.algorithm}[/] · test domain [bold]{cfg.test_domain}[/] · seed {cfg.seed}")

    def on_eval(cfg, step, loss, rows):
        test = next(r["accuracy"] for r in rows if r["domain"] == cfg.test_domain and r["split"] == "in")
        val = [r["accuracy"] for r in rows if r["domain"] != cfg.test_domain and r["split"] == "out"]
        out_console.print(f"  step {step:5d}  loss {loss:.3f}  source val {sum(val) / len(val):5.1f}  "
                          f"test {test:5.1f}")

    results = dg_train(dataset=dataset, data_root=data_root, algorithms=algorithms,
                       test_domains=_split(test_domain) or None, seeds=seed_list, base=base, out=out, device=dev,
                       threads=threads, on_cell=on_cell, on_eval=on_eval)
    skipped = sum(r["skipped"] for r in results)
    out_console.print(f"{len(results)} cell(s) in {out}" + (f" ({skipped} already complete)" if skipped else "")
                      + f"; tables: mamba-bench dg-eval {out}")


@app.command("dg-eval")
def dg_eval_cmd(
    run: Annotated[Path, typer.Argument(help="A dg-train run directory.")],
    gap: Annotated[bool, typer.Option(help="Also the domain gap (MMD) of Δ, B, C and features per checkpoint.")]
    = False,
    data_root: Annotated[str | None, typer.Option(help="Data root for --gap (default: the run's).")] = None,
    gap_samples: Annotated[int, typer.Option(help="Images per side for --gap.")] = 100,
    selection: Annotated[str, typer.Option(help="training-domain, oracle or last.")] = "training-domain",
    error_bar: Annotated[str, typer.Option(help="sem: standard error over seeds, as DomainBed's collect_results "
                                                "(population std / sqrt(seeds)); std: population std.")] = "sem",
    device: DeviceOpt = "auto",
    fmt: FormatOpt = "table",
) -> None:
    """Per-domain accuracy table (mean ± standard error over seeds), dg_results.parquet, bar chart; --gap: MMD."""
    from mamba_bench.dg.run import ERROR_BARS, SELECTIONS, dg_eval
    from mamba_bench.eval.corrupt import resolve_device

    _check_format(fmt)
    if error_bar not in ERROR_BARS:
        raise MambaBenchError(f"unknown --error-bar {error_bar!r}; valid: {', '.join(ERROR_BARS)}")
    if selection not in SELECTIONS:
        raise MambaBenchError(f"unknown --selection {selection!r}; valid: {', '.join(SELECTIONS)}")
    _positive("--gap-samples", gap_samples)
    res = dg_eval(run, gap=gap, data_root=data_root, gap_samples=gap_samples, device=resolve_device(device))
    for p in res["pending"]:
        print(f"mamba-bench: note: {run / p} is still in progress (not in the tables)", file=sys.stderr)
    print_dg(res, selection, run, fmt, error_bar)
    if fmt == "table":
        out_console.print(f"wrote {res['results']}" + (f", {res['plot']}" if res["plot"] else ""))


@app.command()
def finetune(
    data: Annotated[str, typer.Option(help="Massachusetts Roads dir, 'synthetic-roads' or 'synthetic-roads-b'.")],
    out: Annotated[Path, typer.Option(help="Run directory; the same command resumes.")],
    mode: Annotated[list[str] | None, typer.Option(help="scratch, full, freeze; repeat (default all three).")] = None,
    model: Annotated[str, typer.Option(help="umamba-bot or umamba-enc.")] = "umamba-bot",
    init: Annotated[str | None, typer.Option(help="Checkpoint of the same U-Mamba (e.g. OUT/scratch/last.pt of a "
                                                  "pre-training run), for full and freeze.")] = None,
    iters: Annotated[int, typer.Option()] = 6000,
    crop: Annotated[int, typer.Option(help="Training crop and inference window (multiple of 16).")] = 256,
    batch_size: Annotated[int, typer.Option()] = 8,
    optimizer: Annotated[str, typer.Option(help="sgd: nnU-Net's (Nesterov, momentum 0.99, lr 1e-2, weight decay "
                                                "3e-5, clip 12, poly); adamw: lr 1e-3, weight decay 1e-4, poly.")]
    = "sgd",
    lr: Annotated[float | None, typer.Option(help="Default: the optimiser's (sgd 1e-2, adamw 1e-3).")] = None,
    arch_variant: Annotated[str, typer.Option(help="official: U-Mamba's nets (Enc Mamba at stages 0, 2, 4 of 5, "
                                                   "channel tokens, nearest + 1x1 upsampling, nnU-Net's deep "
                                                   "supervision weights); ours: the earlier architecture.")]
    = "official",
    width: Annotated[int, typer.Option(help="Channels of the first U-Net stage.")] = 16,
    eval_every: Annotated[int | None, typer.Option(help="Iterations between evaluations (default iters/10).")] = None,
    freeze_warmup: Annotated[int | None, typer.Option(help="freeze: iterations of gradient measurement (default "
                                                           "iters/10, at least 1, at most 50).")] = None,
    freeze_threshold: Annotated[float, typer.Option(help="freeze: fraction of the median mean |grad| below which "
                                                         "a tensor is frozen.")] = 0.05,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """U-Mamba road segmentation: scratch vs full fine-tuning vs gradient freezing, on one budget."""
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.seg.finetune import FinetuneConfig
    from mamba_bench.seg.finetune import finetune as run

    for name, v in (("--iters", iters), ("--crop", crop), ("--batch-size", batch_size), ("--width", width)):
        _positive(name, v)
    if lr is not None:
        _positive("--lr", lr)
    every = max(1, iters // 10) if eval_every is None else eval_every
    _positive("--eval-every", every)
    modes = _split(mode) or ["scratch", "full", "freeze"]
    cfg = FinetuneConfig(data=data, model=model, width=width, init=init, iters=iters, crop=crop,
                         batch_size=batch_size, lr=lr, eval_every=every, seed=seed, freeze_warmup=freeze_warmup,
                         freeze_threshold=freeze_threshold, optimizer=optimizer, arch=arch_variant)
    from mamba_bench.seg.umamba import SEG_MODELS

    if model not in SEG_MODELS:
        raise MambaBenchError(f"unknown --model {model!r} for finetune; valid: {', '.join(SEG_MODELS)}")
    df = run(cfg, modes, out, resolve_device(device),
             on_mode=lambda m: out_console.print(f"[bold]{m}[/]"),
             on_eval=lambda r: out_console.print(f"  iter {r['step']:5d}  dice {r['dice']:.3f}  iou {r['iou']:.3f}  "
                                                 f"val loss {r['val_loss']:.3f}  {r['sec_per_iter']:.3f} s/iter"))
    print_finetune(df, out)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (corrupt, dg-train, finetune).")],
    out: Annotated[Path, typer.Option(help="Report directory: report.md, report.html, data/.")],
    title: Annotated[str, typer.Option()] = "mamba-bench report",
) -> None:
    """report.md and a self-contained report.html (plots embedded, no network) from run directories."""
    from mamba_bench.report.report import write_report

    res = write_report(list(runs), out, title)
    out_console.print(f"wrote {res['markdown']} and {res['html']} ({len(res['runs'])} run(s))")


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="Baseline: a report directory or a corrupt run directory.")],
    candidate: Annotated[Path, typer.Argument(help="Candidate: a report directory or a corrupt run directory.")],
    max_drop: Annotated[float, typer.Option(help="Top-1 drop (points) above which a row can be a regression.")] = 0.5,
    alpha: Annotated[float, typer.Option(help="Significance level of the paired McNemar test.")] = 0.05,
    strict: Annotated[bool, typer.Option(help="Refuse matched rows whose runs differ in suite, seed, images or "
                                                "precision, and rows whose copies within one side differ.")] = False,
    fmt: FormatOpt = "table",
) -> None:
    """Exit 0: no regression; 1: a regression (drop > --max-drop and significant); 2: bad input."""
    from mamba_bench.report.compare import compare as run_compare
    from mamba_bench.report.runs import load_side

    _check_format(fmt)
    c = run_compare(load_side(baseline), load_side(candidate), max_drop=max_drop, alpha=alpha, strict=strict)
    for w in c.warnings:
        print(f"mamba-bench: warning: {w}", file=sys.stderr)
    print_compare(c, baseline, candidate, fmt)
    if len(c.regressions):
        raise typer.Exit(1)


@app.command()
def materialize(
    data: Annotated[str, typer.Option(help="ImageNet val dir (any layout `corrupt` reads) or 'digits'.")],
    out: Annotated[Path, typer.Option(help="Output folder: OUT/<corruption>/<severity>/<image id>.png.")],
    corruptions: Annotated[list[str] | None, typer.Option(help="'all' (default) or names.")] = None,
    severities: Annotated[list[str] | None, typer.Option(help="'all' (default) or e.g. 1,3,5.")] = None,
    per_class: Annotated[int | None, typer.Option(help="Sample K images per class.")] = None,
    seed: SeedOpt = 0,
    labels: Annotated[str | None, typer.Option(help="Label file for a flat layout.")] = None,
    suite: SuiteOpt = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores - 1).")] = None,
) -> None:
    """Write the corrupted images once (lossless PNG); `corrupt --data OUT` then reads them, same results."""
    from mamba_bench.eval.materialize import materialize as run

    m = run(data, out, corruptions=_split(corruptions) or "all", severities=_severities(severities),
            per_class=per_class, seed=seed, labels=labels, suite=suite, workers=workers)
    out_console.print(f"{len(m['samples'])} images × {len(m['cells'])} cells (clean included) in {out} "
                      f"({m['images_written']} written this time, {m['seconds']} s); evaluate with "
                      f"`mamba-bench corrupt --data {out} --seed {m['seed']} ...`")


@app.command()
def explain(
    model: Annotated[str, typer.Option("--model", "-m", help="A Mamba model: vmamba-*, start-m, start-x.")],
    data: Annotated[str, typer.Option(help="ImageNet-style val dir or 'digits' (evaluated images).")],
    out: Annotated[Path, typer.Option(help="Output directory (refused if it holds a finished run).")],
    weights: Annotated[str | None, typer.Option(help="Checkpoint PATH or URL (digits + vmamba-nano: the demo's "
                                                     "digit-trained model).")] = None,
    per_class: Annotated[int | None, typer.Option(help="Sample K images per class.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N images (after --per-class), in image-id order.")] = None,
    corruption: Annotated[str | None, typer.Option(help="Analyse images under this corruption; images it flips "
                                                        "from right to wrong get side-by-side maps.")] = None,
    severity: Annotated[int, typer.Option(help="Severity of --corruption (1-5).")] = 3,
    masks: Annotated[str | None, typer.Option(help="Foreground masks: MASKS/<image id>.png, nonzero = object "
                                                   "(digits: the strokes). Needed for ECS's segmentation test.")]
    = None,
    blocks: Annotated[list[str] | None, typer.Option(help="Blocks: module names or positions (-1 = last); "
                                                          "default all (explain) / the definition's (repair).")]
    = None,
    states: Annotated[list[str] | None, typer.Option(help="Mender states: x (in-proj), c (conv), s (scan), "
                                                          "y (block output); default all.")] = None,
    difficult_fraction: Annotated[float, typer.Option(help="Share of images, lowest true-class probability "
                                                           "first, called difficult.")] = 0.5,
    views: Annotated[int, typer.Option(help="Flipped images shown in flips.png.")] = 8,
    view_state: Annotated[str, typer.Option(help="State whose map flips.png shows (in the last block).")] = "s",
    definition: Annotated[str, typer.Option(help="Mender's formulas: official (as jiaconghu/Vision-Mamba-Mender "
                                                 "computes them) or seed (the seed's literal reading).")]
    = "official",
    repair: Annotated[bool, typer.Option(help="Fine-tune with Mender's external + internal losses and report "
                                              "clean / corrupted accuracy before and after.")] = False,
    train_data: Annotated[str | None, typer.Option(help="repair: training images (digits: the train split).")] = None,
    arms: Annotated[list[str] | None, typer.Option(help="repair: ce (control), ext, int, all; default all four.")]
    = None,
    repair_steps: Annotated[int, typer.Option(help="repair: fine-tuning steps per arm.")] = 150,
    repair_batch: Annotated[int, typer.Option(help="repair: training images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="repair: AdamW learning rate.")] = 1e-4,
    lambda_ext: Annotated[float | None, typer.Option(help="repair: weight of the external loss (default: the "
                                                          "definition's; README).")] = None,
    lambda_int: Annotated[float | None, typer.Option(help="repair: weight of the internal loss (default: the "
                                                          "definition's; README).")] = None,
    corruptions: Annotated[list[str] | None, typer.Option(help="repair: corruptions of the evaluation "
                                                               "(default all, at --severity).")] = None,
    labels: Annotated[str | None, typer.Option(help="Label file for a flat layout.")] = None,
    suite: SuiteOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Execution knob (default 16 explain, 64 repair "
                                                        "evaluation).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option(help="Corruption worker processes (default: cores - 1).")] = None,
    fmt: FormatOpt = "table",
) -> None:
    """Vision Mamba Mender: Grad-ESC/ISC state correlations, ECS/ICS per block, and the repair."""
    _check_format(fmt)
    if batch_size is not None:
        _positive("--batch-size", batch_size)
    if views < 0:
        raise MambaBenchError(f"--views must be 0 or more, got {views}")
    if repair:
        from mamba_bench.analysis.explain import RepairConfig, run_repair

        cfg = RepairConfig(model=model, data=data, out=str(out), weights=weights, train_data=train_data, masks=masks,
                           labels=labels, per_class=per_class, blocks=_split(blocks) or None,
                           arms=_split(arms) or ["ce", "ext", "int", "all"], steps=repair_steps, lr=lr,
                           train_batch=repair_batch, batch_size=64 if batch_size is None else batch_size,
                           lambda_ext=lambda_ext, lambda_int=lambda_int,
                           corruptions=_split(corruptions) or "all", severity=severity, suite=suite, seed=seed,
                           definition=definition, device=device, workers=workers)
        quiet = fmt != "table"
        res = run_repair(cfg, on_arm=None if quiet else lambda a: out_console.print(
            f"fine-tuning arm [bold]{a}[/] ({repair_steps} steps)"))
        if print_frame(res["table"], fmt):
            return
        print_repair(res, model, definition, out)
        return
    from mamba_bench.analysis.explain import ExplainConfig, run_explain

    if train_data is not None or arms:
        raise MambaBenchError("--train-data and --arms only apply with --repair")
    cfg = ExplainConfig(model=model, data=data, out=str(out), weights=weights, labels=labels, per_class=per_class,
                        limit=limit, seed=seed, corruption=corruption, severity=severity, suite=suite, masks=masks,
                        blocks=_split(blocks) or None, states=_split(states) or ["x", "c", "s", "y"],
                        difficult_fraction=difficult_fraction, views=views, view_state=view_state,
                        definition=definition, batch_size=16 if batch_size is None else batch_size, device=device,
                        workers=workers)
    res = run_explain(cfg)
    if print_frame(res["scores"], fmt):
        return
    print_explain(res, model, definition, out, corruption)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory of the demo.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Training epochs of the digit models (default per model).")]
    = None,
    workers: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option()] = True,
    quick: Annotated[bool, typer.Option(help="Only the CI gate's quick run (see `make report-ci`).")] = False,
) -> None:
    """The whole pipeline offline on embedded data: train small models on digits, corrupt, plot.

    --quick: only the CI gate's small run (one 4-epoch ConvNeXt-nano, severity 3, 200 digits)."""
    from mamba_bench.demo import run_demo, run_quick

    if quick:
        run_quick(out, console=out_console, progress=progress)
        return

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
    except OSError as exc:
        if exc.filename is None:
            raise
        # a path the user named that cannot be made or written (read-only, a file where a folder
        # should be, …); writes are atomic, so nothing half-written is left behind
        where = f"{exc.filename}" + (f" → {exc.filename2}" if exc.filename2 else "")
        print(f"mamba-bench: error: cannot use {where}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # Typer ≥ 0.2x raises its own vendored copy of click's exceptions (typer._click), older ones
        # click's: match either by class name, not by one copy's class.
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in kinds:
            print("mamba-bench: interrupted", file=sys.stderr)
            sys.exit(130)
        if "ClickException" in kinds and not exc.format_message().strip():
            sys.exit(2)  # the help was printed (a bare `mamba-bench` or `mamba-bench bench`): nothing to add
        if "ClickException" in kinds:  # a usage error: unknown option, missing or malformed value
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "mamba-bench"
            print(f"mamba-bench: error: {exc.format_message()} (see '{command} --help')", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()

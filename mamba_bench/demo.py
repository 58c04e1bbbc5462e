"""``mamba-bench demo``: the whole pipeline offline on embedded data, in minutes on a laptop CPU.

Trains the small digit models (cached after the first time: the fixed train split and seed make the
cache key stable), then runs the full corruption benchmark — every corruption, every severity — on
the held-out digits, with per-image predictions and plots.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from mamba_bench.errors import RunDirError
from mamba_bench.eval.corrupt import CorruptConfig, run_corrupt
from mamba_bench.train.digits import DEMO_BASELINE, DEMO_MODELS, demo_weights


def run_demo(out: Path, *, epochs: int | None = None, workers: int | None = None, progress: bool = True,
             console: Console | None = None) -> None:
    from mamba_bench.present import print_run_summary

    console = console or Console()
    weights = [str(demo_weights(m, epochs=epochs, console=console)) for m in DEMO_MODELS]
    console.print(f"corruption benchmark on held-out digits → {out}")
    cfg = CorruptConfig(models=list(DEMO_MODELS), data="digits", out=str(out), weights=weights,
                        baseline=DEMO_BASELINE, save_predictions=True, workers=workers, progress=progress)
    try:
        res = run_corrupt(cfg)
    except RunDirError:
        # an older demo (other models or weights) lives there: keep it aside rather than refuse
        aside = Path(f"{out}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        Path(out).rename(aside)
        console.print(f"{out} held an earlier demo run with other models; moved it to {aside}")
        res = run_corrupt(cfg)
    print_run_summary(res.metrics, res.summary, res.out)
    for name in res.manifest.get("plots", []):
        console.print(f"plot: {res.out / name}")
    run_dg_demo(Path(f"{out}-dg"), console=console)
    run_finetune_demo(Path(f"{out}-roads"), console=console)
    run_explain_demo(Path(f"{out}-explain"), console=console)


#: The demo's DG study: rotated digits, the hardest held-out rotation, one seed (the closing note's
#: full table uses every domain and three seeds: see the README).
DG_DEMO = dict(algorithms=["erm", "start-m", "start-x"], test_domains=["75deg"], seeds=[0])


def run_dg_demo(out: Path, *, console: Console | None = None, steps: int = 200) -> dict:
    """ERM vs START-M vs START-X on rotated digits (vmamba-nano from scratch, 32 px), then dg-eval --gap."""
    from mamba_bench.dg.run import dg_eval, dg_train
    from mamba_bench.dg.train import DGTrainConfig
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.present import print_dg

    console = console or Console()
    console.print(f"domain generalization on rotated digits, test domain 75deg → {out}")
    base = DGTrainConfig(dataset="rotated-digits", algorithm="erm", test_domain="", seed=0, init="vmamba-nano",
                         steps=steps, batch_size=16, lr=1e-3, image_size=32, eval_every=max(1, steps // 4),
                         augment="none")
    dg_train(dataset="rotated-digits", data_root=None, base=base, out=out, device=resolve_device("auto"),
             on_cell=lambda cfg: console.print(f"  training {cfg.algorithm} (seed {cfg.seed})"), **DG_DEMO)
    res = dg_eval(out, gap=True, gap_samples=100)
    print_dg(res, "training-domain", out)
    console.print(f"plot: {res['plot']}")
    return res



def run_finetune_demo(out: Path, *, console: Console | None = None, iters: int = 60):
    """U-Mamba Bot on procedural roads: pre-train on style B, then scratch vs full vs freeze on style A."""
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.seg.finetune import FinetuneConfig, finetune

    console = console or Console()
    dev = resolve_device("auto")
    base = FinetuneConfig(data="synthetic-roads-b", iters=iters, crop=64, batch_size=4, eval_every=max(1, iters // 3),
                          freeze_warmup=max(1, iters // 6))
    console.print(f"U-Mamba road segmentation: pre-training on synthetic-roads-b → {out}/pretrain")
    finetune(base, ["scratch"], out / "pretrain", dev)
    cfg = FinetuneConfig(**{**base.__dict__, "data": "synthetic-roads", "init": str(out / "pretrain/scratch/last.pt")})
    console.print(f"fine-tuning on synthetic-roads: scratch vs full vs freeze → {out}")
    df = finetune(cfg, ["scratch", "full", "freeze"], out, dev,
                  on_mode=lambda m: console.print(f"  {m}"))
    last = df.sort_values("step").groupby("mode", sort=False).tail(1)
    for r in last.itertuples():
        console.print(f"  {r.mode:8s} Dice {r.dice:.3f}  IoU {r.iou:.3f}  {r.sec_per_iter:.3f} s/iter  "
                      f"{r.trainable_params:,} trainable parameters")
    console.print(f"plot: {out / 'finetune.png'}")
    return df


#: The demo's Mender step: scores on 50 held-out digits under `affine` (severity 3), then a short
#: repair (CE-only control vs all Mender losses) measured on 200 held-out digits, clean and under
#: every corruption at severity 3. The closing note's figures use the full defaults (see README).
EXPLAIN_DEMO = dict(per_class=5, corruption="affine", severity=3, repair_steps=40, repair_per_class=20)


def run_explain_demo(out: Path, *, console: Console | None = None) -> dict:
    """``mamba-bench explain`` and ``explain --repair`` on the digit-trained vmamba-nano."""
    import shutil

    from mamba_bench.analysis.explain import ExplainConfig, RepairConfig, run_explain, run_repair

    console = console or Console()
    d = EXPLAIN_DEMO
    if out.exists():  # the demo's own output: re-made, not resumed
        shutil.rmtree(out)
    console.print(f"Vision Mamba Mender on vmamba-nano: scores under {d['corruption']} → {out}/scores")
    res = run_explain(ExplainConfig(model="vmamba-nano", data="digits", out=str(out / "scores"),
                                    per_class=d["per_class"], corruption=d["corruption"], severity=d["severity"],
                                    views=6))
    sc = res["scores"]
    for g in ("simple", "difficult"):
        ecs = sc[(sc.group == g) & sc.state.isin(["c", "s"])].ecs.mean()
        ics = sc[(sc.group == g) & (sc.state == "x")].ics.mean()
        console.print(f"  {g:9s} images: mean ECS of c and s over blocks {ecs:.3f}, mean ICS of x {ics:.4f}")
    for p in res["plots"]:
        console.print(f"plot: {p}")
    console.print(f"Mender repair ({d['repair_steps']} steps per arm) → {out}/repair")
    rep = run_repair(RepairConfig(model="vmamba-nano", data="digits", out=str(out / "repair"), arms=["ce", "all"],
                                  steps=d["repair_steps"], per_class=d["repair_per_class"]),
                     on_arm=lambda a: console.print(f"  fine-tuning arm {a}"))
    for r in rep["table"].itertuples():
        console.print(f"  {r.arm:5s} clean top-1 {r.clean_top1:6.2f} ({r.clean_change:+.2f})  corrupted top-1 "
                      f"{r.corrupted_top1:6.2f} ({r.corrupted_change:+.2f})  ECS {r.ecs:.3f}  ICS {r.ics:.4f}")
    return {"scores": res, "repair": rep}


#: The CI robustness gate's quick embedded run: a ConvNeXt-nano trained 4 epochs on digits (≈ 15 s on
#: 2 cores, cached), every corruption at severity 3 on 20 held-out digits per class, predictions saved
#: so that `compare` can run its paired test. reports/baseline/ holds the report of this run.
QUICK = dict(model="convnext-nano", epochs=4, per_class=20, severities=[3])


def run_quick(out: Path, *, console: Console | None = None, progress: bool = False):
    console = console or Console()
    weights = demo_weights(QUICK["model"], epochs=QUICK["epochs"], console=console)
    cfg = CorruptConfig(models=[QUICK["model"]], data="digits", out=str(out), weights=[str(weights)],
                        per_class=QUICK["per_class"], severities=QUICK["severities"], save_predictions=True,
                        progress=progress)
    res = run_corrupt(cfg)
    from mamba_bench.present import print_run_summary

    print_run_summary(res.metrics, res.summary, res.out)
    return res

"""``mamba-bench bench scan`` and ``bench models``: selective-scan backends and model throughput.

Each scan case runs in its own spawned process so its peak memory (max RSS growth over the
process's baseline) is its own; speed ratios are taken between cases of the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from mamba_bench.results.store import atomic_write_json, environment

REPEATS = 3         # timed runs per case (best is reported)
TIME_BUDGET = 10.0  # seconds of timed runs after which a case stops repeating
STAGE1 = dict(batch=8, dim=4 * 192, length=3136)  # VMamba-T stage 1: 4 directions × 192 channels, 56×56


def _inputs(batch: int, dim: int, length: int, d_state: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5 - 1.0
    A = -torch.exp(torch.randn(dim, d_state, generator=g) * 0.5)
    B = torch.randn(batch, 4, d_state, length, generator=g)
    C = torch.randn(batch, 4, d_state, length, generator=g)
    D = torch.randn(dim, generator=g)
    bias = torch.randn(dim, generator=g) * 0.1
    return u, delta, A, B, C, D, bias


def _case(args) -> dict:
    backend, d_state, backward, threads, shape, out_path = args
    torch.set_num_threads(threads)
    from mamba_bench.ops.selective_scan import selective_scan

    if backend == "cpu":  # compile the numba kernels outside the timing
        small = _inputs(1, 8, 16, d_state)
        w = [t.clone().requires_grad_() for t in small]
        selective_scan(*w[:5], D=w[5], delta_bias=w[6], delta_softplus=True, backend="cpu").sum().backward()
        with torch.no_grad():  # and the no-grad entry point, so no compilation lands in the timing
            selective_scan(*small[:5], D=small[5], delta_bias=small[6], delta_softplus=True, backend="cpu")
    ins = _inputs(shape["batch"], shape["dim"], shape["length"], d_state)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if backward:
        ins = [t.requires_grad_() for t in ins]
    times, y = [], None
    # best of up to REPEATS runs, the same rule for every backend; runs stop once TIME_BUDGET
    # seconds are spent (the reference loop at d_state 16 takes tens of seconds per run)
    while len(times) < REPEATS and sum(times) < TIME_BUDGET:
        y = None  # the previous run's output and gradients are freed before the next
        for t in ins:
            t.grad = None
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            y = selective_scan(*ins[:5], D=ins[5], delta_bias=ins[6], delta_softplus=True, backend=backend)
            if backward:
                y.sum().backward()
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if out_path:
        torch.save(y.detach(), out_path)
    return {"seconds": seconds, "runs": len(times), "peak_mb": (peak - base) / 1024}


def bench_scan(*, backends: list[str], d_states: list[int], threads: int = 2, out: Path | None = None,
               shape: dict | None = None, backward: tuple[bool, ...] = (False, True)) -> dict:
    shape = shape or STAGE1
    ctx = mp.get_context("spawn")
    rows = []
    tmp = Path(out or ".") / ".scan-outputs"
    tmp.mkdir(parents=True, exist_ok=True)
    for d_state in d_states:
        outputs = {}
        for bwd in backward:
            for backend in backends:
                path = str(tmp / f"{backend}-{d_state}.pt") if not bwd else None
                with ctx.Pool(1) as pool:
                    r = pool.apply(_case, ((backend, d_state, bwd, threads, shape, path),))
                rows.append({"backend": backend, "d_state": d_state, "pass": "fwd+bwd" if bwd else "fwd", **r})
                if path:
                    outputs[backend] = path
        ref = torch.load(outputs["ref"]) if "ref" in outputs else None
        for backend, path in outputs.items():
            if ref is not None:
                y = torch.load(path)
                err = float(((y - ref).abs().max() / ref.abs().max()).item())
                for row in rows:
                    if row["backend"] == backend and row["d_state"] == d_state:
                        row["max_rel_error_vs_ref"] = err
    for f in tmp.glob("*.pt"):
        f.unlink()
    tmp.rmdir()
    for row in rows:
        ref_row = next((r for r in rows if r["backend"] == "ref" and r["d_state"] == row["d_state"]
                        and r["pass"] == row["pass"]), None)
        row["speedup_vs_ref"] = ref_row["seconds"] / row["seconds"] if ref_row else None
    res = {"shape": shape, "threads": threads, "rows": rows,
           "machine": {"processor": platform.processor(), **environment()}}
    if out is not None:
        atomic_write_json(Path(out) / "bench_scan.json", res)
    return res


def bench_models(*, models: list[str], batch: int = 8, threads: int = 2, repeats: int = 3, device: str = "auto",
                 amp: bool = True, out: Path | None = None) -> dict:
    """Images/s of randomly initialised models at 224 px, side by side (weights don't change speed).

    On CUDA: channels_last, and bf16 autocast unless ``amp`` is False (fp32, the official tables'
    setting). On CPU everything is fp32.
    """
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.models.registry import get_spec

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    built = []
    for name in models:
        spec = get_spec(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = spec.build().eval().to(dev)
        x = torch.randn(batch, 3, spec.input_size, spec.input_size, device=dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        built.append((name, model, x))
    rounds: dict[str, list[float]] = {name: [] for name in models}

    def once(model, x) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # rounds over all models (warm-up first), so that a slow spell of a shared machine hits every
    # model alike; each model's best round and its median round are reported (on a machine whose
    # speed drifts, the best round of each model can come from different spells; the median less so)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and amp):
        for _, model, x in built:
            once(model, x)
        for _ in range(repeats):
            for name, model, x in built:
                rounds[name].append(once(model, x))
    rows = [{"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
             "images_per_second": batch / min(rounds[name]),
             "images_per_second_median": batch / statistics.median(rounds[name])} for name, model, _ in built]
    res = {"batch": batch, "threads": threads, "device": str(dev), "precision": "bf16" if cuda and amp else "fp32",
           "rows": rows,
           "machine": {"processor": platform.processor(), **environment()}}
    if out is not None:
        atomic_write_json(Path(out) / "bench_models.json", res)
    return res

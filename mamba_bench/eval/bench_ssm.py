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
    backend, d_state, backward, threads, shape, out_path, device = args
    torch.set_num_threads(threads)
    from mamba_bench.ops.selective_scan import selective_scan

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if backend == "cpu":  # compile the numba kernels outside the timing
        small = _inputs(1, 8, 16, d_state)
        w = [t.clone().requires_grad_() for t in small]
        selective_scan(*w[:5], D=w[5], delta_bias=w[6], delta_softplus=True, backend="cpu").sum().backward()
        with torch.no_grad():  # and the no-grad entry point, so no compilation lands in the timing
            selective_scan(*small[:5], D=small[5], delta_bias=small[6], delta_softplus=True, backend="cpu")
    ins = [t.to(dev) for t in _inputs(shape["batch"], shape["dim"], shape["length"], d_state)]
    if backward:
        ins = [t.requires_grad_() for t in ins]

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def run():
        for t in ins:
            t.grad = None
        with torch.set_grad_enabled(backward):
            y = selective_scan(*ins[:5], D=ins[5], delta_bias=ins[6], delta_softplus=True, backend=backend)
            if backward:
                y.sum().backward()
        return y

    if cuda and backend != "ref":  # Triton compiles at the first call (for these shapes), CUDA warms up
        run()
        sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, y = [], None
    # best of up to REPEATS runs, the same rule for every backend; runs stop once TIME_BUDGET
    # seconds are spent (the reference loop at d_state 16 takes tens of seconds per run)
    while len(times) < REPEATS and sum(times) < TIME_BUDGET:
        y = None  # the previous run's output and gradients are freed before the next
        sync()
        t0 = time.perf_counter()
        y = run()
        sync()
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    if out_path:
        torch.save(y.detach().cpu(), out_path)
    return {"seconds": seconds, "runs": len(times), "peak_mb": peak_mb}


def bench_scan(*, backends: list[str], d_states: list[int], threads: int = 2, out: Path | None = None,
               shape: dict | None = None, backward: tuple[bool, ...] = (False, True), device: str = "cpu") -> dict:
    """Each backend at ``shape``, forward and forward + backward. CPU cases run in a spawned process
    each (their own peak RSS); CUDA cases in this process, peak = CUDA memory allocated beyond the
    inputs, timed between synchronisations after one untimed call (Triton's compilation)."""
    shape = shape or STAGE1
    cuda = torch.device(device).type == "cuda"
    ctx = mp.get_context("spawn")
    rows = []
    tmp = Path(out or ".") / ".scan-outputs"
    tmp.mkdir(parents=True, exist_ok=True)
    for d_state in d_states:
        outputs = {}
        for bwd in backward:
            for backend in backends:
                path = str(tmp / f"{backend}-{d_state}.pt") if not bwd else None
                args = (backend, d_state, bwd, threads, shape, path, device)
                if cuda:
                    r = _case(args)
                else:
                    with ctx.Pool(1) as pool:
                        r = pool.apply(_case, (args,))
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
    res = {"shape": shape, "threads": threads, "device": str(device), "rows": rows,
           "machine": {"processor": platform.processor(), **environment()}}
    if out is not None:
        atomic_write_json(Path(out) / "bench_scan.json", res)
    return res


PRECISIONS = ("fp32", "bf16")


def check_bench_backends(backends: list[str], dev: torch.device) -> list[str]:
    """The scan backends asked for, each usable on ``dev`` (else a MambaBenchError naming those that are)."""
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.ops.selective_scan import BACKENDS, available_backends

    usable = available_backends(dev)
    for b in backends:
        if b not in BACKENDS:
            raise MambaBenchError(f"unknown --scan-backend {b!r}; valid: {', '.join(BACKENDS)}")
        if b != "auto" and b not in usable:
            raise MambaBenchError(f"scan backend {b!r} is not available on {dev.type} here; available: "
                                  f"auto, {', '.join(usable)}")
    return list(dict.fromkeys(backends))


def bench_models(*, models: list[str], batch: int = 8, threads: int = 2, repeats: int = 3, device: str = "auto",
                 amp: bool = True, out: Path | None = None, backends: list[str] | None = None,
                 precisions: list[str] | None = None) -> dict:
    """Images/s of randomly initialised models at 224 px, side by side (weights don't change speed).

    On CUDA: channels_last, and bf16 autocast unless ``amp`` is False (fp32, the official tables'
    setting); ``precisions`` (fp32, bf16) times both in one run. On CPU everything is fp32.
    ``backends``: selective-scan backends (default auto); a model with a selective scan (VMamba) gets
    one row per backend, the others one row per precision. Every row is timed in the same rounds.
    """
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.eval.corrupt import resolve_device
    from mamba_bench.models.registry import get_spec
    from mamba_bench.ops.selective_scan import resolve_backend, set_scan_backend

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    precisions = list(dict.fromkeys(precisions or ["bf16" if cuda and amp else "fp32"]))
    for p in precisions:
        if p not in PRECISIONS:
            raise MambaBenchError(f"unknown --precision {p!r}; valid: {', '.join(PRECISIONS)}")
        if p == "bf16" and not cuda:
            raise MambaBenchError("--precision bf16 (autocast) is for --device cuda; on CPU everything is fp32")
    backends = check_bench_backends(backends or ["auto"], dev)
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
        scans = set_scan_backend(model, "auto") > 0
        built.append((name, model, x, scans))
    # one configuration per (precision, model, backend); models without a scan: the backend is moot
    configs = [(f"{name}|{b if scans else '-'}|{p}", model, x, b if scans else None, p)
               for p in precisions for name, model, x, scans in built for b in (backends if scans else [None])]
    rounds: dict[str, list[float]] = {key: [] for key, *_ in configs}

    def once(model, x, backend, precision) -> float:
        if backend is not None:
            set_scan_backend(model, backend)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and precision == "bf16"):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    # rounds over all configurations (warm-up first: Triton compiles, cuDNN picks), so that a slow spell
    # of a shared machine hits every one alike; each one's best round and its median round are reported
    # (on a machine whose speed drifts, the best round of each can come from different spells; the
    # median less so)
    with torch.inference_mode():
        for _, model, x, backend, precision in configs:
            once(model, x, backend, precision)
        for _ in range(repeats):
            for key, model, x, backend, precision in configs:
                rounds[key].append(once(model, x, backend, precision))
    for _, model, _, scans in built:
        if scans:
            set_scan_backend(model, "auto")
    rows = [{"model": key.split("|")[0], "scan_backend": None if backend is None else resolve_backend(backend, dev),
             "precision": precision, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
             "images_per_second": batch / min(rounds[key]),
             "images_per_second_median": batch / statistics.median(rounds[key])}
            for key, model, _, backend, precision in configs]
    res = {"batch": batch, "threads": threads, "device": str(dev), "precision": ", ".join(precisions),
           "precisions": precisions, "scan_backends": backends, "rows": rows,
           "machine": {"processor": platform.processor(), **environment()}}
    if out is not None:
        atomic_write_json(Path(out) / "bench_models.json", res)
    return res

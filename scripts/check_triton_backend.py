"""GPU check of the Triton kernels (nothing to build): the ``triton`` selective-scan backend vs ``ref`` on
the GPU, outputs and every gradient, d_state 1 and 16, fp32 and bf16 inputs, with and without z and a
constant B; the fused SS2D kernel vs cross-scan → ref → cross-merge at VMamba-T's stage-1 map; VMamba-T's
logits through the fused path vs the ``torch`` backend; and, when mamba-ssm is importable, ``cuda`` on
the same cases. Also times SS2D's scan part at VMamba-T stage 1 (batch 128): the fused kernel against
cross_scan + the triton scan + cross_merge (CUDA events, best of 10 after a warm-up), and the fused
kernel's tile sizes.

    python scripts/check_triton_backend.py [OUT_DIR]      # writes OUT_DIR/check_triton.json

Exit status 1 when an fp32 relative error exceeds 1e-5 or a bf16 one 1e-2 (max |diff| / max |ref|).
``CHECK_TRITON_SMOKE=1 TRITON_INTERPRET=1``: the same script on CPU in Triton's interpreter with tiny
shapes and no timing (a dry run of the script itself, for machines without a GPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from mamba_bench.ops.cross_scan import cross_merge, cross_scan
from mamba_bench.ops.selective_scan import available_backends, selective_scan, selective_scan_ref

FP32_MAX, BF16_MAX = 1e-5, 1e-2
SMOKE = os.environ.get("CHECK_TRITON_SMOKE") == "1"
dev = torch.device("cpu" if SMOKE else "cuda")
backends = ["triton"] if SMOKE else [b for b in available_backends(dev) if b in ("triton", "cuda")]
report = {"device": "cpu (interpreter)" if SMOKE else torch.cuda.get_device_name(), "torch": torch.__version__,
          "backends": backends, "scan": [], "ss2d": [], "timing": {}}
import triton  # noqa: E402

report["triton"] = triton.__version__
print("device", report["device"], "torch", torch.__version__, "triton", triton.__version__, "backends", backends,
      flush=True)
assert "triton" in backends, "Triton does not import"
worst = {"fp32": 0.0, "bf16": 0.0}


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def scan_inputs(b, d, length, n, groups, dtype, z, const_b, seed=0):
    g = torch.Generator().manual_seed(seed)
    ins = dict(u=torch.randn(b, d, length, generator=g).to(dtype),
               delta=(torch.randn(b, d, length, generator=g) * 0.5 - 1.0).to(dtype),
               A=-torch.exp(torch.randn(d, n, generator=g) * 0.5),
               B=(torch.randn(d, n, generator=g) if const_b
                  else torch.randn(b, groups, n, length, generator=g).to(dtype)),
               C=torch.randn(b, groups, n, length, generator=g).to(dtype), D=torch.randn(d, generator=g),
               z=torch.randn(b, d, length, generator=g).to(dtype) if z else None,
               delta_bias=torch.randn(d, generator=g) * 0.1)
    return {k: v.to(dev) if v is not None else None for k, v in ins.items()}


t_start = time.time()
cases = [(1, torch.float32, 3136, False, False), (16, torch.float32, 3136, False, False),
         (1, torch.bfloat16, 3136, False, False), (16, torch.bfloat16, 777, False, False),
         (16, torch.float32, 777, True, True), (1, torch.float32, 777, True, False)]
if SMOKE:
    cases = [(n, dtype, 19, z, c) for n, dtype, _, z, c in cases]
for n, dtype, length, z, const_b in cases:
    ins = scan_inputs(2, 8 if SMOKE else 96, length, n, 1 if const_b else 4, dtype, z, const_b)
    res = {}
    for backend in ["ref", *backends]:
        w = {k: v.clone().requires_grad_() if v is not None else None for k, v in ins.items()}
        y, last = selective_scan(**w, delta_softplus=True, return_last_state=True, backend=backend)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dev)
        (y.float() * gy).sum().backward()
        res[backend] = (y, last, {k: v.grad for k, v in w.items() if v is not None})
    ry, rlast, rg = res["ref"]
    for backend in backends:
        y, last, gs = res[backend]
        errors = {"out": rel(y, ry), "last_state": rel(last, rlast), **{"grad_" + k: rel(gs[k], rg[k]) for k in gs}}
        prec = "fp32" if dtype == torch.float32 else "bf16"
        worst["fp32"] = max(worst["fp32"], errors["last_state"])  # the state is fp32 whatever the inputs
        worst[prec] = max(worst[prec], *(v for k, v in errors.items() if k != "last_state"))
        row = dict(backend=backend, d_state=n, dtype=prec, length=length, z=z, constant_B=const_b,
                   finite=bool(torch.isfinite(y).all()), errors=errors)
        report["scan"].append(row)
        print(f"scan {backend:6s} d_state {n:2d} {prec} L {length} z {z} const B {const_b}: "
              f"max rel err {max(errors.values()):.1e} ({max(errors, key=errors.get)})", flush=True)


def ss2d_case(b, h, w, d, n, r, seed=3):
    from mamba_bench.ops.selective_scan import ss2d_scan_triton

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, h, w, generator=g).to(dev)
    xw = (torch.randn(4, r + 2 * n, d, generator=g) * d ** -0.5).to(dev)
    dtw = (torch.randn(4, d, r, generator=g) * r ** -0.5).to(dev)
    dtb = (torch.randn(4, d, generator=g) * 0.5 - 3).to(dev)
    A = (-torch.rand(4 * d, n, generator=g) * 2 - 0.1).to(dev)
    D = torch.randn(4 * d, generator=g).to(dev)
    xs = cross_scan(x)
    dts, Bs, Cs = torch.split(torch.einsum("kcd,bkdl->bkcl", xw, xs), [r, n, n], dim=2)
    delta = torch.einsum("kdr,bkrl->bkdl", dtw, dts).reshape(b, 4 * d, h * w)
    ys = selective_scan_ref(xs.reshape(b, 4 * d, h * w), delta, A, Bs, Cs, D, delta_bias=dtb.reshape(-1),
                            delta_softplus=True)
    expected = cross_merge(ys.view(b, 4, d, h * w), h, w)
    xhwc = x.permute(0, 2, 3, 1).contiguous()
    xdbl = torch.nn.functional.linear(xhwc, xw.reshape(4 * (r + 2 * n), d)).view(b, h, w, 4, r + 2 * n)
    y = ss2d_scan_triton(xhwc, xdbl, dtw, dtb, A, D)
    err = rel(y.permute(0, 3, 1, 2).reshape(b, d, h * w), expected)
    worst["fp32"] = max(worst["fp32"], err)
    report["ss2d"].append(dict(b=b, h=h, w=w, d=d, d_state=n, r=r, error=err))
    print(f"fused ss2d {b}x{h}x{w}x{d} d_state {n}: max rel err {err:.1e}", flush=True)
    return xhwc, xdbl, dtw, dtb, A, D, x, xw


with torch.no_grad():
    if SMOKE:
        ss2d_case(1, 3, 5, 6, 1, 2)
        ss2d_case(1, 4, 3, 5, 16, 3)
    else:
        ss2d_case(2, 56, 56, 192, 1, 6)
        ss2d_case(2, 14, 14, 384, 16, 24)
        ss2d_case(3, 7, 9, 100, 1, 3)

    # timing at VMamba-T stage 1, batch 128: fused kernel vs cross_scan + triton scan + cross_merge
    from mamba_bench.ops.selective_scan import ss2d_scan_triton

    b, h, w, d, n, r = (1, 3, 4, 8, 1, 2) if SMOKE else (128, 56, 56, 192, 1, 6)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(b, d, h, w, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    xw = torch.randn(4, r + 2 * n, d, device=dev, generator=g) * d ** -0.5
    dtw = torch.randn(4, d, r, device=dev, generator=g) * r ** -0.5
    dtb = torch.randn(4, d, device=dev, generator=g) * 0.5 - 3
    A = -torch.rand(4 * d, n, device=dev, generator=g) - 0.1
    D = torch.randn(4 * d, device=dev, generator=g)

    def fused():
        t = x.permute(0, 2, 3, 1)
        xdbl = torch.nn.functional.linear(t, xw.reshape(4 * (r + 2 * n), d)).view(b, h, w, 4, r + 2 * n)
        return ss2d_scan_triton(t, xdbl, dtw, dtb, A, D)

    def unfused(backend):
        xs = cross_scan(x)
        dbl = torch.matmul(xw, xs)
        dts, Bs, Cs = torch.split(dbl, [r, n, n], dim=2)
        delta = torch.matmul(dtw, dts).reshape(b, 4 * d, h * w)
        ys = selective_scan(xs.reshape(b, 4 * d, h * w), delta, A, Bs.contiguous(), Cs.contiguous(), D,
                            delta_bias=dtb.reshape(-1), delta_softplus=True, backend=backend)
        return cross_merge(ys.view(b, 4, d, h * w), h, w)

    def best_ms(fn, runs=10):
        if SMOKE:  # no CUDA events: the call only
            fn()
            return None
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(runs):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return min(times)

    report["timing"]["shape"] = dict(batch=b, h=h, w=w, d=d, d_state=n, dt_rank=r)
    report["timing"]["fused_ss2d_ms"] = best_ms(fused)
    for backend in backends:
        report["timing"][f"cross_scan_{backend}_scan_cross_merge_ms"] = best_ms(lambda be=backend: unfused(be))
    print("SS2D scan part at VMamba-T stage 1, batch 128 (best of 10, ms):", report["timing"], flush=True)
    if not SMOKE:  # tiles of the fused kernel (BLOCK_D channels × BLOCK_T steps), for tuning its default
        t = x.permute(0, 2, 3, 1)
        xdbl = torch.nn.functional.linear(t, xw.reshape(4 * (r + 2 * n), d)).view(b, h, w, 4, r + 2 * n)
        report["timing"]["fused_ss2d_tiles_ms"] = {
            f"{bd}x{bt}": best_ms(lambda bd=bd, bt=bt: ss2d_scan_triton(t, xdbl, dtw, dtb, A, D, (bd, 1, bt)), 5)
            for bd in (16, 32, 64) for bt in (16, 32, 64)}
        print("fused SS2D tiles (BLOCK_D x BLOCK_T, ms):", report["timing"]["fused_ss2d_tiles_ms"], flush=True)
    yf = fused().permute(0, 3, 1, 2).reshape(b, d, h * w)
    report["timing"]["fused_vs_unfused_triton_rel_error"] = rel(yf, unfused("triton"))

    # VMamba-T logits: the fused path (backend auto = triton) vs the torch backend, fp32
    from mamba_bench.models.registry import get_spec

    torch.manual_seed(0)
    m = get_spec("vmamba-nano" if SMOKE else "vmamba-t").build().eval().to(dev)
    size = 24 if SMOKE else 224
    img = torch.randn(1 if SMOKE else 4, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    logits = {}
    for backend in ["torch", *backends]:
        m.set_scan_backend(backend)
        logits[backend] = m(img).float()
    for backend in backends:
        err = rel(logits[backend], logits["torch"])
        report[f"vmamba_t_logits_{backend}_vs_torch"] = err
        print(f"VMamba-T logits, {backend} vs torch backend: max rel err {err:.1e}", flush=True)

report["worst"] = worst
report["seconds"] = time.time() - t_start
ok = worst["fp32"] <= FP32_MAX and worst["bf16"] <= BF16_MAX
report["ok"] = ok
print(f"worst fp32 {worst['fp32']:.1e} (≤ {FP32_MAX}), bf16 {worst['bf16']:.1e} (≤ {BF16_MAX}): "
      f"{'PASS' if ok else 'FAIL'}; {report['seconds']:.0f} s", flush=True)
out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "check_triton.json").write_text(json.dumps(report, indent=2))
sys.exit(0 if ok else 1)

"""The Triton kernels against ``ref`` in Triton's CPU interpreter; run by tests/test_triton.py in a fresh
process (TRITON_INTERPRET=1 must be set before Triton is imported). Prints one JSON object:
case → {"errors": {tensor: max |diff| / max |ref|}, "seconds": s}. Shapes are tiny (the interpreter
runs each program's scan step by step in Python) but cross every chunk, channel-block, group and padding
boundary of the kernels: ``blocks`` forces small tiles; the ``default`` cases use the production ones.

    TRITON_INTERPRET=1 python tests/triton_interp_cases.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("set TRITON_INTERPRET=1 (before Triton is imported)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _vectorised_interpreter_scan() -> bool:
    """Triton's interpreter folds a ``tl.associative_scan`` with a user combine one tile ELEMENT at a time
    in Python (~0.4 ms each: a model-level case took minutes). This replaces it with the same sequential
    fold along the scan axis, one combine call per step on the whole slice (numpy broadcasting), so
    the results are those of the same combine applied in the same order. The kernels are unchanged.
    Returns False (the interpreter's own, slow, scan stays) where its internals are not as expected."""
    try:
        from triton.runtime.interpreter import ScanOps
    except ImportError:
        return False
    if not hasattr(ScanOps, "generic_scan") or not hasattr(ScanOps, "to_tensor"):
        return False

    def generic_scan(self, input):
        datas = [arg.handle.data for arg in input]
        axis = self.axis
        outs = [np.empty_like(d) for d in datas]
        acc = None
        for i in range(datas[0].shape[axis]):
            cur = tuple(self.to_tensor(np.take(d, [i], axis=axis), arg.dtype)
                        for d, arg in zip(datas, input, strict=True))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for o, a in zip(outs, acc, strict=True):
                index = [slice(None)] * o.ndim
                index[axis] = slice(i, i + 1)
                o[tuple(index)] = a.handle.data
        return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input, strict=True)]

    ScanOps.generic_scan = generic_scan
    return True


VECTORISED_SCAN = _vectorised_interpreter_scan()

from mamba_bench.ops import _triton_scan as ts  # noqa: E402
from mamba_bench.ops.cross_scan import cross_merge, cross_scan  # noqa: E402
from mamba_bench.ops.selective_scan import selective_scan, selective_scan_ref  # noqa: E402

assert ts.interpreted(), "the kernels were not built for the interpreter"
torch.set_num_threads(1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def scan_inputs(b, d, length, n, B_kind, C_kind, groups, z, D, bias, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def bc(kind):
        if kind == "const":
            return torch.randn(d, n, generator=g)
        if kind == "shared":
            return torch.randn(b, n, length, generator=g).to(dtype)
        return torch.randn(b, groups, n, length, generator=g).to(dtype)

    return dict(u=torch.randn(b, d, length, generator=g).to(dtype),
                delta=(torch.randn(b, d, length, generator=g) * 0.5).to(dtype),
                A=-torch.rand(d, n, generator=g) * 2 - 0.1, B=bc(B_kind), C=bc(C_kind),
                D=torch.randn(d, generator=g) if D else None,
                z=torch.randn(b, d, length, generator=g).to(dtype) if z else None,
                delta_bias=torch.randn(d, generator=g) * 0.5 if bias else None)


def scan_case(b=2, d=8, length=37, n=1, B_kind="groups", C_kind="groups", groups=4, z=True, D=True, bias=True,
              softplus=True, dtype=torch.float32, blocks=None, seed=0) -> dict:
    ins = scan_inputs(b, d, length, n, B_kind, C_kind, groups, z, D, bias, dtype, seed)
    if blocks is not None:
        blocks = (blocks[0], ts.triton.next_power_of_2(n), blocks[1])
    t_in = {k: v.clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    r_in = {k: v.clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    out, last = ts.selective_scan_triton(**t_in, delta_softplus=softplus, return_last_state=True, blocks=blocks)
    ref, ref_last = selective_scan_ref(**r_in, delta_softplus=softplus, return_last_state=True)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    (out.float() * w.float()).sum().backward()
    (ref.float() * w.float()).sum().backward()
    errors = {"out": rel(out, ref), "last_state": rel(last, ref_last)}
    for k, v in r_in.items():
        if v is not None:
            assert t_in[k].grad.shape == v.shape and t_in[k].grad.dtype == v.grad.dtype, k
            errors["grad_" + k] = rel(t_in[k].grad, v.grad)
    with torch.no_grad():  # the no-grad launch (no chunk states saved) and the public entry point
        plain = selective_scan(**ins, delta_softplus=softplus, backend="triton")
    errors["out_no_grad"] = rel(plain, ref)
    assert out.dtype == dtype and not last.requires_grad
    return errors


def ss2d_case(b=2, h=3, w=5, d=6, n=1, r=2, blocks=None, seed=3) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, h, w, generator=g)
    xw = torch.randn(4, r + 2 * n, d, generator=g) * 0.5
    dtw = torch.randn(4, d, r, generator=g) * 0.5
    dtb = torch.randn(4, d, generator=g) * 0.5
    A = -torch.rand(4 * d, n, generator=g) * 2 - 0.1
    D = torch.randn(4 * d, generator=g)
    xs = cross_scan(x)
    dts, Bs, Cs = torch.split(torch.einsum("kcd,bkdl->bkcl", xw, xs), [r, n, n], dim=2)
    delta = torch.einsum("kdr,bkrl->bkdl", dtw, dts).reshape(b, 4 * d, h * w)
    ys = selective_scan_ref(xs.reshape(b, 4 * d, h * w), delta, A, Bs, Cs, D, delta_bias=dtb.reshape(-1),
                            delta_softplus=True)
    expected = cross_merge(ys.view(b, 4, d, h * w), h, w)
    xhwc = x.permute(0, 2, 3, 1).contiguous()
    xdbl = torch.nn.functional.linear(xhwc, xw.reshape(4 * (r + 2 * n), d)).view(b, h, w, 4, r + 2 * n)
    if blocks is not None:
        blocks = (blocks[0], ts.triton.next_power_of_2(n), blocks[1])
    y = ts.ss2d_scan_triton(xhwc, xdbl, dtw, dtb, A, D, blocks)
    assert y.shape == (b, h, w, d) and y.dtype == torch.float32
    return {"out": rel(y.permute(0, 3, 1, 2).reshape(b, d, h * w), expected)}


def vmamba_case() -> dict:
    """vmamba-nano with backend triton vs torch: inference logits (the fused SS2D kernel in every block), and
    one VSS block's gradients in training mode (the triton selective scan on the cross-scanned sequences)."""
    from mamba_bench.models.registry import get_spec

    torch.manual_seed(0)
    model = get_spec("vmamba-nano").build()
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))  # maps 6x6, 3x3, 2x2, 1x1
    block = model.layers[0].blocks[0]
    fmap = torch.randn(1, block.op.in_proj.in_features, 6, 6, generator=torch.Generator().manual_seed(7))
    res = {}
    for backend in ("torch", "triton"):
        model.set_scan_backend(backend)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        block.train()
        block.zero_grad()
        block(fmap).square().sum().backward()
        res[backend] = (logits, {k: p.grad.clone() for k, p in block.named_parameters()})
    return {"logits": rel(res["triton"][0], res["torch"][0]),
            "grads_vss_block": max(rel(g, res["torch"][1][k]) for k, g in res["triton"][1].items())}


def umamba_case() -> dict:
    """U-Mamba's Mamba block (d_state 16, z gated in the scan) with backend triton vs ref, output and grads."""
    from mamba_bench.seg.umamba import Mamba

    torch.manual_seed(0)
    m = Mamba(8, d_state=16)
    x = torch.randn(2, 21, 8, generator=torch.Generator().manual_seed(6))
    out = {}
    for backend in ("ref", "triton"):
        m.scan_backend = backend
        m.zero_grad()
        y = m(x)
        y.square().sum().backward()
        out[backend] = (y.detach(), {k: p.grad.clone() for k, p in m.named_parameters()})
    errors = {"out": rel(out["triton"][0], out["ref"][0])}
    errors["grads"] = max(rel(g, out["ref"][1][k]) for k, g in out["triton"][1].items())
    return errors


CASES = {
    # d_state 1 (VMamba), 4 groups, 5 chunks of 8 steps, 2 batch items
    "scan_d1_groups4": lambda: scan_case(n=1, groups=4, blocks=(2, 8)),
    # d_state 16, one group split over two channel blocks (partial dB/dC folded), 3 chunks
    "scan_d16_blocks": lambda: scan_case(b=1, d=4, length=19, n=16, groups=1, blocks=(2, 8)),
    # constant (dim, N) B, (batch, N, L) C, z
    "scan_constB_sharedC": lambda: scan_case(d=4, length=23, n=4, B_kind="const", C_kind="shared", blocks=(4, 8)),
    # groups with a padded channel block (3 channels in 4 lanes), padded states (3 in 4), constant C, no extras
    "scan_constC_padded_plain": lambda: scan_case(d=6, length=17, n=3, C_kind="const", groups=2, z=False, D=False,
                                                  bias=False, softplus=False, blocks=(4, 8)),
    "scan_both_const": lambda: scan_case(d=4, length=12, n=2, B_kind="const", C_kind="const", blocks=(4, 4)),
    # the production tiles
    "scan_d1_default_blocks": lambda: scan_case(b=1, d=4, length=70, n=1, groups=1),
    "scan_d16_default_blocks": lambda: scan_case(b=1, d=8, length=40, n=16, groups=2),
    "scan_bf16_d1": lambda: scan_case(b=1, d=4, n=1, groups=2, length=20, dtype=torch.bfloat16, blocks=(2, 8)),
    "scan_bf16_d16": lambda: scan_case(b=1, d=4, length=20, n=16, groups=1, dtype=torch.bfloat16, blocks=(4, 8)),
    # fused SS2D: odd map, partial channel block, chunks that cross rows and columns
    "ss2d_d1": lambda: ss2d_case(n=1, blocks=(4, 4)),
    "ss2d_d4": lambda: ss2d_case(b=1, h=4, w=3, d=5, n=4, r=3, blocks=(8, 4)),
    "ss2d_d16_default_blocks": lambda: ss2d_case(b=1, h=5, w=4, d=4, n=16, r=1),
    "vmamba_nano": vmamba_case,
    "umamba_mamba_block": umamba_case,
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CASES)
    out = {"_vectorised_interpreter_scan": VECTORISED_SCAN}
    for name in names:
        t0 = time.perf_counter()
        out[name] = {"errors": CASES[name](), "seconds": round(time.perf_counter() - t0, 2)}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    print(json.dumps(out))

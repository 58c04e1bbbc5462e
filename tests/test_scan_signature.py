"""mamba-ssm's whole ``selective_scan_fn`` signature on the CPU backends: z gating, return_last_state,
constant (dim, N) B / C, against ``ref``, and ``ref`` itself against a hand-written loop."""

import math

import pytest
import torch

from mamba_bench.ops import selective_scan, selective_scan_ref
from mamba_bench.ops.selective_scan import available_backends, set_scan_backend

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "ref"]


def _inputs(b=2, d=4, length=9, n=3, B_kind="groups", C_kind="groups", groups=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def make(kind):
        if kind == "const":
            return torch.randn(d, n, generator=g)
        if kind == "shared":
            return torch.randn(b, n, length, generator=g)
        return torch.randn(b, groups, n, length, generator=g)

    return dict(u=torch.randn(b, d, length, generator=g), delta=torch.randn(b, d, length, generator=g),
                A=-torch.rand(d, n, generator=g) - 0.1, B=make(B_kind), C=make(C_kind),
                D=torch.randn(d, generator=g), z=torch.randn(b, d, length, generator=g),
                delta_bias=torch.randn(d, generator=g) * 0.5)


def _loop(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm's definition written out scalar by scalar (softplus, groups, constant B/C, D, silu(z))."""
    b, d, length = u.shape
    n = A.shape[1]
    out = torch.zeros(b, d, length, dtype=torch.float64)
    last = torch.zeros(b, d, n, dtype=torch.float64)

    def at(M, bi, di, k, t):
        if M.dim() == 2:
            return float(M[di, k])
        if M.dim() == 3:
            return float(M[bi, k, t])
        return float(M[bi, di // (d // M.shape[1]), k, t])

    for bi in range(b):
        for di in range(d):
            h = [0.0] * n
            for t in range(length):
                x = float(delta[bi, di, t]) + float(delta_bias[di])
                dt = math.log1p(math.exp(x)) if x <= 20 else x
                ut = float(u[bi, di, t])
                y = 0.0
                for k in range(n):
                    h[k] = math.exp(dt * float(A[di, k])) * h[k] + dt * at(B, bi, di, k, t) * ut
                    y += at(C, bi, di, k, t) * h[k]
                y += float(D[di]) * ut
                zt = float(z[bi, di, t])
                out[bi, di, t] = y * zt / (1 + math.exp(-zt))
            last[bi, di] = torch.tensor(h, dtype=torch.float64)
    return out, last


@pytest.mark.parametrize("B_kind, C_kind", [("groups", "groups"), ("const", "shared"), ("shared", "const"),
                                            ("const", "const")])
def test_ref_is_the_hand_written_loop(B_kind, C_kind):
    ins = _inputs(B_kind=B_kind, C_kind=C_kind)
    out, last = selective_scan_ref(**ins, delta_softplus=True, return_last_state=True)
    want_out, want_last = _loop(**ins)
    assert out.shape == (2, 4, 9) and last.shape == (2, 4, 3) and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.double(), want_last, rtol=1e-5, atol=1e-5)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("B_kind, C_kind, z, n", [("groups", "groups", True, 3), ("const", "shared", True, 16),
                                                  ("shared", "const", False, 1), ("const", "const", True, 4),
                                                  ("groups", "groups", False, 16)])
def test_backends_match_ref_with_z_last_state_and_constant_BC(backend, B_kind, C_kind, z, n):
    ins = _inputs(length=33, n=n, B_kind=B_kind, C_kind=C_kind)
    if not z:
        ins["z"] = None
    ref_in = {k: v.clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    out_in = {k: v.clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    ref, ref_last = selective_scan_ref(**ref_in, delta_softplus=True, return_last_state=True)
    out, last = selective_scan(**out_in, delta_softplus=True, return_last_state=True, backend=backend)
    assert _rel(out, ref) <= 1e-5 and _rel(last, ref_last) <= 1e-5
    assert not last.requires_grad and not ref_last.requires_grad  # mamba-ssm's rule, on every backend
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * w).sum().backward()
    (out * w).sum().backward()
    for k, v in ref_in.items():
        if v is not None:
            assert out_in[k].grad.shape == v.shape
            assert _rel(out_in[k].grad, v.grad) <= 1e-5, k
    with torch.no_grad():  # the cpu backend's inference entry point is a different kernel call
        out2, last2 = selective_scan(**ins, delta_softplus=True, return_last_state=True, backend=backend)
    assert _rel(out2, ref) <= 1e-5 and _rel(last2, ref_last) <= 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["ref"])
def test_z_gating_is_out_times_silu_z_and_dtype_follows_u(backend):
    ins = _inputs(n=2)
    z = ins.pop("z")
    plain = selective_scan(**ins, delta_softplus=True, backend=backend)
    gated = selective_scan(**ins, z=z, delta_softplus=True, backend=backend)
    torch.testing.assert_close(gated, plain * torch.nn.functional.silu(z), rtol=1e-5, atol=1e-6)
    bf = {k: v.bfloat16() if k in ("u", "delta", "B", "C") else v for k, v in ins.items()}
    assert selective_scan(**bf, z=z.bfloat16(), delta_softplus=True, backend=backend).dtype == torch.bfloat16


def test_old_positional_order_is_refused_not_misread():
    """Before mamba-ssm's order, position 7 was delta_bias: such a call must fail, not gate by the bias."""
    ins = _inputs()
    args = [ins[k] for k in ("u", "delta", "A", "B", "C", "D")]
    for backend in CPU_BACKENDS + ["ref"]:
        with pytest.raises(ValueError, match="z must be None or a tensor of u's shape"):
            selective_scan(*args, ins["delta_bias"], True, backend=backend)
    with pytest.raises(ValueError, match="same number of groups"):
        selective_scan(ins["u"], ins["delta"], ins["A"], ins["B"], ins["B"][:, :1])
    with pytest.raises(ValueError, match="constant B must be"):
        selective_scan(ins["u"], ins["delta"], ins["A"], ins["A"][:, :2], ins["C"])


def test_set_scan_backend_reaches_vmamba_and_umamba():
    from mamba_bench.models.registry import get_spec
    from mamba_bench.seg.umamba import build_umamba

    vm = get_spec("vmamba-nano").build()
    um = build_umamba("umamba-enc", width=4, arch="ours")  # a Mamba layer after each of stages 1-4
    official = build_umamba("umamba-enc", width=4, input_size=64)  # stages 0, 2, 4 of 5
    assert set_scan_backend(vm, "torch") == sum(len(s.blocks) for s in vm.layers) and set_scan_backend(um, "ref") == 4
    assert set_scan_backend(official, "ref") == 3
    assert {m.scan_backend for m in vm.modules() if hasattr(m, "scan_backend")} == {"torch"}
    for net in (um, official):
        assert {m.scan_backend for m in net.modules() if hasattr(m, "scan_backend")} == {"ref"}
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        set_scan_backend(vm, "fast")


def test_umamba_block_gates_in_the_scan_as_mamba_ssm_does():
    """Mamba(x) with z passed to the scan = the block written out with the scan ungated, times silu(z)."""
    import torch.nn.functional as F

    from mamba_bench.seg.umamba import Mamba

    torch.manual_seed(0)
    m = Mamba(8, d_state=16)
    x = torch.randn(2, 21, 8)
    with torch.no_grad():
        xi, z = m.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        xi = F.silu(m.conv1d(xi)[..., :21])
        dt, B, C = torch.split(m.x_proj(xi.transpose(1, 2)), [m.dt_rank, 16, 16], dim=-1)
        y = selective_scan_ref(xi, (dt @ m.dt_proj.weight.t()).transpose(1, 2), -torch.exp(m.A_log), B.transpose(1, 2),
                               C.transpose(1, 2), m.D, delta_bias=m.dt_proj.bias, delta_softplus=True)
        want = m.out_proj((y * F.silu(z)).transpose(1, 2))
        for backend in CPU_BACKENDS + ["ref"]:
            m.scan_backend = backend
            torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5, msg=backend)


def test_triton_backend_refused_clearly_without_a_gpu(monkeypatch):
    import importlib

    ss = importlib.import_module("mamba_bench.ops.selective_scan")  # the module (the package exports the function)
    ins = _inputs()
    monkeypatch.setattr(ss, "triton_available", lambda: False)  # e.g. aarch64: no Triton at all
    with pytest.raises(RuntimeError, match="needs Triton"):
        selective_scan(**ins, backend="triton")
    assert "triton" not in available_backends("cpu")
    monkeypatch.undo()
    if not ss.triton_available():
        pytest.skip("Triton is not installed here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        selective_scan(**ins, backend="triton")

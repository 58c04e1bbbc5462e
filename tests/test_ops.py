"""Every selective-scan backend against the sequential reference; cross-scan/merge."""

import pytest
import torch

from mamba_bench.ops import available_backends, cross_merge, cross_scan, selective_scan, selective_scan_ref

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "ref"]


def _inputs(b=2, d=8, length=37, n=1, groups=4, dt_scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, length, generator=g)
    delta = torch.randn(b, d, length, generator=g) * dt_scale
    A = -torch.rand(d, n, generator=g) * 2 - 0.1
    B = torch.randn(b, groups, n, length, generator=g)
    C = torch.randn(b, groups, n, length, generator=g)
    D = torch.randn(d, generator=g)
    bias = torch.randn(d, generator=g) * 0.5
    return [t.to(dtype) if t.dim() > 1 and t is not A else t for t in (u, delta, A, B, C)] + [D, bias]


def test_cpu_default_is_the_fused_kernel():
    assert available_backends("cpu")[0] == "cpu"
    assert "cuda" not in available_backends("cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n, groups, length", [(1, 4, 37), (16, 1, 33), (4, 2, 65), (16, 4, 1)])
def test_forward_and_gradients_match_reference(backend, n, groups, length):
    ins = _inputs(n=n, groups=groups, length=length)
    ref_in = [t.clone().requires_grad_() for t in ins]
    out_in = [t.clone().requires_grad_() for t in ins]
    ref = selective_scan_ref(*ref_in[:5], D=ref_in[5], delta_bias=ref_in[6], delta_softplus=True)
    out = selective_scan(*out_in[:5], D=out_in[5], delta_bias=out_in[6], delta_softplus=True, backend=backend)
    assert out.shape == ref.shape == (2, 8, length)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * w).sum().backward()
    (out * w).sum().backward()
    for a, b in zip(ref_in, out_in, strict=True):
        scale = a.grad.abs().max().clamp(min=1.0)
        assert float((a.grad - b.grad).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_retained_graph_can_be_walked_twice(backend):
    """A gradient taken with retain_graph, then a second backward through the same graph (Mender's repair)."""
    ins = [t.clone().requires_grad_() for t in _inputs(n=4)]
    out = selective_scan(*ins[:5], D=ins[5], delta_bias=ins[6], delta_softplus=True, backend=backend)
    (g1,) = torch.autograd.grad(out.sum(), ins[0], retain_graph=True)
    (g2,) = torch.autograd.grad(out.sum(), ins[0])
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dt_scale", [1e-4, 30.0])
@pytest.mark.parametrize("n", [1, 16])
def test_extreme_delta_stays_finite(backend, dt_scale, n):
    u, delta, A, B, C, D, bias = _inputs(n=n, groups=1, length=300, dt_scale=dt_scale)
    delta = delta.abs() * dt_scale + (20.0 if dt_scale > 1 else 0.0)
    ref = selective_scan_ref(u, delta, A * 30, B, C, D)
    out = selective_scan(u, delta, A * 30, B, C, D, backend=backend)
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_long_sequence_no_overflow(backend):
    """Cumulative-sum formulations overflow here (Σ ΔA over thousands of steps); a true scan does not."""
    u, delta, A, B, C, D, bias = _inputs(b=1, d=4, n=16, groups=1, length=3136)
    out = selective_scan(u, delta.abs() + 1.0, A * 10, B, C, D, delta_softplus=True, backend=backend)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_inputs(backend):
    ins = _inputs(n=1, groups=4, dtype=torch.bfloat16)
    ref = selective_scan_ref(*ins[:5], D=ins[5], delta_bias=ins[6], delta_softplus=True)
    out = selective_scan(*ins[:5], D=ins[5], delta_bias=ins[6], delta_softplus=True, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_three_dim_B_C_shared_by_all_channels():
    u, delta, A, B, C, D, bias = _inputs(n=4, groups=1)
    for backend in CPU_BACKENDS:
        a = selective_scan(u, delta, A, B[:, 0], C[:, 0], D, delta_bias=bias, delta_softplus=True, backend=backend)
        b = selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)
        torch.testing.assert_close(a, b)


def test_unknown_backend():
    u, delta, A, B, C, D, bias = _inputs()
    with pytest.raises(ValueError, match="valid: auto, triton, cuda, cpu, torch, ref"):
        selective_scan(u, delta, A, B, C, backend="fast")
    with pytest.raises(RuntimeError, match="mamba-ssm"):
        selective_scan(u, delta, A, B, C, backend="cuda")


def test_cross_scan_orders_and_merge_is_adjoint():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, 20)
    assert torch.equal(xs[:, 0], x.flatten(2))
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.equal(xs[:, 2], x.flatten(2).flip(-1))
    assert torch.equal(xs[:, 3], x.transpose(2, 3).flatten(2).flip(-1))
    # merge(scan(x)) adds the four copies back at their row-major places
    assert torch.equal(cross_merge(xs, 4, 5), 4 * x.flatten(2))
    y = torch.randn(2, 4, 3, 20)
    assert torch.allclose((cross_scan(x) * y).sum(), (x.flatten(2) * cross_merge(y, 4, 5)).sum(), rtol=1e-5)


@pytest.mark.parametrize("n, h, w, d, width, r", [(1, 5, 7, 6, None, 5), (4, 6, 3, 6, None, 2), (16, 1, 9, 6, None, 7),
                                                  (1, 4, 3, 130, None, 6), (1, 4, 3, 130, 48, 5), (2, 3, 5, 64, 24, 1)])
def test_fused_ss2d_equals_cross_scan_then_reference(n, h, w, d, width, r):
    """The CPU SS2D kernel (reversed directions walked backwards, no flips) = the literal composition."""
    from mamba_bench.ops.selective_scan import ss2d_scan_cpu

    g = torch.Generator().manual_seed(3)
    b = 2  # widths 48 and 24: three channel blocks, the last one partial (34, 16); r: dt_proj rows in passes of 4, 2, 1
    x = torch.randn(b, d, h, w, generator=g)
    xw = torch.randn(4, r + 2 * n, d, generator=g) * 0.5
    dtw = torch.randn(4, d, r, generator=g) * 0.5
    dtb = torch.randn(4, d, generator=g) * 0.5
    A = -torch.rand(4 * d, n, generator=g) * 2 - 0.1
    D = torch.randn(4 * d, generator=g)
    xs = cross_scan(x)
    dbl = torch.einsum("kcd,bkdl->bkcl", xw, xs)
    dts, Bs, Cs = torch.split(dbl, [r, n, n], dim=2)
    delta = torch.einsum("kdr,bkrl->bkdl", dtw, dts).reshape(b, 4 * d, h * w)
    ys = selective_scan_ref(xs.reshape(b, 4 * d, h * w), delta, A, Bs, Cs, D, delta_bias=dtb.reshape(-1),
                            delta_softplus=True)
    expected = cross_merge(ys.view(b, 4, d, h * w), h, w)
    with torch.no_grad():
        out = ss2d_scan_cpu(x.permute(0, 2, 3, 1), xw, dtw, dtb, A, D, width)  # channels-last in and out
    torch.testing.assert_close(out.permute(0, 3, 1, 2).reshape(b, d, h * w), expected, rtol=1e-4, atol=1e-4)


def test_ss2d_block_width():
    from mamba_bench.ops._numba_scan import ss2d_block_width

    assert ss2d_block_width(8, 96, 1, 2) == 96      # one job per image when there are enough images
    assert ss2d_block_width(1, 96, 1, 2) == 24      # one image: four jobs for two threads
    assert ss2d_block_width(3, 130, 1, 2) == 72     # ceil(130 / 2) rounded up to 8 lanes
    assert ss2d_block_width(8, 768, 16, 2) == 256   # 16 states per channel: at most 4096 state floats a job
    assert ss2d_block_width(1, 4, 1, 8) == 4        # never wider than d


def test_fast_exp_and_softplus_match_libm():
    import numba
    import numpy as np

    from mamba_bench.ops._numba_scan import _exp, _exp_nonpos, _softplus

    @numba.njit
    def apply(f_id, x, out):
        for i in range(x.size):
            out[i] = _exp(x[i]) if f_id == 0 else _softplus(x[i]) if f_id == 1 else _exp_nonpos(x[i])

    x = np.linspace(-87.3, 88.0, 400_001).astype(np.float32)
    out = np.empty_like(x)
    apply(0, x, out)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < 5e-7
    apply(0, np.array([-1e4, -88.0, 100.0], np.float32), out[:3])
    assert out[0] == 0 and out[1] == 0 and np.isinf(out[2])  # underflow to 0, overflow to inf, never NaN
    z = np.linspace(-80, 80, 400_001).astype(np.float32)
    apply(1, z, out)
    exact = torch.nn.functional.softplus(torch.from_numpy(z).double()).numpy()
    assert np.max(np.abs(out - exact) / exact) < 5e-7
    assert np.array_equal(out[z > 20], z[z > 20])  # as torch's softplus, which returns z above 20
    x = np.linspace(-87.3, 0.0, 400_001).astype(np.float32)
    apply(2, x, out)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < 5e-7
    apply(2, np.array([-1e4, -np.inf, -88.0], np.float32), out[:3])
    assert np.all((out[:3] >= 0) & (out[:3] < 1.3e-38))  # clamped at exp(-87.3): tiny, never NaN


def test_bench_models_reports_best_and_median_rounds(tmp_path):
    import json

    from mamba_bench.eval.bench_ssm import bench_models

    res = bench_models(models=["vmamba-nano"], batch=1, threads=1, repeats=3, device="cpu", out=tmp_path)
    (row,) = res["rows"]
    assert row["model"] == "vmamba-nano" and 0 < row["params_m"] < 2
    assert row["images_per_second"] >= row["images_per_second_median"] > 0  # best round ≥ median round
    assert json.loads((tmp_path / "bench_models.json").read_text())["rows"] == res["rows"]


def test_bench_scan_reports_speed_memory_and_error(tmp_path):
    from mamba_bench.eval.bench_ssm import STAGE1, bench_scan

    res = bench_scan(backends=["cpu", "ref"], d_states=[4], threads=1, out=tmp_path,
                     shape={**STAGE1, "batch": 1, "dim": 16, "length": 64})
    rows = {(r["backend"], r["pass"]): r for r in res["rows"]}
    assert set(rows) == {("cpu", "fwd"), ("ref", "fwd"), ("cpu", "fwd+bwd"), ("ref", "fwd+bwd")}
    assert rows[("cpu", "fwd")]["max_rel_error_vs_ref"] <= 1e-4
    assert rows[("ref", "fwd")]["speedup_vs_ref"] == 1.0
    assert (tmp_path / "bench_scan.json").exists() and not (tmp_path / ".scan-outputs").exists()


@pytest.mark.parametrize("rows, c", [(1, 1), (7, 5), (300, 48), (65, 130)])
def test_numba_layer_norm_matches_torch(rows, c):
    """The CPU inference LayerNorm (VMamba's stem, blocks, downsampling): torch's result on rows off
    zero mean (a two-pass variance), in place, and NaN confined to its own row."""
    from mamba_bench.ops._numba_norm import layer_norm_last

    g = torch.Generator().manual_seed(rows)
    norm = torch.nn.LayerNorm(c, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
        x = 5 + torch.randn(rows, c, generator=g) * 0.5
        expected = norm(x)
        torch.testing.assert_close(layer_norm_last(x, norm), expected, rtol=1e-5, atol=1e-5)
        y = x.clone()
        assert layer_norm_last(y, norm, out=y) is y
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        x[0, 0] = float("nan")
        y = layer_norm_last(x, norm)
        assert torch.isnan(y[0]).all() and not torch.isnan(y[1:]).any()

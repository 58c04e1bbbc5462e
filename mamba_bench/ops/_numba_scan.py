"""Fused CPU selective scan (numba): one pass over u, Δ, B, C per (batch, channel), in parallel.

Each (batch, channel) pair keeps its N-dim state locally and walks the sequence once; only
exp(Δ·A) with Δ·A ≤ 0 is computed, so nothing overflows. The backward pass walks the sequence in
reverse with the states saved by the forward pass (b·d·L·N floats) and writes per-channel
gradients of B and C, which are summed over each group afterwards (no races between threads).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

# exp and softplus written out as float32 arithmetic, so that LLVM vectorises the loops that
# evaluate them over a chunk of steps (libm's scalar expf/log1pf cost ~3x the whole recurrence).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)      # ln 2 split in two (Cephes), so x - n·ln2 is exact enough
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.3)             # below: exp underflows to 0 (no denormals)
_EXP_HI = np.float32(88.0)             # above: inf (true overflow is at 88.72; never reached: Δ·A ≤ 0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
CHUNK = 256                             # steps whose Δ and exp(Δ·A) are evaluated together
# error_model "numpy": a float division must not raise ZeroDivisionError, whose check in every
# iteration keeps LLVM from vectorising the softplus loops
_JIT = dict(fastmath={"contract"}, error_model="numpy")


@intrinsic
def _bits_to_f32(typingctx, bits):  # reinterpret an int32 as float32 (free: one LLVM bitcast)
    if not isinstance(bits, types.Integer) or bits.bitwidth != 32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@numba.njit(inline="always", **_JIT)
def _exp_core(x):  # pragma: no cover - compiled
    """expf to ~2 ulp for -87.3 ≤ x ≤ 88: exp(x) = 2^n · p(r), r = x - n ln2 in [-ln2/2, ln2/2], Cephes' polynomial."""
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + _ONE
    # int32 all the way: AVX2 has no float→int64 vector conversion (int64 here made exp 2x slower)
    return p * _bits_to_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@numba.njit(inline="always", **_JIT)
def _exp(x):  # pragma: no cover - compiled
    """expf for any x: 0 below -87.3 (no denormals), inf above 88 (true overflow is at 88.72)."""
    scaled = _exp_core(min(max(x, _EXP_LO), _EXP_HI))
    if x > _EXP_HI:
        return np.float32(np.inf)
    return _ZERO if x < _EXP_LO else scaled


@numba.njit(inline="always", **_JIT)
def _exp_nonpos(x):  # pragma: no cover - compiled
    """expf for x ≤ 0 (Δ·A, -|z|), the hot loops' case: below -87.3 it returns exp(-87.3) ≈ 1.2e-38
    rather than 0 (nothing downstream can tell), which saves the two tests and blends of ``_exp``."""
    return _exp_core(max(x, _EXP_LO))


@numba.njit(inline="always", **_JIT)
def _softplus_tail(z, t):  # pragma: no cover - compiled
    """softplus(z) given t = e^-|z|: max(z, 0) + log1p(t), log1p(t) = 2 atanh(t / (2 + t)), t in (0, 1],
    with a degree-4 minimax polynomial in s² for atanh(s)/s on s ≤ 1/3 (error 1.2e-8). Above z = 20
    the correction is below half an ulp of z, so this equals torch's softplus, which returns z there."""
    s = t / (_TWO + t)
    s2 = s * s
    q = np.float32(0.139077478162)
    q = q * s2 + np.float32(0.140166469398)
    q = q * s2 + np.float32(0.200102190111)
    q = q * s2 + np.float32(0.333332003182)
    q = q * s2 + np.float32(1.000000002715)
    return max(z, _ZERO) + _TWO * s * q


@numba.njit(inline="always", **_JIT)
def _softplus(z):  # pragma: no cover - compiled
    """log(1 + e^z), see ``_softplus_tail``."""
    return _softplus_tail(z, _exp_nonpos(-abs(z)))


@numba.njit(parallel=True, cache=True, **_JIT)
def _fwd(u, delta, A, Bt, Ct, D, bias, softplus, group_size, y, hs, save, last):  # pragma: no cover - compiled
    # Δ-bias and softplus are fused in for inference (torch's softplus alone costs 3x the recurrence);
    # the autograd path passes them as zeros / False and saves the states for the backward pass.
    # Per (batch, channel) and chunk of steps: Δ, then exp(Δ·A) for every state (vectorised over
    # steps), then the sequential recurrence, which is only multiply-adds. ``last`` (b, d, n): the
    # state after the last step (mamba-ssm's return_last_state).
    nb, nd, length = u.shape
    n = A.shape[1]
    for job in prange(nb * nd):
        bi = job // nd
        di = job % nd
        gi = di // group_size
        bias_d = bias[di]
        d_skip = D[di]
        h = np.zeros(n, dtype=np.float32)
        dts = np.empty(CHUNK, dtype=np.float32)
        da = np.empty((n, CHUNK), dtype=np.float32)
        drow = delta[bi, di]
        urow = u[bi, di]
        yrow = y[bi, di]
        for s in range(0, length, CHUNK):
            m = min(CHUNK, length - s)
            if softplus:
                for i in range(m):
                    dts[i] = _softplus(drow[s + i] + bias_d)
            else:
                for i in range(m):
                    dts[i] = drow[s + i] + bias_d
            for k in range(n):
                a_k = A[di, k]
                dak = da[k]
                for i in range(m):
                    dak[i] = _exp(dts[i] * a_k)
            if n == 1 and not save:  # d_state 1 (VMamba-T): the state stays in a register
                h0 = h[0]
                for i in range(m):
                    t = s + i
                    ut = urow[t]
                    h0 = da[0, i] * h0 + dts[i] * ut * Bt[bi, gi, t, 0]
                    yrow[t] = h0 * Ct[bi, gi, t, 0] + d_skip * ut
                h[0] = h0
                continue
            for i in range(m):
                t = s + i
                ut = urow[t]
                x = dts[i] * ut
                acc = np.float32(0.0)
                for k in range(n):
                    hk = da[k, i] * h[k] + x * Bt[bi, gi, t, k]
                    h[k] = hk
                    acc += hk * Ct[bi, gi, t, k]
                    if save:
                        hs[bi, di, t, k] = hk
                yrow[t] = acc + d_skip * ut
        for k in range(n):
            last[bi, di, k] = h[k]


def selective_scan_numba_infer(u, delta, A, B, C, D, delta_bias, delta_softplus: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad path: raw Δ in, bias and softplus applied inside the kernel. Returns (y, last state)."""
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    b, d, length = u.shape
    g = B.shape[1]
    _threads()
    zeros = torch.zeros(d, dtype=torch.float32)
    y = _touched((b, d, length))
    last = np.empty((b, d, A.shape[1]), np.float32)
    _fwd(_np(u), _np(delta), _np(A), _np(B.transpose(2, 3)), _np(C.transpose(2, 3)),
         _np(D if D is not None else zeros), _np(delta_bias if delta_bias is not None else zeros),
         bool(delta_softplus), d // g, y, np.empty((1, 1, 1, 1), np.float32), False, last)
    return torch.from_numpy(y), torch.from_numpy(last)


SS2D_STATE_FLOATS = 4096               # a job's channel block keeps at most this many state floats (16 KB, in L1)


@numba.njit(cache=True, **_JIT)
def _ss2d_job(x, xdbl, wdt, bias, A, D, bi, c0, m, hh, ww, nd, r, n, y, h, z, e):  # pragma: no cover - compiled
    # Offsets are unsigned: with signed ones numba wraps negative indices around, and that select
    # in every access keeps LLVM from vectorising the loops over channels (measured: 2-3x slower).
    U = np.uint64
    nc = r + 2 * n
    length = hh * ww
    mu = U(m)
    for k in range(4):
        h[:] = 0.0
        cols = k % 2 == 1                  # directions 1, 3: column-major; 2, 3: walked backwards
        back = k >= 2
        n_out = ww if cols else hh
        n_in = hh if cols else ww
        bo = U(k * nd + c0)
        for jo in range(n_out):
            o = n_out - 1 - jo if back else jo
            for ji in range(n_in):
                i = n_in - 1 - ji if back else ji
                p = bi * length + (i * ww + o if cols else o * ww + i)
                xo = U(p * nd + c0)
                xdo = (p * 4 + k) * nc
                # Δ = softplus(dt_proj(x_proj(x)) + bias) for m channels; up to four dt_proj rows per pass
                # over z (the first one also adds the bias): fewer loads and stores of z
                j = min(r, 4)
                w0 = xdbl[xdo] if r > 0 else _ZERO
                w1 = xdbl[xdo + 1] if r > 1 else _ZERO
                w2 = xdbl[xdo + 2] if r > 2 else _ZERO
                w3 = xdbl[xdo + 3] if r > 3 else _ZERO
                o0 = U(k * r * nd + c0)
                o1 = o0 + U(nd if r > 1 else 0)  # rows past r: weight 0 times row 0 (in bounds)
                o2 = o1 + U(nd if r > 2 else 0)
                o3 = o2 + U(nd if r > 3 else 0)
                for c in range(mu):
                    z[c] = bias[bo + c] + wdt[o0 + c] * w0 + wdt[o1 + c] * w1 + wdt[o2 + c] * w2 + wdt[o3 + c] * w3
                while j + 4 <= r:
                    w0, w1, w2, w3 = xdbl[xdo + j], xdbl[xdo + j + 1], xdbl[xdo + j + 2], xdbl[xdo + j + 3]
                    o0 = U((k * r + j) * nd + c0)
                    o1 = o0 + U(nd)
                    o2 = o1 + U(nd)
                    o3 = o2 + U(nd)
                    for c in range(mu):
                        z[c] += wdt[o0 + c] * w0 + wdt[o1 + c] * w1 + wdt[o2 + c] * w2 + wdt[o3 + c] * w3
                    j += 4
                if j + 2 <= r:
                    w0, w1 = xdbl[xdo + j], xdbl[xdo + j + 1]
                    o0 = U((k * r + j) * nd + c0)
                    o1 = o0 + U(nd)
                    for c in range(mu):
                        z[c] += wdt[o0 + c] * w0 + wdt[o1 + c] * w1
                    j += 2
                if j < r:
                    wj = xdbl[xdo + j]
                    wo = U((k * r + j) * nd + c0)
                    for c in range(mu):
                        z[c] += wdt[wo + c] * wj
                # Short loops, each one stage of the arithmetic: one fused loop runs ~20 % slower, its
                # long dependency chain per channel vector leaves too few vectors in flight
                for c in range(mu):
                    e[c] = _exp_nonpos(-abs(z[c]))
                for c in range(mu):
                    z[c] = _softplus_tail(z[c], e[c])
                if n == 1:                 # d_state 1 (every v2 release): the step and the output in one loop
                    bt = xdbl[xdo + r]
                    ct = xdbl[xdo + r + 1]
                    for c in range(mu):
                        e[c] = _exp_nonpos(z[c] * A[bo + c])
                    for c in range(mu):
                        xc = x[xo + c]
                        hv = e[c] * h[c] + z[c] * xc * bt
                        h[c] = hv
                        y[xo + c] += D[bo + c] * xc + hv * ct
                    continue
                for c in range(mu):
                    y[xo + c] += D[bo + c] * x[xo + c]
                for s in range(n):
                    ao = U((k * n + s) * nd + c0)
                    ho = U(s) * mu
                    bt = xdbl[xdo + r + s]
                    ct = xdbl[xdo + r + n + s]
                    for c in range(mu):
                        e[c] = _exp_nonpos(z[c] * A[ao + c])
                    for c in range(mu):
                        hv = e[c] * h[ho + c] + z[c] * x[xo + c] * bt
                        h[ho + c] = hv
                        y[xo + c] += hv * ct


@numba.njit(parallel=True, cache=True, **_JIT)
def _fwd_ss2d(x, xdbl, wdt, bias, A, D, nb, hh, ww, nd, r, n, width, y):  # pragma: no cover - compiled
    """SS2D's four scans on a channels-last map, cross-scan and cross-merge folded in (inference).

    Flat float32 arrays: x, y (b, H, W, d); xdbl (b, H, W, 4, r + 2n) = every direction's x_proj
    at every position (a projection does not depend on the scan order); wdt (4, r, d) dt_proj;
    bias, D (4, d); A (4, n, d); y zeroed. Each job owns one batch item and a block of ``width``
    channels and walks the four directions in turn, adding each direction's output at the
    position it came from. The loops run over channels, which are contiguous in this layout, so
    they vectorise; the state of a block of channels stays in L1.
    """
    nblk = (nd + width - 1) // width
    for job in prange(nb * nblk):
        bi = job // nblk
        c0 = (job % nblk) * width
        m = min(width, nd - c0)
        h = np.zeros(n * m, dtype=np.float32)
        z = np.empty(m, dtype=np.float32)
        e = np.empty(m, dtype=np.float32)
        _ss2d_job(x, xdbl, wdt, bias, A, D, bi, c0, m, hh, ww, nd, r, n, y, h, z, e)


def ss2d_block_width(b: int, d: int, n: int, threads: int) -> int:
    """Channels per job of the SS2D kernel: as wide as possible (long vector loops, less per-token
    overhead: whole-d blocks are 10-15 % faster than 64-channel ones at VMamba-T's shapes), split
    only to give every thread two jobs or to keep a block's n states within SS2D_STATE_FLOATS."""
    blocks = max(-(-2 * threads // b), -(-d * n // SS2D_STATE_FLOATS), 1)
    per = -(-d // blocks)
    return min(d, -(-per // 8) * 8)  # a multiple of 8 (AVX2 lanes)


def ss2d_scan_numba(x: torch.Tensor, xdbl: torch.Tensor, wdt: torch.Tensor, bias: torch.Tensor, A: torch.Tensor,
                    D: torch.Tensor, block_width: int | None = None) -> torch.Tensor:
    """Inference: see ``_fwd_ss2d``. x (b, H, W, d), xdbl (b, H, W, 4, r + 2n), wdt (4, d, r),
    bias and D (4·d,), A (4·d, n) ≤ 0; returns y (b, H, W, d), the sum of the four directions.
    ``block_width``: channels per job (default ``ss2d_block_width``; the result does not depend on it)."""
    b, hh, ww, d = x.shape
    r, n = wdt.shape[2], A.shape[1]
    _threads()
    width = block_width or ss2d_block_width(b, d, n, numba.get_num_threads())
    y = _touched((b, hh, ww, d))  # zeros: the kernel adds the four directions into it
    _fwd_ss2d(_np(x).reshape(-1), _np(xdbl).reshape(-1), _np(wdt.transpose(1, 2)).reshape(-1), _np(bias).reshape(-1),
              _np(A.view(4, d, n).transpose(1, 2)).reshape(-1), _np(D).reshape(-1), b, hh, ww, d, r, n, width,
              y.reshape(-1))
    return torch.from_numpy(y)


@numba.njit(parallel=True, cache=True, **_JIT)
def _bwd(u, delta, A, Bt, Ct, D, group_size, hs, gy,  # pragma: no cover - compiled
         gu, gdelta, gA_part, gB_part, gC_part, gD_part):
    nb, nd, length = u.shape
    n = A.shape[1]
    for job in prange(nb * nd):
        bi = job // nd
        di = job % nd
        gi = di // group_size
        gh = np.zeros(n, dtype=np.float32)
        ga = np.zeros(n, dtype=np.float32)
        gd_acc = np.float32(0.0)
        for t in range(length - 1, -1, -1):
            dt = delta[bi, di, t]
            ut = u[bi, di, t]
            g = gy[bi, di, t]
            gu_t = g * D[di]
            gd_acc += g * ut
            gdt = np.float32(0.0)
            for k in range(n):
                c = Ct[bi, gi, t, k]
                gC_part[bi, di, t, k] = g * hs[bi, di, t, k]
                gh[k] += g * c                      # dL/dh_t, complete now (h_{t+1} term added below)
                a = _exp(dt * A[di, k])
                hprev = hs[bi, di, t - 1, k] if t > 0 else np.float32(0.0)
                g_a = gh[k] * hprev * a             # through a_t = exp(Δ_t A)
                gdt += g_a * A[di, k]
                ga[k] += g_a * dt
                bk = Bt[bi, gi, t, k]
                gdt += gh[k] * ut * bk              # through b_t = Δ_t u_t B_t
                gu_t += gh[k] * dt * bk
                gB_part[bi, di, t, k] = gh[k] * dt * ut
                gh[k] = gh[k] * a                   # carried to h_{t-1}
            gu[bi, di, t] = gu_t
            gdelta[bi, di, t] = gdt
        for k in range(n):
            gA_part[bi, di, k] = ga[k]
        gD_part[bi, di] = gd_acc


def _touched(shape) -> np.ndarray:
    """A new float32 buffer, its pages faulted in by one sequential pass: when the kernel's threads
    fault a fresh output's pages themselves, the call takes 2-3x as long (measured on a 2-core VM)."""
    out = np.empty(shape, dtype=np.float32)
    out.fill(0.0)
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _threads() -> None:
    numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        b, d, length = u.shape
        g, n = B.shape[1], A.shape[1]
        _threads()
        save = ctx.needs_input_grad is not None and any(ctx.needs_input_grad)
        arrays = (_np(u), _np(delta), _np(A), _np(B.transpose(2, 3)), _np(C.transpose(2, 3)), _np(D))
        y = _touched((b, d, length))
        hs = _touched((b, d, length, n) if save else (1, 1, 1, 1))
        u_, delta_, A_, Bt, Ct, D_ = arrays
        last = np.empty((b, d, n), np.float32)
        _fwd(u_, delta_, A_, Bt, Ct, D_, np.zeros(d, np.float32), False, d // g, y, hs, save, last)
        if save:
            ctx.arrays, ctx.hs, ctx.g = arrays, hs, g
        last = torch.from_numpy(last)
        ctx.mark_non_differentiable(last)  # as in mamba-ssm: no gradient through the last state
        return torch.from_numpy(y), last

    @staticmethod
    def backward(ctx, gy, _glast):
        u, delta, A, Bt, Ct, D = ctx.arrays
        b, d, length = u.shape
        n, g = A.shape[1], ctx.g
        _threads()
        gu = np.empty_like(u)
        gdelta = np.empty_like(delta)
        gA = np.empty((b, d, n), np.float32)
        gB = np.empty((b, d, length, n), np.float32)
        gC = np.empty((b, d, length, n), np.float32)
        gD = np.empty((b, d), np.float32)
        _bwd(u, delta, A, Bt, Ct, D, d // g, ctx.hs, _np(gy), gu, gdelta, gA, gB, gC, gD)
        # the saved arrays stay with ctx (freed with the graph): a retained graph is walked again
        # (Mender's repair takes a gradient, then back-propagates its loss through the same graph)
        to = torch.from_numpy
        gB_ = to(gB).view(b, g, d // g, length, n).sum(2).transpose(2, 3)
        gC_ = to(gC).view(b, g, d // g, length, n).sum(2).transpose(2, 3)
        return to(gu), to(gdelta), to(gA).sum(0), gB_, gC_, to(gD).sum(0)


def selective_scan_numba(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 inputs with Δ already biased and soft-plussed; B, C (b, G, N, L) or (b, N, L). Differentiable
    in y; returns (y, last state)."""
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    if D is None:
        D = torch.zeros(u.shape[1], dtype=torch.float32)
    return _NumbaScan.apply(u.float(), delta.float(), A.float(), B.float(), C.float(), D.float())

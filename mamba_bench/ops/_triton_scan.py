"""Triton kernels of the selective scan (forward and backward) and of VMamba's SS2D (forward).

Nothing to build: Triton compiles each kernel for the GPU at its first call (and caches it on disk).
Under ``TRITON_INTERPRET=1`` (set before this module is imported) the same kernels run on CPU tensors
in Triton's interpreter, which is how CI, without a GPU, tests them against ``selective_scan_ref``.

Selective scan, (batch, dim, L) layout as mamba-ssm's. One program owns one batch item and a block
of ``BLOCK_D`` channels inside one group (so that the group sums of dB, dC are per-program partials,
added up afterwards without atomics: deterministic), and walks the sequence in chunks of ``BLOCK_T``
steps. Within a chunk the tile is (channels, states, steps); the linear recurrence
h_t = a_t h_{t-1} + b_t is a ``tl.associative_scan`` over the steps with the pair combine
(a1, b1)·(a2, b2) = (a1 a2, b1 a2 + b2), and the state carried in from the previous chunk enters as
h_t = (Π_{s≤t} a_s) h_carry + scan(b)_t. Everything is fp32 in registers whatever the input dtype.
The forward pass saves only the state at each chunk's start (b·dim·⌈L/BLOCK_T⌉·N floats) when a
gradient is needed; the backward pass walks the chunks in reverse, recomputes the chunk's states
from its saved start, and runs the adjoint recurrence g_t = C_t·∂y_t + a_{t+1} g_{t+1} as a forward scan
over the chunk's steps loaded in reversed order (then flipped once). a_t h_{t-1} is taken as
h_t − Δ_t B_t u_t (what mamba-ssm's backward kernel does).

SS2D (VMamba), (b, H, W, d) channels-last map: one program per (batch item, block of channels)
walks the four directions in turn (row-major, column-major, and both reversed) by computing each
step's map position, so no cross-scanned copy, flip or transpose is materialised; Δ = softplus(
dt_proj(x_proj(x)) + bias) is formed in the kernel from every direction's x_proj (one GEMM before
the kernel), and each direction's output is added at the position it came from (the cross-merge).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    """log(1 + e^x) as torch's (x itself above 20): max(x, 0) + log1p(e^-|x|), log1p(t) = log(w)·t/(w−1)
    with w = 1 + t (exact where 1 + t rounds to 1)."""
    t = tl.exp(-tl.abs(x))
    w = 1.0 + t
    lp = tl.where(w == 1.0, t, tl.log(w) * t / tl.where(w == 1.0, 1.0, w - 1.0))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _delta_tile(dt_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ for a (channels, steps) tile: raw Δ (+ bias) (→ softplus), 0 where masked; and the
    pre-softplus value (for the backward)."""
    raw = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _scan_fwd(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, chunk_ptr,
              dim, L, N, group_size, nblk, s_bb, s_bg, s_cb, s_cg,
              VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    g = pid // nblk
    oc = (pid % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = oc < group_size
    c = g * group_size + oc
    on = tl.arange(0, BLOCK_N)
    nmask = on < N
    cn = cmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if not VAR_B:
        Bc = tl.load(B_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    if not VAR_C:
        Cc = tl.load(C_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    row = (bi * dim + c) * L
    ot = tl.arange(0, BLOCK_T)
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    nchunks = tl.cdiv(L, BLOCK_T)
    for ci in range(0, nchunks):
        if SAVE:  # the state entering this chunk, for the backward pass
            tl.store(chunk_ptr + ((bi * dim + c[:, None]) * nchunks + ci) * N + on[None, :], h, mask=cn)
        t = ci * BLOCK_T + ot
        tmask = t < L
        m2 = cmask[:, None] & tmask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        dt, _ = _delta_tile(dt_ptr, offs, m2, bias, HAS_BIAS, SOFTPLUS)
        a = tl.exp(dt[:, None, :] * A[:, :, None])                          # (D, N, T); 1 where masked
        if VAR_B:
            Bt = tl.load(B_ptr + bi * s_bb + g * s_bg + on[:, None] * L + t[None, :],
                         mask=nmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
            b = (dt * u)[:, None, :] * Bt[None, :, :]
        else:
            b = (dt * u)[:, None, :] * Bc[:, :, None]
        pa, hs = tl.associative_scan((a, b), 2, _combine)
        hs = pa * h[:, :, None] + hs
        if VAR_C:
            Ct = tl.load(C_ptr + bi * s_cb + g * s_cg + on[:, None] * L + t[None, :],
                         mask=nmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
        else:
            y = tl.sum(hs * Cc[:, :, None], axis=1)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            y = y * zv * _sigmoid(zv)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m2)
        # masked steps have a = 1, b = 0: the chunk's last column is the state after its last valid step
        h = tl.sum(tl.where(ot[None, None, :] == BLOCK_T - 1, hs, 0.0), axis=2)
    tl.store(last_ptr + (bi * dim + c[:, None]) * N + on[None, :], h, mask=cn)


@triton.jit
def _scan_bwd(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, chunk_ptr,
              du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dz_ptr,
              dim, L, N, group_size, nblk, s_bb, s_bg, s_cb, s_cg,
              VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """Gradients; per-program partials: dA, constant dB/dC (b, dim, N), dD, dbias (b, dim); varying
    dB/dC (b, G·nblk, N, L) (each program's sum over its channels)."""
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    g = pid // nblk
    oc = (pid % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = oc < group_size
    c = g * group_size + oc
    on = tl.arange(0, BLOCK_N)
    nmask = on < N
    cn = cmask[:, None] & nmask[None, :]
    A = tl.load(A_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if not VAR_B:
        Bc = tl.load(B_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    if not VAR_C:
        Cc = tl.load(C_ptr + c[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
    row = (bi * dim + c) * L
    ot = tl.arange(0, BLOCK_T)
    gcarry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)   # ∂L/∂h at the first step of the chunk after this one
    dA = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dBc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dCc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD = tl.zeros([BLOCK_D], tl.float32)
    dbias = tl.zeros([BLOCK_D], tl.float32)
    nchunks = tl.cdiv(L, BLOCK_T)
    for cr in range(0, nchunks):
        ci = nchunks - 1 - cr
        t = ci * BLOCK_T + ot
        tmask = t < L
        m2 = cmask[:, None] & tmask[None, :]
        offs = row[:, None] + t[None, :]
        nt = nmask[:, None] & tmask[None, :]
        u = tl.load(u_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        dt, raw = _delta_tile(dt_ptr, offs, m2, bias, HAS_BIAS, SOFTPLUS)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        if VAR_B:
            Bt = tl.load(B_ptr + bi * s_bb + g * s_bg + on[:, None] * L + t[None, :], mask=nt,
                         other=0.0).to(tl.float32)
            Bx = Bt[None, :, :]
        else:
            Bx = Bc[:, :, None]
        b = (dt * u)[:, None, :] * Bx
        h0 = tl.load(chunk_ptr + ((bi * dim + c[:, None]) * nchunks + ci) * N + on[None, :], mask=cn, other=0.0)
        pa, hs = tl.associative_scan((a, b), 2, _combine)
        hs = pa * h0[:, :, None] + hs                                        # h_t, (D, N, T)
        if VAR_C:
            Ct = tl.load(C_ptr + bi * s_cb + g * s_cg + on[:, None] * L + t[None, :], mask=nt,
                         other=0.0).to(tl.float32)
            Cx = Ct[None, :, :]
        else:
            Cx = Cc[:, :, None]
        gy = tl.load(gout_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:  # out = (y + D u)·silu(z)
            zv = tl.load(z_ptr + offs, mask=m2, other=0.0).to(tl.float32)
            sz = _sigmoid(zv)
            yfull = tl.sum(hs * Cx, axis=1) + Dv[:, None] * u
            tl.store(dz_ptr + offs, gy * yfull * sz * (1.0 + zv * (1.0 - sz)), mask=m2)
            gy = gy * zv * sz
        # The adjoint recurrence g_t = C_t·∂y_t + a_{t+1} g_{t+1} runs backwards in time: its inputs are
        # loaded in reversed order (column j is step end − j), scanned forwards, and the result flipped
        # once (tl.associative_scan's reverse=True is avoided: Triton issue #4362, wrong results with
        # non-commutative combines on GPUs).
        tr = ci * BLOCK_T + (BLOCK_T - 1 - ot)
        mr = cmask[:, None] & (tr < L)[None, :]
        offr = row[:, None] + tr[None, :]
        gyr = tl.load(gout_ptr + offr, mask=mr, other=0.0).to(tl.float32)
        if HAS_Z:
            zr = tl.load(z_ptr + offr, mask=mr, other=0.0).to(tl.float32)
            gyr = gyr * zr * _sigmoid(zr)
        if VAR_C:
            Cr = tl.load(C_ptr + bi * s_cb + g * s_cg + on[:, None] * L + tr[None, :],
                         mask=nmask[:, None] & (tr < L)[None, :], other=0.0).to(tl.float32)
            cgr = Cr[None, :, :] * gyr[:, None, :]
        else:
            cgr = Cc[:, :, None] * gyr[:, None, :]
        t1 = tr + 1  # a_{t+1}: Δ of the next step, 1 past the end
        m1 = cmask[:, None] & (t1 < L)[None, :]
        dt1, _ = _delta_tile(dt_ptr, row[:, None] + t1[None, :], m1, bias, HAS_BIAS, SOFTPLUS)
        a1 = tl.exp(dt1[:, None, :] * A[:, :, None])
        ps, gsr = tl.associative_scan((a1, cgr), 2, _combine)
        gsr = ps * gcarry[:, :, None] + gsr                                 # ∂L/∂h, reversed order
        gcarry = tl.sum(tl.where(ot[None, None, :] == BLOCK_T - 1, gsr, 0.0), axis=2)  # at the chunk's start
        gs = tl.flip(gsr, 2)                                                # ∂L/∂h_t
        ax = hs - b                                                          # a_t h_{t-1}
        gdt = gs * dt[:, None, :]
        du = tl.sum(gdt * Bx, axis=1) + Dv[:, None] * gy
        ddt = tl.sum(gs * (u[:, None, :] * Bx + A[:, :, None] * ax), axis=1)
        dA += tl.sum(gdt * ax, axis=2)
        gbu = gdt * u[:, None, :]                                            # ∂L/∂B_t per channel
        if VAR_B:
            tl.store(dB_ptr + ((bi * (dim // group_size) + g) * nblk + pid % nblk) * N * L + on[:, None] * L
                     + t[None, :], tl.sum(gbu, axis=0), mask=nt)
        else:
            dBc += tl.sum(gbu, axis=2)
        ghc = hs * gy[:, None, :]
        if VAR_C:
            tl.store(dC_ptr + ((bi * (dim // group_size) + g) * nblk + pid % nblk) * N * L + on[:, None] * L
                     + t[None, :], tl.sum(ghc, axis=0), mask=nt)
        else:
            dCc += tl.sum(ghc, axis=2)
        dD += tl.sum(tl.where(m2, gy * u, 0.0), axis=1)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(raw)
        ddt = tl.where(m2, ddt, 0.0)
        dbias += tl.sum(ddt, axis=1)
        tl.store(du_ptr + offs, du, mask=m2)
        tl.store(ddt_ptr + offs, ddt, mask=m2)
    part = (bi * dim + c[:, None]) * N + on[None, :]
    tl.store(dA_ptr + part, dA, mask=cn)
    if not VAR_B:
        tl.store(dB_ptr + part, dBc, mask=cn)
    if not VAR_C:
        tl.store(dC_ptr + part, dCc, mask=cn)
    tl.store(dD_ptr + bi * dim + c, dD, mask=cmask)
    tl.store(dbias_ptr + bi * dim + c, dbias, mask=cmask)


def interpreted() -> bool:
    """Whether these kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_scan_fwd).__name__ == "InterpretedFunction"


def scan_blocks(n: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_T): a (channels, states, steps) tile of 2048 fp32 values forward,
    1024 backward (which keeps ~10 such tiles live); BLOCK_T is the same for both (the backward
    starts each chunk from the state the forward saved there)."""
    bn = triton.next_power_of_2(max(n, 1))
    bt = 64 if bn <= 2 else 32 if bn <= 8 else 16
    elems = 1024 if backward else 2048
    return max(1, min(64, elems // (bn * bt))), bn, bt


def _layout(M: torch.Tensor, b: int):
    """(tensor, varying?, groups, batch stride, group stride) for a B or C argument."""
    if M.dim() == 2:
        return M.contiguous(), False, 1, 0, 0
    M4 = (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()
    return M4, True, M4.shape[1], M4.stride(0), M4.stride(1)


def _on(t: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_size(*ts: torch.Tensor) -> None:
    for t in ts:
        if t is not None and t.numel() >= 2**31:  # the kernels index with int32
            raise ValueError(f"the triton kernels take tensors of fewer than 2^31 elements, got {tuple(t.shape)}: "
                             "split the batch")


def _group_blocks(dim: int, groups: int, block_d: int) -> tuple[int, int]:
    group_size = dim // groups
    block_d = min(block_d, triton.next_power_of_2(group_size))
    return group_size, block_d


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, blocks):
        b, dim, length = u.shape
        n = A.shape[1]
        u_, dt_ = u.contiguous(), delta.contiguous()
        z_ = z.contiguous() if z is not None else None
        B4, var_b, gb, s_bb, s_bg = _layout(B, b)
        C4, var_c, gc, s_cb, s_cg = _layout(C, b)
        groups = gb if var_b else gc if var_c else 1
        block_d, block_n, block_t = blocks or scan_blocks(n)
        group_size, block_d = _group_blocks(dim, groups, block_d)
        nblk = triton.cdiv(group_size, block_d)
        save = any(ctx.needs_input_grad)
        nchunks = triton.cdiv(length, block_t)
        out = torch.empty_like(u_)
        last = torch.empty(b, dim, n, device=u.device, dtype=torch.float32)
        chunks = torch.empty(b, dim, nchunks, n, device=u.device, dtype=torch.float32) if save else last
        A_ = A.contiguous().float()
        dummy = last
        _check_size(u_, B4, C4, chunks)
        with _on(u_):
            _scan_fwd[(groups * nblk, b)](
                u_, dt_, A_, B4, C4, D.contiguous() if D is not None else dummy, z_ if z_ is not None else dummy,
                delta_bias.contiguous() if delta_bias is not None else dummy, out, last, chunks,
                dim, length, n, group_size, nblk, s_bb, s_bg, s_cb, s_cg,
                VAR_B=var_b, VAR_C=var_c, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), SAVE=save, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t)
        ctx.mark_non_differentiable(last)  # as in mamba-ssm: no gradient through the last state
        if save:
            ctx.save_for_backward(u_, dt_, A_, B4, C4, D, z_, delta_bias, chunks)
            ctx.shapes = (B.dim(), C.dim(), var_b, var_c, groups, s_bb, s_bg, s_cb, s_cg)
            ctx.delta_softplus = bool(delta_softplus)
            ctx.blocks = blocks
            ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype)
        return out, last

    @staticmethod
    def backward(ctx, gout, _glast):
        u, dt, A, B4, C4, D, z, delta_bias, chunks = ctx.saved_tensors
        bdim, cdim, var_b, var_c, groups, s_bb, s_bg, s_cb, s_cg = ctx.shapes
        b, dim, length = u.shape
        n = A.shape[1]
        block_d, block_n, block_t = ctx.blocks or scan_blocks(n, backward=True)  # BLOCK_T: the forward's
        group_size, block_d = _group_blocks(dim, groups, block_d)
        nblk = triton.cdiv(group_size, block_d)
        f32 = dict(device=u.device, dtype=torch.float32)
        du = torch.empty(b, dim, length, **f32)
        ddt = torch.empty(b, dim, length, **f32)
        dA = torch.empty(b, dim, n, **f32)
        dB = torch.empty(b, groups * nblk, n, length, **f32) if var_b else torch.empty(b, dim, n, **f32)
        dC = torch.empty(b, groups * nblk, n, length, **f32) if var_c else torch.empty(b, dim, n, **f32)
        dD = torch.empty(b, dim, **f32)
        dbias = torch.empty(b, dim, **f32)
        dz = torch.empty(b, dim, length, **f32) if z is not None else dA
        dummy = dA
        with _on(u):
            _scan_bwd[(groups * nblk, b)](
                u, dt, A, B4, C4, D.contiguous() if D is not None else dummy, z if z is not None else dummy,
                delta_bias.contiguous() if delta_bias is not None else dummy, gout.contiguous(), chunks,
                du, ddt, dA, dB, dC, dD, dbias, dz,
                dim, length, n, group_size, nblk, s_bb, s_bg, s_cb, s_cg,
                VAR_B=var_b, VAR_C=var_c, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=ctx.delta_softplus, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t)
        u_t, dt_t, a_t, b_t, c_t = ctx.dtypes

        def fold(part, var, ndim, dtype):  # per-program partials → the argument's shape
            if not var:
                return part.sum(0).to(dtype)
            out = part.view(b, groups, nblk, n, length).sum(2)
            return (out[:, 0] if ndim == 3 else out).to(dtype)

        return (du.to(u_t), ddt.to(dt_t), dA.sum(0).to(a_t), fold(dB, var_b, bdim, b_t), fold(dC, var_c, cdim, c_t),
                dD.sum(0).to(D.dtype) if D is not None else None, dz.to(z.dtype) if z is not None else None,
                dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, blocks: tuple[int, int, int] | None = None):
    """mamba-ssm's ``selective_scan_fn`` on Triton. ``blocks``: (BLOCK_D, BLOCK_N, BLOCK_T), for tests
    (the result does not depend on them beyond rounding)."""
    out, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, blocks)
    return (out, last) if return_last_state else out


# -- SS2D ---------------------------------------------------------------------------------------------
@triton.jit
def _ss2d_fwd(x_ptr, xdbl_ptr, wdt_ptr, bias_ptr, A_ptr, D_ptr, y_ptr, H, W, dim, R, N,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """x (b, H, W, d) any float dtype; xdbl (b, H, W, 4, R + 2N) every direction's x_proj; wdt (4, d, R);
    bias, D (4·d,); A (4·d, N); y (b, H, W, d) fp32, the four directions' outputs summed."""
    j = tl.program_id(0)
    bi = tl.program_id(1)
    c = j * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = c < dim
    on = tl.arange(0, BLOCK_N)
    nmask = on < N
    cn = cmask[:, None] & nmask[None, :]
    ot = tl.arange(0, BLOCK_T)
    L = H * W
    nc = R + 2 * N
    nchunks = tl.cdiv(L, BLOCK_T)
    for k in tl.static_range(4):
        kc = k * dim + c
        A = tl.load(A_ptr + kc[:, None] * N + on[None, :], mask=cn, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + kc, mask=cmask, other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + kc, mask=cmask, other=0.0).to(tl.float32)
        h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
        for ci in range(0, nchunks):
            t = ci * BLOCK_T + ot
            tmask = t < L
            m2 = cmask[:, None] & tmask[None, :]
            q = t
            if k >= 2:  # directions 2, 3: the reverses of 0, 1
                q = L - 1 - t
            if k % 2 == 1:  # column-major: step q is row q % H of column q // H
                q = (q % H) * W + q // H
            p = bi * L + tl.where(tmask, q, 0)                                  # map positions of the steps
            x = tl.load(x_ptr + p[None, :] * dim + c[:, None], mask=m2, other=0.0).to(tl.float32)
            xd = xdbl_ptr + (p * 4 + k) * nc
            dt = tl.zeros([BLOCK_D, BLOCK_T], tl.float32) + bias[:, None]
            for r in range(0, R):
                w = tl.load(wdt_ptr + kc * R + r, mask=cmask, other=0.0).to(tl.float32)
                dt += w[:, None] * tl.load(xd + r, mask=tmask, other=0.0).to(tl.float32)[None, :]
            dt = tl.where(m2, _softplus(dt), 0.0)
            nt = nmask[:, None] & tmask[None, :]
            Bt = tl.load(xd[None, :] + R + on[:, None], mask=nt, other=0.0).to(tl.float32)
            Ct = tl.load(xd[None, :] + R + N + on[:, None], mask=nt, other=0.0).to(tl.float32)
            a = tl.exp(dt[:, None, :] * A[:, :, None])
            b = (dt * x)[:, None, :] * Bt[None, :, :]
            pa, hs = tl.associative_scan((a, b), 2, _combine)
            hs = pa * h[:, :, None] + hs
            y = tl.sum(hs * Ct[None, :, :], axis=1) + Dv[:, None] * x
            yo = y_ptr + p[None, :] * dim + c[:, None]
            if k > 0:  # the cross-merge: add to what the earlier directions left at these positions
                y += tl.load(yo, mask=m2, other=0.0)
            tl.store(yo, y, mask=m2)
            h = tl.sum(tl.where(ot[None, None, :] == BLOCK_T - 1, hs, 0.0), axis=2)
        tl.debug_barrier()  # this direction's stores are seen by the next direction's loads


def ss2d_blocks(n: int) -> tuple[int, int, int]:
    bn = triton.next_power_of_2(max(n, 1))
    bt = 32 if bn <= 2 else 16
    return max(1, min(64, 2048 // (bn * bt))), bn, bt


def ss2d_scan_triton(x: torch.Tensor, xdbl: torch.Tensor, dt_projs_weight: torch.Tensor, dt_projs_bias: torch.Tensor,
                     A: torch.Tensor, D: torch.Tensor, blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """SS2D's four scans on a channels-last map (inference): x (b, H, W, d), xdbl (b, H, W, 4, r + 2N)
    = every direction's x_proj at every position, dt_projs_weight (4, d, r), dt_projs_bias (4, d) or (4·d,),
    A (4·d, N), D (4·d,). Returns y (b, H, W, d) fp32, the merged output."""
    b, hh, ww, d = x.shape
    r, n = dt_projs_weight.shape[2], A.shape[1]
    block_d, block_n, block_t = blocks or ss2d_blocks(n)
    block_d = min(block_d, triton.next_power_of_2(d))
    x = x.contiguous()
    y = torch.empty(b, hh, ww, d, device=x.device, dtype=torch.float32)
    _check_size(x, xdbl)
    with _on(x):
        _ss2d_fwd[(triton.cdiv(d, block_d), b)](
            x, xdbl.contiguous(), dt_projs_weight.contiguous(), dt_projs_bias.reshape(-1).contiguous(),
            A.contiguous().float(), D.reshape(-1).contiguous(), y, hh, ww, d, r, n,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t)
    return y

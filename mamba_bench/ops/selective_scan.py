"""The selective scan with mamba-ssm's signature, several backends, and a plain reference.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t ,   y_t = ⟨C_t, h_t⟩ + D u_t

Shapes: u, delta (batch, dim, L); A (dim, N); B, C (batch, N, L) or (batch, groups, N, L) with
channel c using group ``c // (dim // groups)``; D, delta_bias (dim,). Computation is in fp32 and
the output has u's dtype, as in mamba-ssm.

Backends: ``ref`` (the sequential loop that materialises exp(ΔA) and ΔBu for every step, kept as
the test oracle), ``torch`` (an exact time-blocked loop with preallocated buffers: the same
arithmetic, a fraction of the memory; differentiable through autograd), ``cpu`` (fused numba
kernels, forward and backward, the CPU default), ``cuda`` (mamba-ssm's
kernel, when it is installed and the tensors are on a GPU). ``auto`` picks the fastest available
for the tensors' device. Every backend only ever exponentiates Δ·A ≤ 0, so nothing overflows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 32  # steps per block in the torch backend: bounds the materialised exp(ΔA) to BLOCK steps


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    dim = u.shape[1]
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = _per_channel(B.float(), dim), _per_channel(C.float(), dim)
    return u, delta, A.float(), B, C, None if D is None else D.float()


def _per_channel(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, N, L) or (b, G, N, L) → (b, dim, N, L) view/copy with each channel's group."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], dim, *M.shape[1:])
    b, g, n, length = M.shape
    if dim % g:
        raise ValueError(f"dim {dim} is not divisible by {g} groups")
    return M.unsqueeze(2).expand(b, g, dim // g, n, length).reshape(b, dim, n, length)


def selective_scan_ref(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The plain sequential loop (test oracle): materialises exp(ΔA) and ΔBu for all L steps."""
    dtype = u.dtype
    u, delta, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[None, :, None]
    return y.to(dtype)


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, block: int = BLOCK):
    """Exact time-blocked scan: exp(ΔA), ΔBu and the states live only for ``block`` steps at a time."""
    dtype = u.dtype
    u, delta, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    b, d, length = u.shape
    n = A.shape[1]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    h = u.new_zeros(b, d, n)
    y = u.new_empty(b, d, length)
    du = delta * u
    for s in range(0, length, block):
        e = min(s + block, length)
        dA = torch.exp(delta[:, :, s:e, None] * A[None, :, None, :])          # (b, d, T, n)
        dBu = du[:, :, s:e, None] * B[:, :, :, s:e].transpose(2, 3)          # (b, d, T, n)
        if grad:  # out-of-place, so autograd can keep what it needs
            hs = []
            for t in range(e - s):
                h = torch.addcmul(dBu[:, :, t], h, dA[:, :, t])
                hs.append(h)
            states = torch.stack(hs, dim=2)
            y = y.clone() if s == 0 else y
            y = torch.cat([y[:, :, :s], (states * C[:, :, :, s:e].transpose(2, 3)).sum(-1), y[:, :, e:]], 2)
        else:
            states = dBu  # reuse the buffer: state t overwrites ΔBu_t once it has been used
            for t in range(e - s):
                torch.addcmul(dBu[:, :, t], h, dA[:, :, t], out=states[:, :, t])
                h = states[:, :, t]
            y[:, :, s:e] = (states * C[:, :, :, s:e].transpose(2, 3)).sum(-1)
            h = h.clone()
    if D is not None:
        y = y + u * D[None, :, None]
    return y.to(dtype)


def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed without a usable CUDA build
        return None
    return selective_scan_fn


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # numba missing or broken on this platform: the torch backend remains
        return False
    return True


def selective_scan_cpu(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The fused numba kernels (forward and backward) for CPU tensors."""
    if u.device.type != "cpu":
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
    from mamba_bench.ops._numba_scan import selective_scan_numba, selective_scan_numba_infer

    dtype = u.dtype
    dim = u.shape[1]
    if B.dim() == 4 and dim % B.shape[1]:
        raise ValueError(f"dim {dim} is not divisible by {B.shape[1]} groups")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias))
    if not needs_grad:
        return selective_scan_numba_infer(u, delta, A, B, C, D, delta_bias, delta_softplus).to(dtype)
    u32, delta32 = u.float(), delta.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    return selective_scan_numba(u32, delta32, A, B, C, D).to(dtype)


def fused_ss2d_available(device: torch.device | str, backend: str) -> bool:
    """Whether SS2D inference can use the fused CPU kernel (cross-scan, four scans, cross-merge)."""
    device = torch.device(device)
    if device.type != "cpu" or backend not in ("auto", "cpu"):
        return False
    return numba_available()


def ss2d_scan_cpu(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D,
                  block_width: int | None = None) -> torch.Tensor:
    """SS2D's projections and four selective scans of a channels-last map x (b, H, W, d), CPU, no autograd.

    Equal to ``cross_merge(selective_scan(cross_scan(x), ...))`` with VMamba's per-direction
    x_proj (4, r + 2N, d), dt_proj (4, d, r), Δ-bias and softplus, A (4·d, N) ≤ 0 (VMamba's −exp(A_logs)), D (4·d,), in
    (b, H, W, d) layout: one GEMM makes every direction's x_proj at every position, the kernel
    applies dt_proj, the scans and the merge without materialising Δ, flips or transposes.
    ``block_width``: channels per kernel job (tests; the default is the fastest).
    """
    from mamba_bench.ops._numba_scan import ss2d_scan_numba

    b, h, w, d = x.shape
    k, c, _ = x_proj_weight.shape
    x = x.float().contiguous()
    xdbl = F.linear(x, x_proj_weight.float().reshape(k * c, d)).view(b, h, w, k, c)
    return ss2d_scan_numba(x, xdbl, dt_projs_weight, dt_projs_bias, A, D, block_width)  # fp32 contiguous there


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable for tensors on ``device``, fastest first."""
    device = torch.device(device)
    out = ["torch", "ref"]
    if device.type == "cpu" and numba_available():
        out.insert(0, "cpu")
    if device.type == "cuda" and _mamba_ssm_fn() is not None:
        out.insert(0, "cuda")
    return out


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend: str = "auto"):
    """One entry point for every backend (see the module docstring)."""
    if backend == "auto":
        backend = available_backends(u.device)[0]
    if backend == "cuda":
        fn = _mamba_ssm_fn()
        if fn is None or not u.is_cuda:
            raise RuntimeError("the 'cuda' selective-scan backend needs mamba-ssm and CUDA tensors")
        return fn(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    if backend == "cpu":
        return selective_scan_cpu(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)
    raise ValueError(f"unknown selective-scan backend {backend!r}; valid: auto, cuda, cpu, torch, ref")

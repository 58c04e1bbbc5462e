"""The selective scan with mamba-ssm's signature, several backends, and a plain reference.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t ,   y_t = ⟨C_t, h_t⟩ + D u_t ,   out_t = y_t · silu(z_t)

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False)`` is mamba-ssm's ``selective_scan_fn`` (mamba_ssm/ops/selective_scan_interface.py,
the real-valued case). Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C each either constant
(dim, N), or varying in time (batch, N, L) or (batch, groups, N, L), channel c using group
``c // (dim // groups)`` (B and C with the same number of groups when both vary); D, delta_bias (dim,).
Computation is in fp32 and the output has u's dtype, as in mamba-ssm. With ``return_last_state`` the
result is ``(out, last_state)``, last_state (batch, dim, N) fp32, the state after the last step; like
mamba-ssm's kernel, no gradient flows back through last_state (on every backend, so that a model's
gradients do not depend on the backend).

Backends: ``ref`` (the sequential loop that materialises exp(ΔA) and ΔBu for every step, kept as
the test oracle), ``torch`` (an exact time-blocked loop with preallocated buffers: the same
arithmetic, a fraction of the memory; differentiable through autograd), ``cpu`` (fused numba
kernels, forward and backward, the CPU default), ``triton`` (Triton kernels, forward and backward:
the CUDA default; Triton compiles them at first use, nothing to build; CPU tensors only under
Triton's interpreter, ``TRITON_INTERPRET=1``), ``cuda`` (mamba-ssm's kernel, when it is installed
and the tensors are on a GPU). ``auto`` picks the fastest available for the tensors' device. Every
backend only ever exponentiates Δ·A ≤ 0, so nothing overflows.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

BLOCK = 32  # steps per block in the torch backend: bounds the materialised exp(ΔA) to BLOCK steps
BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "ref")


def check_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """Shapes of mamba-ssm's signature (a mistake here would otherwise be a silently wrong number,
    e.g. a Δ-bias passed where ``z`` now sits)."""
    def bad(what: str):
        return ValueError(f"selective_scan: {what}")

    if u.dim() != 3:
        raise bad(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise bad(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise bad(f"A must be (dim={d}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise bad("complex A is not supported (the real-valued case only)")
    n = A.shape[1]
    groups = []
    for name, M in (("B", B), ("C", C)):
        if not isinstance(M, torch.Tensor):
            raise bad(f"{name} must be a tensor")
        if M.dim() == 2:
            if tuple(M.shape) != (d, n):
                raise bad(f"constant {name} must be (dim={d}, N={n}), got {tuple(M.shape)}")
            continue
        shape = (b, n, length) if M.dim() == 3 else (b, M.shape[1], n, length) if M.dim() == 4 else None
        if shape is None or tuple(M.shape) != shape:
            raise bad(f"{name} must be (dim, N), (batch, N, L) or (batch, groups, N, L) with batch {b}, N {n}, "
                      f"L {length}; got {tuple(M.shape)}")
        g = 1 if M.dim() == 3 else M.shape[1]
        if g < 1 or d % g:
            raise bad(f"dim {d} is not divisible by {g} groups of {name}")
        groups.append(g)
    if len(groups) == 2 and groups[0] != groups[1]:
        raise bad(f"B and C must have the same number of groups, got {groups[0]} and {groups[1]}")
    if z is not None and (not isinstance(z, torch.Tensor) or z.shape != u.shape):
        raise bad(f"z must be None or a tensor of u's shape {tuple(u.shape)}, got {getattr(z, 'shape', z)!r} "
                  "(mamba-ssm's order: u, delta, A, B, C, D, z, delta_bias, ...)")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and (not isinstance(v, torch.Tensor) or tuple(v.shape) != (d,)):
            raise bad(f"{name} must be None or a (dim={d},) tensor, got {getattr(v, 'shape', v)!r}")


def _delta(delta, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    return F.softplus(delta) if delta_softplus else delta


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    b, dim, length = u.shape
    B, C = _per_channel(B.float(), b, dim, length), _per_channel(C.float(), b, dim, length)
    return u.float(), _delta(delta, delta_bias, delta_softplus), A.float(), B, C, None if D is None else D.float()


def _per_channel(M: torch.Tensor, b: int, dim: int, length: int) -> torch.Tensor:
    """(dim, N), (b, N, L) or (b, G, N, L) → (b, dim, N, L), a view where it can be (each channel's group)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(b, dim, M.shape[1], length)
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], dim, *M.shape[1:])
    _, g, n, _ = M.shape
    if dim % g:
        raise ValueError(f"dim {dim} is not divisible by {g} groups")
    return M.unsqueeze(2).expand(b, g, dim // g, n, length).reshape(b, dim, n, length)


def _finish(y, u, D, z, dtype, last, return_last_state):
    """+ D·u, · silu(z), cast to u's dtype; (out, last_state) when asked for."""
    if D is not None:
        y = y + u * D[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, last.detach()) if return_last_state else y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The plain sequential loop (test oracle): materialises exp(ΔA) and ΔBu for all L steps."""
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    u, delta, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    return _finish(torch.stack(ys, dim=2), u, D, z, dtype, h, return_last_state)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, block: int = BLOCK):
    """Exact time-blocked scan: exp(ΔA), ΔBu and the states live only for ``block`` steps at a time."""
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
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
    return _finish(y, u, D, z, dtype, h, return_last_state)


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


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The fused numba kernels (forward and backward) for CPU tensors. A constant (dim, N) B or C is
    expanded to one group per channel (b·dim·N·L floats: a rare case, kept simple)."""
    if u.device.type != "cpu":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    from mamba_bench.ops._numba_scan import selective_scan_numba, selective_scan_numba_infer

    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    b, dim, length = u.shape
    if B.dim() == 2 or C.dim() == 2:
        B, C = _per_channel(B, b, dim, length), _per_channel(C, b, dim, length)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if not needs_grad:
        y, last = selective_scan_numba_infer(u, delta, A, B, C, D, delta_bias, delta_softplus)
    else:
        y, last = selective_scan_numba(u.float(), _delta(delta, delta_bias, delta_softplus), A, B, C, D)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, last) if return_last_state else y


def fused_ss2d_available(device: torch.device | str, backend: str) -> bool:
    """Whether SS2D inference can use the fused CPU kernel (cross-scan, four scans, cross-merge)."""
    device = torch.device(device)
    if device.type != "cpu" or backend not in ("auto", "cpu"):
        return False
    return numba_available()


def fused_ss2d_triton_available(device: torch.device | str, backend: str) -> bool:
    """Whether SS2D inference can use the fused Triton kernel: CUDA tensors with backend auto or
    triton; CPU tensors only with backend triton under Triton's interpreter (tests)."""
    device = torch.device(device)
    if backend not in ("auto", "triton"):
        return False
    if device.type == "cuda":
        return triton_available()
    return (backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
            and triton_available() and _triton_scan().interpreted())


def ss2d_scan_triton(x, xdbl, dt_projs_weight, dt_projs_bias, A, D, blocks=None) -> torch.Tensor:
    """The fused SS2D Triton kernel (no autograd): see ``_triton_scan.ss2d_scan_triton``."""
    scan = _triton_scan()
    _check_triton_device(x)
    return scan.ss2d_scan_triton(x, xdbl, dt_projs_weight, dt_projs_bias, A, D, blocks)


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


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports (it ships with torch's CUDA wheels on x86-64; not on aarch64 or macOS)."""
    try:
        import triton  # noqa: F401
    except Exception:  # missing or broken: the other backends remain
        return False
    return True


def _triton_scan():
    """The Triton module (imported on first use: importing Triton costs ~1 s and is needless on CPU)."""
    if not triton_available():
        raise RuntimeError("the 'triton' selective-scan backend needs Triton (it ships with torch's CUDA wheels "
                           "on x86-64 Linux; `pip install triton`); other backends: cuda, cpu, torch, ref")
    from mamba_bench.ops import _triton_scan

    return _triton_scan


def _check_triton_device(t: torch.Tensor) -> None:
    if t.is_cuda:
        return
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and _triton_scan().interpreted():
        return
    raise RuntimeError(f"the 'triton' selective-scan backend runs on CUDA tensors, got {t.device.type} ones "
                       "(CPU tensors only under Triton's interpreter: TRITON_INTERPRET=1 set before Triton is "
                       "imported; slow, for tests)")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable for tensors on ``device``, fastest first (``auto`` takes the first)."""
    device = torch.device(device)
    out = ["torch", "ref"]
    if device.type == "cpu" and numba_available():
        out.insert(0, "cpu")
    if device.type == "cuda":
        if _mamba_ssm_fn() is not None:
            out.insert(0, "cuda")
        if triton_available():
            out.insert(0, "triton")
    return out


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` → the fastest backend for ``device``; a named one is returned as it is (checked on use)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return available_backends(device)[0] if backend == "auto" else backend


def set_scan_backend(model: torch.nn.Module, backend: str) -> int:
    """Set the selective-scan backend of every module of ``model`` that has one (``scan_backend``:
    VMamba's SS2D, U-Mamba's Mamba); returns how many modules were set."""
    resolve_backend(backend, "cpu")  # the name is checked here, availability on the first call
    count = 0
    for m in model.modules():
        if hasattr(m, "scan_backend"):
            m.scan_backend = backend
            count += 1
    return count


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str = "auto"):
    """One entry point for every backend (see the module docstring): mamba-ssm's ``selective_scan_fn``."""
    backend = resolve_backend(backend, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "triton":
        check_inputs(u, delta, A, B, C, D, z, delta_bias)
        scan = _triton_scan()
        _check_triton_device(u)
        return scan.selective_scan_triton(*args)
    if backend == "cuda":
        fn = _mamba_ssm_fn()
        if fn is None or not u.is_cuda:
            raise RuntimeError("the 'cuda' selective-scan backend needs mamba-ssm and CUDA tensors")
        check_inputs(u, delta, A, B, C, D, z, delta_bias)
        out = fn(*args)
        return (out[0], out[1].detach()) if return_last_state else out
    if backend == "cpu":
        return selective_scan_cpu(*args)
    if backend == "torch":
        return selective_scan_torch(*args)
    return selective_scan_ref(*args)

"""LayerNorm over the last axis on CPU (numba), for VMamba's channels-last inference path.

torch's CPU LayerNorm is slow on short rows: VMamba's stem normalises 100 k rows of 48 channels
per batch of 8, and torch takes ~6x as long as this kernel there (2x on the blocks' 96-channel
rows; about the same from ~384 channels on; measured on warm data: on maps that come from memory
both are bound by its bandwidth). Rows are normalised in blocks in parallel; within a row the
mean, the variance (two passes, as torch) and the affine output are vectorised loops (the
reductions may be reassociated, so sums differ from torch's in the last bits).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from mamba_bench.ops._numba_scan import _threads

_FASTMATH = {"contract", "reassoc", "nsz"}  # reassoc: the row sums vectorise; no nnan/ninf: NaN and inf propagate
ROWS_PER_JOB = 64


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _layer_norm_rows(x, w, b, eps, y):  # pragma: no cover - compiled
    n, c = x.shape
    inv_c = np.float32(1.0) / np.float32(c)
    for job in prange((n + ROWS_PER_JOB - 1) // ROWS_PER_JOB):
        for i in range(job * ROWS_PER_JOB, min(n, (job + 1) * ROWS_PER_JOB)):
            xr = x[i]
            yr = y[i]
            s = np.float32(0.0)
            for j in range(c):
                s += xr[j]
            mu = s * inv_c
            v = np.float32(0.0)
            for j in range(c):
                dv = xr[j] - mu
                v += dv * dv
            rs = np.float32(1.0) / np.sqrt(v * inv_c + eps)
            for j in range(c):
                yr[j] = (xr[j] - mu) * rs * w[j] + b[j]


def layer_norm_last(x: torch.Tensor, norm: torch.nn.LayerNorm, out: torch.Tensor | None = None) -> torch.Tensor:
    """``norm(x)`` for a contiguous fp32 CPU tensor whose last axis is the channels, without autograd;
    written into ``out`` (same shape, contiguous; may be ``x`` itself) when given."""
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    y = torch.empty_like(x) if out is None else out
    _threads()
    _layer_norm_rows(rows.numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy(), np.float32(norm.eps),
                     y.view(-1, c).numpy())
    return y

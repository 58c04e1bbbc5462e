"""SS2D's four scan orders as batched tensor ops (no Python loop over directions).

Directions k = 0..3: row-major, column-major, and the reverses of both. ``cross_merge`` maps each
direction's outputs back to row-major positions and sums them, the adjoint of ``cross_scan``.
"""

from __future__ import annotations

import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 4, C, H*W)."""
    b, c, h, w = x.shape
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    fwd = torch.stack([rows, cols], dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, C, H*W) → (B, C, H*W), row-major."""
    b, k, c, length = y.shape
    y = y[:, 0:2] + y[:, 2:4].flip(-1)
    cols = y[:, 1].reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
    return y[:, 0] + cols

"""What the model families share: timm's pretrained-cfg fields for a registry entry, and drop-path."""

from __future__ import annotations

import torch
import torch.nn as nn

from mamba_bench.models.registry import ModelSpec


def pretrained_cfg(spec: ModelSpec, *, architecture: str, first_conv: str, classifier: str,
                   fixed_input_size: bool = False, **extra) -> dict:
    """timm's ``pretrained_cfg`` dict for a registry entry (preprocessing and weights from the spec)."""
    return {
        "url": spec.weights_url or "", "file": None, "hf_hub_id": None, "architecture": architecture, "tag": None,
        "num_classes": spec.num_classes, "input_size": (3, spec.input_size, spec.input_size),
        "fixed_input_size": fixed_input_size, "interpolation": spec.interpolation, "crop_pct": spec.crop_pct,
        "crop_mode": "center", "mean": tuple(spec.mean), "std": tuple(spec.std), "pool_size": None,
        "first_conv": first_conv, "classifier": classifier, "mamba_bench_name": spec.name, **extra,
    }


class DropPath(nn.Module):
    """Stochastic depth on the batch axis of a tensor of any rank (identity in eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

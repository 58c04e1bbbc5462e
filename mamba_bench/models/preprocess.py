"""Per-model input preparation, applied after any corruption (normalisation belongs to the model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamba_bench.models.registry import ModelSpec


def to_model_input(batch: torch.Tensor, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """uint8 NHWC → normalised float NCHW on ``device`` at the model's input size."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != spec.input_size or x.shape[-2] != spec.input_size:
        x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp_(0, 1)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x

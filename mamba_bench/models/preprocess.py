"""Per-model input preparation, applied after any corruption (normalisation belongs to the model)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mamba_bench.models.registry import ModelSpec


def image_for_spec(img, spec: ModelSpec):
    """A decoded RGB PIL image → the uint8 ``input_size`` squared array ``spec`` was trained on.

    ``resize_mode`` "stretch" (dg-train checkpoints): the whole image resized to a square with the
    spec's interpolation, exactly as in training; "crop": ImageNet eval preprocessing (shorter side
    to ``input_size / crop_pct``, bicubic, then a center crop).
    """
    from mamba_bench.data.images import eval_preprocess, stretch_resize

    size = spec.input_size
    if spec.resize_mode == "stretch":
        return stretch_resize(img, size, spec.interpolation)
    # floor, as timm's transforms_factory and the official Vim / MambaVision evaluation (round gave 229 for 0.98)
    return eval_preprocess(img, image_size=size, resize=max(size, math.floor(size / spec.crop_pct)))


@functools.lru_cache(maxsize=64)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made on the device once: a fresh host-to-device copy per batch makes the host wait for the device.
    Never inference tensors, so that a cached pair also serves inputs that need gradients."""
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))


def to_model_input(batch: torch.Tensor, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """uint8 NHWC → normalised float NCHW on ``device`` at the model's input size."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != spec.input_size or x.shape[-2] != spec.input_size:
        x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp_(0, 1)
    mean, std = _mean_std(tuple(spec.mean), tuple(spec.std), device)
    x = (x - mean) / std
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x

"""What the model families share: timm's pretrained-cfg fields and model API, and drop-path."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.models.registry import ModelSpec


def hub_fields(ref: str | None) -> dict:
    """A release on the Hugging Face Hub, ``ORG/REPO/FILE``, as the spec's hub fields (the hub's address is
    huggingface_hub's business: its cache, ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``)."""
    if not ref:
        return {}
    org, repo, file = ref.split("/", 2)
    return {"hf_hub_id": f"{org}/{repo}", "hf_hub_filename": file, "weights_file": file}


def pretrained_cfg(spec: ModelSpec, *, architecture: str, first_conv: str, classifier: str,
                   fixed_input_size: bool = False, **extra) -> dict:
    """timm's ``pretrained_cfg`` dict for a registry entry (preprocessing and weights from the spec)."""
    return {
        "url": spec.weights_url or "", "file": None, "hf_hub_id": spec.hf_hub_id,
        "hf_hub_filename": spec.hf_hub_filename, "architecture": architecture, "tag": None,
        "num_classes": spec.num_classes, "input_size": (3, spec.input_size, spec.input_size),
        "fixed_input_size": fixed_input_size, "interpolation": spec.interpolation, "crop_pct": spec.crop_pct,
        "crop_mode": "center", "mean": tuple(spec.mean), "std": tuple(spec.std), "pool_size": None,
        "first_conv": first_conv, "classifier": classifier, **extra,
    }


class TimmModelAPI:
    """timm's model API on a family's module: ``default_cfg``, ``forward_head(x, pre_logits)``,
    ``get_classifier()``, ``reset_classifier(n, global_pool)``. The family implements ``pool`` (its
    features → the head's input), names the ``global_pools`` it accepts, and keeps ``pretrained_cfg``,
    ``num_features``, ``num_classes``; its head is ``self.head`` unless ``get_classifier`` and
    ``set_classifier`` say otherwise."""

    global_pools: tuple[str, ...] = ("avg",)
    pretrained_cfg: dict

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.get_classifier()(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_classifier(self, head: nn.Module) -> None:
        self.head = head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none; the model then returns the pooled features)."""
        if global_pool is not None and global_pool not in self.global_pools:
            raise ValueError(f"{type(self).__name__} pools by {' or '.join(self.global_pools)} only, "
                             f"not {global_pool!r}")
        self.num_classes = num_classes
        self.set_classifier(nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())


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


def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, left: int,
                     right: int) -> torch.Tensor:
    """``F.conv1d(F.pad(x, (left, right)), weight, bias, groups=C)`` for a depthwise (C, 1, K) weight,
    as K shifted multiply-adds: the same arithmetic (to float rounding), differentiable, and on CPU
    1.5x (Vim-T's (8, 384, 197)) to 1.9x (Vim-T+'s 730 tokens) faster than torch's depthwise conv1d
    (best of 20 calls, one thread; equal on the nano sizes)."""
    length = x.shape[-1] + left + right - weight.shape[-1] + 1
    xp = F.pad(x, (left, right)) if left or right else x
    w = weight[:, 0, :].to(x.dtype)
    y = xp[..., :length] * w[:, 0, None]
    for k in range(1, weight.shape[-1]):
        y = torch.addcmul(y, xp[..., k:k + length], w[:, k, None])
    return y if bias is None else y + bias.to(x.dtype)[:, None]

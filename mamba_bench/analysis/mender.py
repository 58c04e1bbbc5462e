"""Vision Mamba Mender's state-correlation analysis (Hu et al., NeurIPS 2024) on our VMamba blocks.

The math only: gradients of the true-class probability with respect to a block's hidden states,
the external (spatial) and internal (channel) correlations built from them, the two scores and
the two repair losses. ``mamba_bench.analysis.explain`` runs it over data sets.

Mender's states and where we take them in an SS2D block (v05_noz VMamba has no gate ``z``):

========  ==============================================  ==============
Mender    meaning                                          captured name
========  ==============================================  ==============
``x``     in-projection output ``W_x · norm(h)``           ``in``
``c``     depthwise-conv output                            ``conv``
``s``     selective-scan output, 4 directions merged       ``ssm``
``y``     block output (after the MLP residual)            ``out``
========  ==============================================  ==============

Choices the paper leaves open, fixed here (and in the README):

* Grad-ESC ``e = R(E_D(g ⊙ s_n))`` with ``g`` the token-averaged gradient; ``e⁺``/``e⁻`` are the
  positive/negative parts, each divided by its own maximum so a map is a soft mask in [0, 1].
* Grad-ISC ``i = mean_n(∂p^k/∂x_n ⊙ x_n)``: the per-token correlation averaged over tokens, one
  value per channel; ``i⁺`` is its positive part divided by its maximum.
* Perturbation test: the image (normalised, so 0 is the mean colour) multiplied by the upsampled
  ``e⁺`` and by ``e⁻``; the ratio ``r = p^k(e⁺⊙i) / p^k(e⁻⊙i)`` is unbounded, so ECS uses
  ``r / (1 + r)`` (same order, in [0, 1], averages without one image dominating).
* Segmentation test: ``e⁺`` binarised to its top-|m| pixels (|m| = foreground pixel count), IoU
  with the mask m.
* ICS over the J samples of one class: simplicity ``E_D(mean_j i⁺_j)``, homogeneity
  ``E_D(mean_j i⁺_j / max_j i⁺_j)`` (⊕ read as the element-wise maximum, the union of soft sets),
  over channels some sample uses.
* Repair: the losses reward positive correlation *on* the object and on the class template, as
  shares of all correlation: ``1 − Σ(e⁺ ⊙ m)/Σ|e|`` and ``1 − Σ(i⁺ ⊙ î)/Σ|i|``. The seed text's
  ``E(e⁺ ⊙ m)`` / ``E(i⁺ ⊙ î)`` would, minimised, push correlation off the object, and the
  "outside" form ``E(e⁺ ⊙ (1 − m))`` is minimised by turning all correlation negative (measured:
  ECS fell). The gradient ``g`` is treated as a constant (no second-order backward through the scan).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.errors import MambaBenchError
from mamba_bench.models.vmamba import VSSBlock, capture_internals

#: Mender state → the name ``capture_internals`` records it under.
MENDER_STATES: dict[str, str] = {"x": "in", "c": "conv", "s": "ssm", "y": "out"}


def mamba_blocks(model: nn.Module, name: str = "model") -> list[str]:
    """Module names of the model's Mamba (SS2D) blocks, in forward order; a clear error if none."""
    blocks = [n for n, m in model.named_modules() if isinstance(m, VSSBlock)]
    if not blocks:
        raise MambaBenchError(f"{name} has no selective-scan (Mamba) blocks: Mender's state correlations need a "
                              "Mamba model (vmamba-*, start-m, start-x); Swin and ConvNeXt have no SSM states")
    return blocks


def check_states(states: Sequence[str]) -> list[str]:
    bad = [s for s in states if s not in MENDER_STATES]
    if bad:
        raise MambaBenchError(f"unknown state {bad[0]!r}; valid: {', '.join(MENDER_STATES)} (x in-projection, "
                              "c conv, s scan, y block output; v05_noz VMamba has no gate z)")
    if not states:
        raise MambaBenchError("no --states given")
    return list(dict.fromkeys(states))


@dataclass
class Correlations:
    """One batch's correlations: ``external[(block, state)]`` (B, H, W), ``internal[...]`` (B, D)."""

    probs: torch.Tensor
    external: dict[tuple[str, str], torch.Tensor]
    internal: dict[tuple[str, str], torch.Tensor]


def state_correlations(model: nn.Module, x: torch.Tensor, target: torch.Tensor, blocks: Sequence[str],
                       states: Sequence[str], *, keep_graph: bool = False) -> Correlations:
    """Grad-ESC and Grad-ISC of ``states`` in ``blocks`` for the class ``target`` of each image.

    One forward and one partial backward for the whole batch: every image's probability depends on
    that image only (LayerNorm, no batch statistics), so the gradient of their sum is each image's
    own gradient. ``keep_graph=True`` keeps the correlations differentiable with respect to the
    parameters through the states (the gradient factor stays a constant), for the repair losses.
    """
    names = {MENDER_STATES[s] for s in states}
    with torch.enable_grad(), capture_internals(model, names=names, detach=False) as rec:
        logits = model(x)
        probs = logits.float().softmax(1)
        keys = [(b, s) for b in blocks for s in states]
        tensors = [rec[b][MENDER_STATES[s]] for b, s in keys]
        grads = torch.autograd.grad(probs.gather(1, target[:, None]).sum(), tensors, retain_graph=keep_graph)
    external, internal = {}, {}
    for key, state, grad in zip(keys, tensors, grads, strict=True):
        s = state.float() if keep_graph else state.detach().float()
        g = grad.float()
        external[key] = (g.mean((2, 3))[:, :, None, None] * s).mean(1)
        internal[key] = (g * s).mean((2, 3))
    return Correlations(probs if keep_graph else probs.detach(), external, internal)


def _unit_max(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """t / max(t) over ``dims`` (t ≥ 0); all-zero stays zero. The max is a constant for gradients."""
    return t / t.detach().amax(dim=dims, keepdim=True).clamp_min(1e-12)


def positive_negative(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``e⁺``, ``e⁻`` of maps (B, H, W), each scaled to a maximum of 1."""
    return _unit_max(e.clamp_min(0), (1, 2)), _unit_max((-e).clamp_min(0), (1, 2))


def positive_channels(i: torch.Tensor) -> torch.Tensor:
    """``i⁺`` of channel correlations (B, D), scaled to a maximum of 1."""
    return _unit_max(i.clamp_min(0), (1,))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps → (B, 1, H, W), bilinear."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def perturbation_ratio(model: nn.Module, x: torch.Tensor, target: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``r = p^k(e⁺ ⊙ x) / p^k(e⁻ ⊙ x)`` per image (x normalised: masked pixels become the mean colour)."""
    pos, neg = positive_negative(e)
    size = (x.shape[-2], x.shape[-1])
    batch = torch.cat([x * upsample(pos, size), x * upsample(neg, size)])
    p = model(batch).float().softmax(1).gather(1, target.repeat(2)[:, None])[:, 0]
    n = x.shape[0]
    return p[:n] / p[n:].clamp_min(1e-12)


def segmentation_iou(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of ``e⁺`` (upsampled, binarised to its top-|m| pixels) with boolean masks (B, H, W).

    NaN for an image whose mask is empty (nothing to segment).
    """
    pos = upsample(positive_negative(e)[0], masks.shape[-2:])[:, 0].flatten(1)
    m = masks.flatten(1).bool()
    k = m.sum(1)
    order = pos.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    top = (rank < k[:, None]) & (pos > 0)
    inter = (top & m).sum(1).float()
    union = (top | m).sum(1).float()
    iou = inter / union.clamp_min(1)
    return torch.where(k > 0, iou, torch.full_like(iou, float("nan")))


def ecs(ratio: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """External correlation score per image: ``r/(1+r) × IoU``."""
    return ratio / (1 + ratio) * iou


def ics(i_pos: torch.Tensor) -> tuple[float, float]:
    """(simplicity, homogeneity) of the ``i⁺`` (J, D) of J samples of one class."""
    mean = i_pos.mean(0)
    union = i_pos.amax(0)
    used = union > 0
    simplicity = float(mean.mean())
    homogeneity = float((mean[used] / union[used]).mean()) if bool(used.any()) else float("nan")
    return simplicity, homogeneity


def external_loss(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``1 − Σ(e⁺ ⊙ m) / Σ|e|`` per image, averaged: the share of the map's correlation that is not
    positive correlation on the object (mask pooled to the map's size, as a foreground fraction).

    Scale-free and bounded in [0, 1]; a map with no correlation at all scores 1. (The literal
    ``e⁺ ⊙ (1 − m)`` can be driven to 0 by turning all correlation negative: measured on the
    digits, it lowered ECS and accuracy.)
    """
    m = F.adaptive_avg_pool2d(masks[:, None].float(), e.shape[-2:])[:, 0]
    on_object = (e.clamp_min(0) * m).sum((1, 2))
    return (1 - on_object / (e.abs().sum((1, 2)) + 1e-12)).mean()


def internal_loss(i: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """``1 − Σ(i⁺ ⊙ î) / Σ|i|`` per image, averaged, with each image's class template î (B, D) in
    [0, 1]: the share of channel correlation that is not positive on the class's usual channels."""
    on_template = (i.clamp_min(0) * templates).sum(1)
    return (1 - on_template / (i.abs().sum(1) + 1e-12)).mean()

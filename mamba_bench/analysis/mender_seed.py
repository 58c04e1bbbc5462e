"""Mender's ``seed`` definition: the project seed's literal reading of the paper (``--definition seed``).

What ``explain`` computed before the official definition existed, kept by name so that its figures
can be reproduced. Choices the paper leaves open, fixed here (and in the README):

* Objective: the true-class softmax **probability** p^k.
* Grad-ESC ``e = E_D(g ⊙ s_n)`` with ``g`` the token-averaged (signed) gradient; ``e⁺``/``e⁻``
  are the positive/negative parts, each divided by its own maximum so a map is a soft mask in [0, 1].
* Grad-ISC ``i = mean_n(∂p^k/∂x_n ⊙ x_n)``: the signed per-token correlation averaged over tokens;
  ``i⁺`` is its positive part divided by its maximum.
* Perturbation test: the image (normalised, so 0 is the mean colour) multiplied by the upsampled
  ``e⁺`` and by ``e⁻``; the ratio ``r = p^k(e⁺⊙x) / p^k(e⁻⊙x)`` is unbounded, so ECS uses
  ``r / (1 + r)`` (same order, in [0, 1], averages without one image dominating).
* Segmentation test: ``e⁺`` binarised to its top-|m| pixels (|m| = foreground pixel count), IoU
  with the mask m; NaN for an empty mask. ECS of a group: the mean of ``r/(1+r) × IoU``.
* ICS over the J samples of one class: simplicity ``E_D(mean_j i⁺_j)``, homogeneity
  ``E_D(mean_j i⁺_j / max_j i⁺_j)`` (⊕ read as the element-wise maximum, the union of soft sets)
  over channels some sample uses; ICS = simplicity × homogeneity (rises as channel use spreads).
* Repair, on every block of the last two stages: the losses reward positive correlation *on*
  the object and on the class template, as shares of all correlation: ``1 − Σ(e⁺ ⊙ m)/Σ|e|``
  and ``1 − Σ(i⁺ ⊙ î)/Σ|i|``, î the mean ``i⁺`` of the correctly classified among the first 50
  training images of the class. On signed maps the "outside" form ``E(e⁺ ⊙ (1 − m))`` is
  minimised by turning all correlation negative (measured: ECS fell).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mamba_bench.analysis.mender import Definition, block_stage, upsample


def objective(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The true-class probability."""
    return logits.softmax(1).gather(1, target[:, None])[:, 0]


def external_map(state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``E_D(mean_n(g) ⊙ s)``: signed, (B, h, w)."""
    return (grad.mean((2, 3), keepdim=True) * state).mean(1)


def internal_vector(state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``mean_n(g ⊙ s)``: signed, (B, D)."""
    return (grad * state).mean((2, 3))


def _unit_max(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """t / max(t) over ``dims`` (t ≥ 0); all-zero stays zero. The max is a constant for gradients."""
    return t / t.detach().amax(dim=dims, keepdim=True).clamp_min(1e-12)


def positive_negative(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``e⁺``, ``e⁻`` of maps (B, H, W), each scaled to a maximum of 1."""
    return _unit_max(e.clamp_min(0), (1, 2)), _unit_max((-e).clamp_min(0), (1, 2))


def positive_channels(i: torch.Tensor) -> torch.Tensor:
    """``i⁺`` of channel correlations (B, D), scaled to a maximum of 1."""
    return _unit_max(i.clamp_min(0), (1,))


def view_map(e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return upsample(positive_negative(e)[0], size)[:, 0].clamp(0, 1)


def perturbation_inputs(x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``e⁺ ⊙ x`` and ``e⁻ ⊙ x`` (soft masks)."""
    pos, neg = positive_negative(e)
    size = (x.shape[-2], x.shape[-1])
    return x * upsample(pos, size), x * upsample(neg, size)


def segmentation_iou(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of ``e⁺`` (upsampled, binarised to its top-|m| pixels) with boolean masks (B, H, W);
    NaN for an image whose mask is empty (nothing to segment)."""
    pos = upsample(positive_negative(e)[0], masks.shape[-2:])[:, 0].flatten(1)
    m = masks.flatten(1).bool()
    k = m.sum(1)
    order = pos.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    top = (rank < k[:, None]) & (pos > 0)
    iou = (top & m).sum(1).float() / (top | m).sum(1).float().clamp_min(1)
    return torch.where(k > 0, iou, torch.full_like(iou, float("nan")))


def perturbation_score(p_keep: np.ndarray, p_drop: np.ndarray) -> np.ndarray:
    """``r / (1 + r)`` per image, r = p(e⁺ ⊙ x) / p(e⁻ ⊙ x)."""
    r = np.asarray(p_keep, float) / np.maximum(np.asarray(p_drop, float), 1e-12)
    return r / (1 + r)


def sample_ecs(p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """``r/(1+r) × IoU`` per image."""
    return perturbation_score(p_keep, p_drop) * np.asarray(iou, float)


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, float)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else float("nan")


def ecs(p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> tuple[float, float, float]:
    """(mean of ``r/(1+r) × IoU``, mean ``r/(1+r)``, mean IoU) over the images (NaN IoUs skipped)."""
    return _nanmean(sample_ecs(p_keep, p_drop, iou)), _nanmean(perturbation_score(p_keep, p_drop)), _nanmean(iou)


def ics(internal: torch.Tensor) -> tuple[float, float, float]:
    """(simplicity × homogeneity, simplicity, homogeneity) of the ``i⁺`` of J samples (J, D)."""
    i_pos = positive_channels(internal)
    mean = i_pos.mean(0)
    union = i_pos.amax(0)
    used = union > 0
    simplicity = float(mean.mean())
    homogeneity = float((mean[used] / union[used]).mean()) if bool(used.any()) else float("nan")
    return simplicity * homogeneity, simplicity, homogeneity


def repair_blocks(blocks: list[str]) -> tuple[list[str], list[str]]:
    """Every block of the last two stages, for both losses."""
    deep = set(sorted({block_stage(b) for b in blocks})[-2:])
    chosen = [b for b in blocks if block_stage(b) in deep]
    return chosen, chosen


def pick_template_images(labels: np.ndarray, per_class: int, true_probs: Callable[[], np.ndarray]) -> np.ndarray:
    """The first ``per_class`` training images of each class."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def template(internal: torch.Tensor, correct: np.ndarray) -> torch.Tensor:
    """Mean ``i⁺`` of the correctly classified images (of all of them when none is)."""
    idx = np.flatnonzero(correct) if correct.any() else np.arange(len(correct))
    return positive_channels(internal)[torch.from_numpy(idx)].mean(0)


def external_loss(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``1 − Σ(e⁺ ⊙ m) / Σ|e|`` per image, averaged: the share of the map's correlation that is not
    positive correlation on the object (mask pooled to the map's size, as a foreground fraction).
    Scale-free and bounded in [0, 1]; a map with no correlation at all scores 1."""
    m = F.adaptive_avg_pool2d(masks[:, None].float(), e.shape[-2:])[:, 0]
    on_object = (e.clamp_min(0) * m).sum((1, 2))
    return (1 - on_object / (e.abs().sum((1, 2)) + 1e-12)).mean()


def internal_loss(i: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """``1 − Σ(i⁺ ⊙ î) / Σ|i|`` per image, averaged, with each image's class template î (B, D) in
    [0, 1]: the share of channel correlation that is not positive on the class's usual channels."""
    on_template = (i.clamp_min(0) * templates).sum(1)
    return (1 - on_template / (i.abs().sum(1) + 1e-12)).mean()


class Seed(Definition, formulas=globals()):
    name = "seed"
    follows = "the project seed's reading of the paper (mamba_bench/analysis/mender_seed.py)"
    captures = {"x": "in", "c": "conv", "s": "ssm", "y": "out"}
    lambda_ext = 1.0
    lambda_int = 1.0
    template_images = 50


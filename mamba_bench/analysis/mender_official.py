"""Mender's ``official`` definition (the default): as jiaconghu/Vision-Mamba-Mender computes it.

Read from the official code for facts (file names are theirs, under ``core/`` and ``scripts/``);
our own implementation:

* States (``models/vmamba_x/vmamba.py``, ``SS2D.forward``'s cache): ``x`` the in-projection
  output, ``c`` the depthwise conv **after SiLU**, ``s`` the merged scan **after out_norm``.
* Objective (``constraints.py``, ``feature_selection.py``): the true-class **logit** (their
  ``-NLLLoss`` on the raw outputs: the batch mean of the true-class logits).
* Grad-ESC (``constraints.py`` ``load_state_external_vmamba``, ``state_external_visualize.py``):
  ``E_D(ReLU(s) ⊙ mean_n ReLU(g))``, the ReLUs applied to state and gradient *before* the
  average over tokens, so maps are non-negative. Grad-ISC (``load_state_internal_vmamba``,
  ``state_internal_mask.py``): ``mean_n(ReLU(s) ⊙ ReLU(g))`` per channel.
* ECS (``state_external_mask.py``, ``state_external_score.py``): the map upsampled (bilinear) to
  the image, min-max normalised per image, stored as an 8-bit image and binarised at θ = 0.5
  (``state_external_score.sh``). Perturbation: x kept inside that region and x kept outside it
  (the complement), true-class softmax probabilities averaged over the images; IoU per image
  ``(|region ∧ mask| + 1e-5) / (|region ∨ mask| + 1e-5)``, averaged; ECS =
  ``(mean p_inside + 1e-5) / (mean p_outside + 1e-5) × mean IoU`` (the script's combination).
* ICS (``state_internal_score.py``): each sample's Grad-ISC min-max normalised over channels
  (``mm_norm``, + 1e-5) and binarised at θ = 0.3 (``state_internal_score.sh``); density =
  mean of the binary (J, D) matrix, similarity = Σ_d mean_j b_jd / Σ_d (used_d + 1e-5) over the
  channels some sample uses, ICS = similarity / (density + 1e-5), averaged over classes. It
  falls as channel use spreads. We report simplicity = 1 / (density + 1e-5) and homogeneity =
  similarity, so ICS = simplicity × homogeneity (as in the seed definition).
* Repair (``constraints.py``, ``train_repair.sh``): external loss ``Σ e ⊙ (1 − m) / B`` on the
  maps upsampled to the image, summed over ``c`` and ``s``; internal loss ``mean(i ⊙ (1 − T))``
  over the batch and channels, on ``x``, with T the class's **binary** template
  (``state_internal_mask.py``: the class mean of Grad-ISC over high-confidence training images
  (``sample_selection.py --is_high_confidence``), min-max normalised, > θ = 0.3). The gradient
  in both is that of the batch mean, so each carries a further 1 / B (applied here: our maps use
  each image's own gradient). Weights α = 1e7, β = 1e8 in ``train_repair.sh`` (our defaults: below).
* Blocks: external on block 1 of the first stage (``layers[0][0][1]``), internal and templates
  on block 1 of the last stage (``layers[3][0][1]``), fixed in ``constraints.py`` and
  ``feature_selection.py`` for VMamba; for Vim both on its last layer (``train_repair.sh``: 23).

Where we differ, on purpose: the official internal loss differentiates through the gradient
(``create_graph=True``; its CUDA scan's backward is itself not differentiable, so only part of
that second-order term exists there); we hold the gradient constant in both losses, as the official
external loss does (``.detach()``). A constant map (no positive correlation) has no region here;
the official min-max would divide by zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mamba_bench.analysis.mender import Definition, block_stage, upsample

#: ECS binarises the normalised map at this level (``state_external_score.sh``).
THETA_EXTERNAL = 0.5
#: ICS and the internal templates binarise at this level (``state_internal_score.sh``, ``state_internal_mask.sh``).
THETA_INTERNAL = 0.3
#: The official code's small constant in IoU, the ECS ratio, ``mm_norm`` and ICS.
EPS = 1e-5
#: The official repair's loss weights (``train_repair.sh``), tuned for ImageNet at 224 px and batches
#: of 256: on the digit vmamba-nano they overwhelm the cross-entropy (README), so the defaults below
#: are the powers of ten nearest |∇CE| / |∇L| on its first training batch
#: (``scripts/mender_loss_scale.py``); ``--lambda-ext 1e7 --lambda-int 1e8`` gives the official ones.
ALPHA, BETA = 1e7, 1e8
LAMBDA_EXT, LAMBDA_INT = 1e2, 1e5


def objective(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The true-class logit."""
    return logits.gather(1, target[:, None])[:, 0]


def external_map(state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``E_D(ReLU(s) ⊙ mean_n ReLU(g))``: non-negative, (B, h, w)."""
    return (state.relu() * grad.relu().mean((2, 3), keepdim=True)).mean(1)


def internal_vector(state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``mean_n(ReLU(s) ⊙ ReLU(g))``: non-negative, (B, D)."""
    return (state.relu() * grad.relu()).mean((2, 3))


def mm_norm(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``(t − min) / (max − min + 1e-5)`` along ``dim`` (``state_external_visualize.mm_norm``)."""
    lo, hi = t.amin(dim, keepdim=True), t.amax(dim, keepdim=True)
    return (t - lo) / (hi - lo + EPS)


def normalised_map(e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The map upsampled to ``size`` and min-max normalised per image to [0, 1]; a constant map is 0."""
    up = upsample(e, size)[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (up - lo) / span.clamp_min(1e-30), torch.zeros_like(up))


def region(e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where the map says the object is: the normalised map, as the 8-bit image the official code
    stores (``np.uint8(255 · m)``: truncation) read back over 255, above θ = 0.5. Float 0/1."""
    return (torch.floor(normalised_map(e, size) * 255) / 255 > THETA_EXTERNAL).float()


def perturbation_inputs(x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x inside the region, and x inside its complement."""
    b = region(e, (x.shape[-2], x.shape[-1]))[:, None]
    return x * b, x * (1 - b)


def segmentation_iou(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(|region ∧ m| + 1e-5) / (|region ∨ m| + 1e-5)`` per image (an empty mask scores ~0, or 1
    when the region is empty too, as in ``state_external_score.test_iou``)."""
    b = region(e, masks.shape[-2:]).bool().flatten(1)
    m = masks.flatten(1).bool()
    return ((b & m).sum(1).float() + EPS) / ((b | m).sum(1).float() + EPS)


def sample_ecs(p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """The ECS formula applied to each image on its own."""
    return (np.asarray(p_keep, float) + EPS) / (np.asarray(p_drop, float) + EPS) * np.asarray(iou, float)


def ecs(p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> tuple[float, float, float]:
    """``(mean p_keep + 1e-5) / (mean p_drop + 1e-5) × mean IoU``, and its two factors."""
    ratio = (float(np.mean(p_keep)) + EPS) / (float(np.mean(p_drop)) + EPS)
    iou_mean = float(np.mean(iou))
    return ratio * iou_mean, ratio, iou_mean


def ics(internal: torch.Tensor) -> tuple[float, float, float]:
    """(similarity / (density + 1e-5), 1 / (density + 1e-5), similarity) of J samples (J, D)."""
    b = (mm_norm(internal.float(), -1) > THETA_INTERNAL).float()
    density = float(b.mean())
    used = (b.sum(0) > 0).float()
    similarity = float(b.mean(0).sum() / (used + EPS).sum())
    return similarity / (density + EPS), 1 / (density + EPS), similarity


def repair_blocks(blocks: list[str]) -> tuple[list[str], list[str]]:
    """(external, internal) blocks: block 1 of the first stage and block 1 of the last stage, as
    the official code fixes for VMamba (block 0 where a stage has one block); the last block for
    both where blocks have no stages (the official choice for Vim)."""
    stages: dict[int, list[str]] = {}
    for b in blocks:
        stages.setdefault(block_stage(b), []).append(b)
    if -1 in stages:
        return [blocks[-1]], [blocks[-1]]
    first, last = stages[min(stages)], stages[max(stages)]
    return [first[min(1, len(first) - 1)]], [last[min(1, len(last) - 1)]]


def pick_template_images(labels: np.ndarray, per_class: int, true_probs: Callable[[], np.ndarray]) -> np.ndarray:
    """The ``per_class`` training images of each class with the highest true-class probability
    (``sample_selection.py --is_high_confidence``); ties keep the data order."""
    p = np.asarray(true_probs(), float)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(idx[np.argsort(-p[idx], kind="stable")[:per_class]])
    return np.concatenate(picks)


def template(internal: torch.Tensor, correct: np.ndarray) -> torch.Tensor:
    """The class mean, min-max normalised, binarised at θ = 0.3 (correctness is not looked at)."""
    return (mm_norm(internal.float().mean(0), -1) > THETA_INTERNAL).float()


def external_loss(e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Σ up(e) ⊙ (1 − m) / B``, × 1 / B for the batch-mean gradient."""
    n = e.shape[0]
    up = upsample(e, masks.shape[-2:])[:, 0]
    return (up * (1 - masks.float())).sum() / n / n


def internal_loss(i: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """``mean(i ⊙ (1 − T))`` over images and channels, × 1 / B for the batch-mean gradient."""
    return (i * (1 - templates)).mean() / i.shape[0]


class Official(Definition, formulas=globals()):
    name = "official"
    follows = "jiaconghu/Vision-Mamba-Mender (core/constraints.py, core/state_*_score.py, scripts/*.sh)"
    captures = {"x": "in", "c": "x", "s": "ssm_norm", "y": "out"}
    lambda_ext = LAMBDA_EXT
    lambda_int = LAMBDA_INT
    template_images = 50

    view_map = staticmethod(normalised_map)  # (the other formulas: this module's functions of their names)

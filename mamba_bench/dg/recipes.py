"""``dg-train --recipe``: training recipes as their official code runs them, and ours.

A recipe fixes the optimiser, the learning-rate schedule, the loss, the augmentation, the regularisers
and the default data protocol (splits and evaluation points, :mod:`mamba_bench.dg.data`); ``--steps``,
``--batch-size``, ``--lr``, ``--weight-decay``, ``--eval-every``, ``--augment`` and ``--protocol``
override its values. The perturbation (``--algorithm``) is separate: any algorithm runs under any
recipe.

``ours`` (default): AdamW, lr 3e-4, weight decay 0.05, linear warm-up over the first 10 % of steps
then cosine to 0, label smoothing 0.1, 300 steps of 32 images per training domain, evaluated every
steps/10; augmentation ``imagenet`` = RandomResizedCrop(scale 0.7-1) of the image stretched to
``image_size``, horizontal flip, ColorJitter(0.3, 0.3, 0.3, 0.3), grayscale p 0.1 (none for
rotated-digits). It is the default because the default model is a randomly initialised
``vmamba-nano`` run for a few hundred CPU steps, for which DomainBed's Adam 5e-5 (tuned for an
ImageNet-pretrained ResNet-50 over 5001 steps) barely moves; the data protocol is DomainBed's.

``domainbed`` (facebookresearch/DomainBed: ``hparams_registry.py`` defaults, ``algorithms.py:ERM``,
``datasets.py``, ``scripts/train.py``): Adam, lr 5e-5, weight decay 0, constant learning rate, plain
cross-entropy, batch 32 per training domain, ``N_STEPS`` 5001 updates, evaluation every
``CHECKPOINT_FREQ`` (300; DomainNet 1000) and after the last update; augmentation ``domainbed`` =
RandomResizedCrop(image_size, scale 0.7-1) of the *original* image, flip, ColorJitter(0.3 ×4),
RandomGrayscale(0.1), applied to the training domains. DomainBed's datasets apply that transform to
every split of a training domain, so its training-domain validation accuracies (the ``out`` splits
of the training domains) are measured on augmented images: this recipe does the same. For the
small-image data set (rotated-digits, as DomainBed's RotatedMNIST): lr 1e-3, batch 64, no
augmentation, evaluation every 100 updates.

``dgmamba`` (longshaocong/DGMamba: ``config.py``, ``configs/vssm_tiny_224_0220.yaml``, ``main.py``,
``utils/optimizer.py``, ``utils/lr_scheduler.py``, ``datautil/getdataloader.py``): AdamW (betas 0.9,
0.999, eps 1e-8), lr 3e-4 (its README's command), weight decay 0.05 except on 1-D tensors and biases,
16 images per training domain (``BATCH_SIZE // 2``), 50 epochs of 200 steps = 10000 updates,
gradient-norm clipping at 5, drop-path 0.2 (linearly increasing over the blocks), Mixup α 0.8 and
CutMix α 1.0 (timm's ``Mixup``: one λ per batch, probability 1, CutMix with probability 0.5, the
batch mixed with its reverse, label smoothing 0.1 folded into the soft targets, soft-target
cross-entropy), augmentation ``domainbed`` (its ``image_train`` is DomainBed's), evaluated after
every epoch, protocol ``dgmamba`` (stratified 80/20 split of the training domains, the test domain
whole). Its schedule is timm's ``CosineLRScheduler`` (warm-up from 3e-7 over 3 epochs, cosine to
``0.05 × lr``, one cycle, ``warmup_prefix``) built with ``n_iter_per_epoch = len(data_loader_train)``
— the *list* of training-domain loaders, so the number of training domains, not 200 — and stepped
with ``epoch * 200 + idx``: as the official code runs it, the warm-up lasts ``3 × n_train`` updates
and the cosine ends at ``50 × n_train`` updates (150 for PACS), after which the learning rate stays
at its minimum. This recipe reproduces that. It is DGMamba's training recipe, not DGMamba's model
(its hidden-state suppression and patch refinement are not implemented). Differences left: CUDA
autocast is bf16 here (DGMamba: fp16 with a loss scaler); its selection breaks validation ties by the
higher *target* accuracy, ``dg-eval`` by the earlier step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.errors import MambaBenchError, UnknownNameError

SMALL_IMAGES = ("rotated-digits",)  # DomainBed's SMALL_IMAGES (RotatedMNIST) counterpart


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    optimizer: str           # adamw | adam
    schedule: str            # warmup-cosine | constant | dgmamba
    drop_path: float = 0.0
    mixup: float = 0.0       # Mixup α (0: off)
    cutmix: float = 0.0      # CutMix α (0: off)
    clip_grad: float | None = None
    decay_1d: bool = True    # False: no weight decay on 1-D tensors and biases (DGMamba's set_weight_decay)
    eval_augment_sources: bool = False  # training domains evaluated on augmented images (DomainBed)


RECIPES: dict[str, Recipe] = {
    "ours": Recipe("ours", "AdamW 3e-4, wd 0.05, warm-up + cosine, label smoothing 0.1 (default)", "adamw",
                   "warmup-cosine"),
    "domainbed": Recipe("domainbed", "DomainBed's ERM defaults: Adam 5e-5, no weight decay, constant lr, 5001 steps",
                        "adam", "constant", eval_augment_sources=True),
    "dgmamba": Recipe("dgmamba", "DGMamba's recipe: AdamW 3e-4, drop-path 0.2, Mixup 0.8 / CutMix 1.0, its schedule",
                      "adamw", "dgmamba", drop_path=0.2, mixup=0.8, cutmix=1.0, clip_grad=5.0, decay_1d=False),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownNameError(f"unknown --recipe {name!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_defaults(name: str, dataset: str) -> dict:
    """The recipe's values of the overridable ``DGTrainConfig`` fields for ``dataset``."""
    get_recipe(name)
    small = dataset in SMALL_IMAGES
    if name == "ours":
        return {"steps": 300, "batch_size": 32, "lr": 3e-4, "weight_decay": 0.05, "label_smoothing": 0.1,
                "augment": "none" if small else "imagenet", "protocol": "domainbed", "eval_every": None}
    if name == "domainbed":
        freq = 100 if small else (1000 if dataset == "domain-net" else 300)  # datasets.py CHECKPOINT_FREQ
        return {"steps": 5001, "batch_size": 64 if small else 32, "lr": 1e-3 if small else 5e-5,
                "weight_decay": 0.0, "label_smoothing": 0.0, "augment": "none" if small else "domainbed",
                "protocol": "domainbed", "eval_every": freq}
    return {"steps": 10000, "batch_size": 16, "lr": 3e-4, "weight_decay": 0.05, "label_smoothing": 0.1,
            "augment": "none" if small else "domainbed", "protocol": "dgmamba", "eval_every": 200}


# -- optimiser and schedule ------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, recipe: Recipe, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if recipe.decay_1d:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        skip = [p for n, p in named if p.ndim == 1 or n.endswith(".bias")]
        groups = [{"params": [p for n, p in named if not (p.ndim == 1 or n.endswith(".bias"))]},
                  {"params": skip, "weight_decay": 0.0}]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine to 0 at ``steps`` (recipe ``ours``)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


DGMAMBA_STEPS_PER_EPOCH, DGMAMBA_EPOCHS_WARMUP, DGMAMBA_WARMUP_LR, DGMAMBA_MIN_LR = 200, 3, 3e-7, 0.05


def dgmamba_lr(update: int, lr: float, steps: int, n_train_domains: int) -> float:
    """The learning rate of update ``update`` (0-based) under DGMamba's schedule as its code runs it.

    timm's scheduler starts at its warm-up value and is stepped after each update with
    ``t = epoch * 200 + idx``, so update k uses ``lr(t = max(0, k - 1))``; its lengths count
    ``n_iter_per_epoch = n_train_domains`` (see the module docstring)."""
    epochs = steps / DGMAMBA_STEPS_PER_EPOCH
    warmup_t = int(DGMAMBA_EPOCHS_WARMUP * n_train_domains)
    t_initial = max(1, int(epochs * n_train_domains) - warmup_t)
    lr_min = DGMAMBA_MIN_LR * lr
    t = max(0, update - 1)
    if t < warmup_t:
        return DGMAMBA_WARMUP_LR + t * (lr - DGMAMBA_WARMUP_LR) / warmup_t
    t -= warmup_t
    if t >= t_initial:  # past the single cycle
        return lr_min
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / t_initial))


def lr_lambda(recipe: Recipe, lr: float, steps: int, warmup_fraction: float, n_train_domains: int):
    """The ``LambdaLR`` factor of each update for the recipe's schedule."""
    if recipe.schedule == "constant":
        return lambda s: 1.0
    if recipe.schedule == "dgmamba":
        return lambda s: dgmamba_lr(s, lr, steps, n_train_domains) / lr
    warmup = max(1, int(warmup_fraction * steps))
    return lambda s: warmup_cosine(s, steps, warmup)


# -- regularisers ----------------------------------------------------------------------------------------
def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth rising linearly from 0 to ``rate`` over the model's blocks in order, as VMamba's
    and timm's builders set ``drop_path_rate``; returns the number of blocks. VMamba blocks get their
    own ``DropPath``; timm blocks (ConvNeXt) theirs, replacing the ``Identity`` they hold at rate 0."""
    from timm.layers import DropPath as TimmDropPath

    from mamba_bench.models.vmamba import DropPath

    blocks = [m for m in model.modules()
              if isinstance(getattr(m, "drop_path", None), DropPath | TimmDropPath | nn.Identity)]
    if not blocks:
        raise MambaBenchError(f"drop-path {rate} needs a model with residual blocks (VMamba, ConvNeXt); "
                              f"{type(model).__name__} has none")
    rates = torch.linspace(0, rate, len(blocks)).tolist()
    for blk, r in zip(blocks, rates, strict=True):
        if isinstance(blk.drop_path, DropPath):
            blk.drop_path.p = r
        elif isinstance(blk.drop_path, TimmDropPath):
            blk.drop_path.drop_prob = r
        elif r > 0:
            blk.drop_path = TimmDropPath(r)
    return len(blocks)


def _one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y.view(-1, 1), 1.0 - smoothing + off)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, smoothing: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Mixup`` in ``batch`` mode with ``prob`` 1 and ``switch_prob`` 0.5 (DGMamba's settings), drawn
    from ``gen``: one λ for the batch, which is mixed with its reverse; CutMix pastes one box whose
    area sets λ (timm's ``correct_lam``). Returns the mixed images and the soft targets."""
    if len(x) % 2:
        raise MambaBenchError(f"Mixup/CutMix needs an even batch (timm's rule); got {len(x)} images")
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand((), generator=gen)) < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = _beta(alpha, gen)
    x = x.clone()
    if use_cutmix:
        h, w = x.shape[-2:]
        ratio = math.sqrt(1 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy = int(torch.randint(0, h, (), generator=gen))
        cx = int(torch.randint(0, w, (), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = x * lam + x.flip(0) * (1.0 - lam)
    t = _one_hot(y, num_classes, smoothing)
    return x, t * lam + t.flip(0) * (1.0 - lam)


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(α, α) draw from ``gen``: X / (X + Y) with X, Y ~ Gamma(α) by Marsaglia-Tsang."""
    g1, g2 = _gamma(alpha, gen), _gamma(alpha, gen)
    return g1 / (g1 + g2) if g1 + g2 > 0 else 0.5


def _gamma(alpha: float, gen: torch.Generator) -> float:
    if alpha < 1:  # boost: Gamma(α) = Gamma(α + 1) · U^(1/α)
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        return _gamma(alpha + 1, gen) * u ** (1 / alpha)
    d = alpha - 1 / 3
    c = 1 / math.sqrt(9 * d)
    while True:
        z = float(torch.randn((), generator=gen, dtype=torch.float64))
        v = (1 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's ``SoftTargetCrossEntropy``: mean over the batch of −Σ target · log_softmax."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

"""Plain supervised training of a registry model on in-memory images (the demo's digit models).

Deterministic given the seed: a ``torch.Generator`` drives shuffling and augmentation, and the
model is initialised under ``torch.random.fork_rng`` so the global RNG is left as it was.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamba_bench.models.preprocess import to_model_input
from mamba_bench.models.registry import ModelSpec


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 6) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero fill) and a random scale of 0.9–1.1."""
    b = x.shape[0]
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * max_shift / x.shape[-1])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_classifier(spec: ModelSpec, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                     epochs: int = 30, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     on_epoch=None) -> torch.nn.Module:
    """AdamW + cosine schedule + label smoothing 0.1; returns the model in eval mode on CPU."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = spec.build(num_classes)
    device = torch.device("cpu")
    x_all = torch.from_numpy(images)  # N,H,W,3 uint8
    y_all = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x_all) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            x = to_model_input(x_all[idx], spec, device)
            x = _augment(x, gen)
            y = y_all[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / total, correct / total)
    return model.eval()

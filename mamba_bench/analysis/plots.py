"""Figures of ``mamba-bench explain``: scores across blocks (the Mender paper's simple-vs-difficult
comparison) and side-by-side maps of images a corruption flips (the robustness report's Figure 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mamba_bench.results.plots import plt, save_figure

STATE_LABELS = {"x": "x (in-proj)", "c": "c (conv)", "s": "s (scan)", "y": "y (block out)"}


def plot_scores(scores: pd.DataFrame, path: Path, model: str, definition: str | None = None) -> Path:
    """2×2: ECS of simple / difficult samples, ICS of simple / difficult samples, one line per state."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    blocks = scores.drop_duplicates("index").sort_values("index")
    ticks = blocks["index"].to_numpy()
    for row, metric in enumerate(("ecs", "ics")):
        for col, group in enumerate(("simple", "difficult")):
            ax = axes[row, col]
            sub = scores[scores.group == group]
            for state, part in sub.groupby("state", sort=False):
                part = part.sort_values("index")
                ax.plot(part["index"], part[metric], marker="o", label=STATE_LABELS.get(state, state))
            letter = "abcd"[row * 2 + col]
            ax.set_title(f"({letter}) {metric.upper()}, {group} samples", fontsize=10)
            ax.set_ylabel(metric.upper())
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xticks(ticks, [f"{i}\n(stage {s})" for i, s in zip(ticks, blocks["stage"], strict=True)],
                              fontsize=8)
                ax.set_xlabel("block")
    axes[0, 0].legend(fontsize=8)
    defined = f", {definition} definition" if definition else ""
    fig.suptitle(f"{model}: state correlation scores across blocks (Vision Mamba Mender{defined})")
    return save_figure(fig, path)


def plot_flips(clean: np.ndarray, corrupted: np.ndarray, maps_true: np.ndarray, maps_pred: np.ndarray,
               labels: np.ndarray, preds: np.ndarray, p_true: np.ndarray, p_pred: np.ndarray,
               class_names: list[str], path: Path, title: str) -> Path:
    """One row per flipped image: clean, corrupted, map for the true class, map for the predicted class."""
    n = len(labels)
    height = 2.3 * n + 0.6
    fig, axes = plt.subplots(n, 4, figsize=(9, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.55 / height, bottom=0.01, hspace=0.25, wspace=0.05)

    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    for r in range(n):
        panels = [(clean[r], None, "clean"), (corrupted[r], None, "corrupted"),
                  (corrupted[r], maps_true[r], f"true {name(labels[r])} (p={p_true[r]:.2f})"),
                  (corrupted[r], maps_pred[r], f"predicted {name(preds[r])} (p={p_pred[r]:.2f})")]
        for c, (img, m, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img)
            if m is not None:
                ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1 - 0.15 / height)
    return save_figure(fig, path)

"""PNG plots of a corruption run: per-corruption bars, severity curves, best/worst panel (report Fig. 2)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write a PNG atomically (a temporary file renamed into place) and close the figure."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _grouped_bars(ax, table: pd.DataFrame, models: list[str], title: str) -> None:
    x = np.arange(len(table.index))
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        ax.bar(x + (k - (len(models) - 1) / 2) * width, table[model].to_numpy(), width, label=model)
    ax.set_xticks(x, table.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def corruption_table(metrics: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Mean top-1 over severities: rows = clean + corruptions (run order), columns = models."""
    order = list(dict.fromkeys(metrics["corruption"]))
    t = metrics.groupby(["corruption", "model"], sort=False)["top1"].mean().unstack("model")
    return t.reindex(index=order, columns=models)


def write_corruption_plots(metrics: pd.DataFrame, out: Path, models: list[str], k: int = 4) -> list[Path]:
    out = Path(out)
    paths = []
    table = corruption_table(metrics, models)
    dataset = ", ".join(dict.fromkeys(metrics["dataset"]))

    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(table) * max(1, len(models)) / 1.5), 4.5))
    _grouped_bars(ax, table, models, f"Top-1 per corruption (mean over severities) — {dataset}")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "per_corruption.png"))

    cor = [c for c in table.index if c != "clean"]
    if cor:
        cols = 5
        rows = (len(cor) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True,
                                 gridspec_kw={"hspace": 0.45})
        clean = metrics[metrics.corruption == "clean"].set_index("model")["top1"]
        for ax, c in zip(axes.flat, cor, strict=False):
            g = metrics[metrics.corruption == c]
            free = bool((g["severity"] == 0).all())
            for k, model in enumerate(models):
                gm = g[g.model == model].sort_values("severity")
                color = f"C{k}"
                if free:  # one value, no severity axis: clean point + dashed level
                    ax.plot([0], [clean.get(model, np.nan)], marker="o", ms=3, color=color, label=model)
                    ax.axhline(float(gm["top1"].iloc[0]), color=color, ls="--", lw=1.2)
                    continue
                xs = [0, *gm["severity"].tolist()]
                ys = [clean.get(model, np.nan), *gm["top1"].tolist()]
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=model)
            ax.set_title(f"{c} (severity-free, dashed)" if free else c, fontsize=8)
            ax.set_xticks(range(0, 6))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(cor):]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7)
        fig.supxlabel("severity (0 = clean)")
        fig.supylabel("top-1 (%)")
        paths.append(save_figure(fig, out / "severity_curves.png"))

        ranked = table.loc[cor].mean(axis=1).sort_values(ascending=False)
        k = min(k, max(1, len(ranked) // 2)) if len(ranked) > 1 else 1
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        _grouped_bars(a1, table.loc[list(ranked.index[:k])], models, f"(a) best {k} corruptions")
        _grouped_bars(a2, table.loc[list(ranked.index[-k:])], models, f"(b) worst {k} corruptions")
        a1.legend(fontsize=8)
        paths.append(save_figure(fig, out / "best_worst.png"))
    return paths

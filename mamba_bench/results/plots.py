"""PNG plots of a corruption run: per-corruption bars, severity curves, best/worst panel (report Fig. 2),
and the model × corruption heat-map of the report.

A run may hold several data sets (the ``dataset`` column): every plot is drawn for one data set, never
from rows of two. With one data set holding corruptions the files are ``per_corruption.png``,
``severity_curves.png`` and ``best_worst.png``; with several, each such data set gets its own, named
``per_corruption-<data set>.png`` and so on. A data set measured on clean images only (a natural-shift
set such as ImageNet-V2) gets no corruption plot: the report's natural-shift table shows it.
"""

from __future__ import annotations

import os
import re
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


def file_tags(names: list[str]) -> dict[str, str]:
    """A file-name-safe, distinct tag per name (``imagenet-v2`` stays; ``a/b`` becomes ``a_b``)."""
    tags: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)).strip(".") or "dataset"
        tag, k = base, 2
        while tag in tags.values():
            tag, k = f"{base}-{k}", k + 1
        tags[name] = tag
    return tags


def _grouped_bars(ax, table: pd.DataFrame, models: list[str], title: str) -> None:
    x = np.arange(len(table.index))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        ax.bar(x + (i - (len(models) - 1) / 2) * width, table[model].to_numpy(), width, label=model)
    ax.set_xticks(x, table.index, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def corruption_table(metrics: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Mean top-1 over severities of ONE data set: rows = clean + corruptions (run order), columns = models."""
    if "dataset" in metrics.columns and metrics["dataset"].nunique() > 1:
        raise ValueError(f"corruption_table takes one data set, got {sorted(metrics['dataset'].unique())}")
    order = list(dict.fromkeys(metrics["corruption"]))
    t = metrics.groupby(["corruption", "model"], sort=False)["top1"].mean().unstack("model")
    return t.reindex(index=order, columns=models)


def best_worst(table: pd.DataFrame, k: int = 4) -> tuple[list[str], list[str]]:
    """The panel's corruptions: the ``k`` with the highest and the ``k`` with the lowest mean top-1 over models.

    ``table`` is :func:`corruption_table`'s; ``clean`` is not a corruption. ``k`` shrinks to half the
    corruptions (rounded down, at least 1) so that the two sides never share a corruption, except
    when there is a single corruption (then it is both)."""
    cor = [c for c in table.index if c != "clean"]
    if not cor:
        return [], []
    ranked = table.loc[cor].mean(axis=1).sort_values(ascending=False, kind="stable")
    k = min(k, max(1, len(ranked) // 2)) if len(ranked) > 1 else 1
    return list(ranked.index[:k]), list(ranked.index[-k:])


def best_worst_figure(table: pd.DataFrame, models: list[str], k: int = 4):
    best, worst = best_worst(table, k)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    _grouped_bars(a1, table.loc[best], models, f"(a) best {len(best)} corruptions")
    _grouped_bars(a2, table.loc[worst], models, f"(b) worst {len(worst)} corruptions")
    a1.legend(fontsize=8)
    return fig


def _severity_figure(metrics: pd.DataFrame, cor: list[str], models: list[str]):
    cols = 5
    rows = (len(cor) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True,
                             gridspec_kw={"hspace": 0.45})
    clean = metrics[metrics.corruption == "clean"].groupby("model")["top1"].mean()
    for ax, c in zip(axes.flat, cor, strict=False):
        g = metrics[metrics.corruption == c]
        free = bool((g["severity"] == 0).all())
        for i, model in enumerate(models):
            gm = g[g.model == model].sort_values("severity")
            color = f"C{i}"
            if gm.empty:
                continue
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
    return fig


def write_corruption_plots(metrics: pd.DataFrame, out: Path, models: list[str], k: int = 4) -> list[Path]:
    """The run's plots, one set per data set that holds corruptions (see the module's docstring)."""
    out = Path(out)
    paths = []
    datasets = list(dict.fromkeys(metrics["dataset"]))
    corrupted = [d for d in datasets if (metrics[metrics.dataset == d].corruption != "clean").any()]
    if len(datasets) == 1:
        corrupted = datasets  # a clean-only run keeps its one-group bar plot, as before
    tags = file_tags(corrupted)
    for dataset in corrupted:
        m = metrics[metrics.dataset == dataset]
        suffix = f"-{tags[dataset]}" if len(corrupted) > 1 else ""
        table = corruption_table(m, models)

        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(table) * max(1, len(models)) / 1.5), 4.5))
        _grouped_bars(ax, table, models, f"Top-1 per corruption (mean over severities) — {dataset}")
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out / f"per_corruption{suffix}.png"))

        cor = [c for c in table.index if c != "clean"]
        if cor:
            paths.append(save_figure(_severity_figure(m, cor, models), out / f"severity_curves{suffix}.png"))
            paths.append(save_figure(best_worst_figure(table, models, k), out / f"best_worst{suffix}.png"))
    return paths


def heatmap_table(metrics: pd.DataFrame, models: list[str] | None = None) -> pd.DataFrame:
    """Top-1 of ONE data set, rows = models, columns = ``clean``, each corruption (mean over its
    severities, run order) and ``mean`` (the mean of the corruption columns, clean left out)."""
    models = models if models is not None else list(dict.fromkeys(metrics["model"]))
    t = corruption_table(metrics, models).T  # rows models
    cor = [c for c in t.columns if c != "clean"]
    t = t[(["clean"] if "clean" in t.columns else []) + cor]
    if cor:
        t["mean"] = t[cor].mean(axis=1, skipna=False)
    return t


def heatmap_figure(table: pd.DataFrame, title: str):
    """An annotated heat-map of :func:`heatmap_table` (0–100 % colour scale, NaN cells shown as —)."""
    rows, cols = table.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.62 * cols + 2.2), max(2.0, 0.42 * rows + 1.6)))
    values = table.to_numpy(dtype=float)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            text = "—" if np.isnan(v) else f"{v:.1f}"
            color = "black" if np.isnan(v) or v > 60 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(cols), [str(c) for c in table.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in table.index], fontsize=8)
    for j, c in enumerate(table.columns):  # white rules set clean and mean apart from the corruptions
        if c == "clean" and j + 1 < cols:
            ax.axvline(j + 0.5, color="white", lw=2)
        if c == "mean" and j > 0:
            ax.axvline(j - 0.5, color="white", lw=2)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="top-1 (%)")
    return fig


def write_heatmap(metrics: pd.DataFrame, path: Path, models: list[str] | None = None,
                  title: str | None = None) -> Path:
    """The heat-map of ONE data set's rows as a PNG."""
    table = heatmap_table(metrics, models)
    dataset = ", ".join(map(str, dict.fromkeys(metrics["dataset"]))) if "dataset" in metrics else ""
    return save_figure(heatmap_figure(table, title or f"Top-1 (%) per model and corruption — {dataset}"), Path(path))

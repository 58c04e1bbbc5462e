"""Classification metrics, with the ImageNet-C definitions of corruption error.

Per-image quantities are computed on the batch (on the device) and reduced per cell; CE / mCE are
derived from the long table afterwards, so they can always be recomputed from ``metrics.parquet``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

ECE_BINS = 15


@torch.no_grad()
def per_image(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """Prediction, top-1/top-k correctness, confidence and NLL of each image (fp32 on the device).

    The prediction is the first of the top-k, so an image right at top-1 is right at top-k also when
    logits tie. Logits with NaN (or +inf) give a NaN confidence, which ``nonfinite`` counts."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=1)
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    return {
        "pred": pred,
        "correct": pred == labels,
        "correct5": (topk == labels[:, None]).any(dim=1),
        "confidence": logp.gather(1, pred[:, None]).squeeze(1).exp(),
        "nll": -logp.gather(1, labels[:, None]).squeeze(1),
    }


def nonfinite(per: dict[str, np.ndarray]) -> int:
    """Images whose logits held NaN or +inf (their prediction means nothing)."""
    return int(np.isnan(per["confidence"]).sum()) if "confidence" in per else 0


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017), the bin's weight its share of images."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def summarize(per: dict[str, np.ndarray]) -> dict[str, float]:
    """Reduce one cell's per-image arrays to the metric columns of ``metrics.parquet``."""
    n = int(per["correct"].size)
    return {
        "n": n,
        "top1": float(per["correct"].mean() * 100) if n else float("nan"),
        "top5": float(per["correct5"].mean() * 100) if n else float("nan"),
        "nll": float(per["nll"].mean()) if n else float("nan"),
        "ece": expected_calibration_error(per["confidence"], per["correct"]) * 100,
    }


def add_clean_drop(metrics: pd.DataFrame) -> pd.DataFrame:
    """``top1_drop``: clean top-1 minus corrupted top-1 of the same model and data set (points)."""
    clean = metrics[metrics.corruption == "clean"].set_index(["model", "dataset"])["top1"]
    key = pd.MultiIndex.from_frame(metrics[["model", "dataset"]])
    out = metrics.copy()
    out["top1_drop"] = clean.reindex(key).to_numpy() - out["top1"].to_numpy()
    return out


def corruption_errors(metrics: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """CE and relative CE per (model, dataset, corruption) and their means, ImageNet-C style.

    CE_c^f = Σ_s E_{s,c}^f / Σ_s E_{s,c}^base ; relative CE_c^f = Σ_s (E_{s,c}^f − E_clean^f) /
    Σ_s (E_{s,c}^base − E_clean^base), with E = top-1 error. Both need the baseline in the same run.
    The mean over corruptions (mCE, relative mCE) is a row with corruption ``"mean"``; a corruption
    whose baseline denominator is zero has no CE (NaN) and is left out of every model's mean.
    Without a baseline only the mean error per corruption is given.
    """
    df = metrics.copy()
    df["err"] = 100.0 - df["top1"]
    clean_err = df[df.corruption == "clean"].set_index(["model", "dataset"])["err"]
    cor = df[df.corruption != "clean"]
    rows = []
    for (model, dataset, corruption), g in cor.groupby(["model", "dataset", "corruption"], sort=True):
        rows.append({
            "model": model, "dataset": dataset, "corruption": corruption,
            "mean_top1": float(g["top1"].mean()),
            "err_sum": float(g["err"].sum()),
            "rel_err_sum": float((g["err"] - clean_err.get((model, dataset), np.nan)).sum()),
        })
    out = pd.DataFrame(rows, columns=["model", "dataset", "corruption", "mean_top1", "err_sum", "rel_err_sum"])
    out["baseline"] = baseline or ""
    out["ce"] = np.nan
    out["relative_ce"] = np.nan
    if baseline is not None and not out.empty:
        base = out[out.model == baseline].set_index(["dataset", "corruption"])
        key = pd.MultiIndex.from_frame(out[["dataset", "corruption"]])
        b_err = base["err_sum"].reindex(key).to_numpy()
        b_rel = base["rel_err_sum"].reindex(key).to_numpy()
        # A zero denominator (the baseline never errs on that corruption, or errs exactly as much as
        # on clean images) leaves CE undefined for every model: NaN, not ±inf, so that every model's mean
        # leaves out the same corruptions.
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ce"] = np.where(b_err == 0, np.nan, out["err_sum"].to_numpy() / b_err * 100)
            out["relative_ce"] = np.where(b_rel == 0, np.nan, out["rel_err_sum"].to_numpy() / b_rel * 100)
    if not out.empty:
        means = (out.groupby(["model", "dataset"], sort=True)[["mean_top1", "ce", "relative_ce"]]
                 .mean().reset_index())
        means["corruption"] = "mean"
        means["baseline"] = baseline or ""
        out = pd.concat([out.drop(columns=["err_sum", "rel_err_sum"]), means], ignore_index=True)
    else:
        out = out.drop(columns=["err_sum", "rel_err_sum"])
    return out[["model", "dataset", "corruption", "baseline", "mean_top1", "ce", "relative_ce"]]

"""Classification metrics, with the ImageNet-C definitions of corruption error.

Per-image quantities are computed on the batch (on the device) and reduced per cell; CE / mCE are
derived from the long table afterwards, so they can always be recomputed from ``metrics.parquet``.
"""

from __future__ import annotations

from fractions import Fraction

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


def summarize(per: dict[str, np.ndarray], num_classes: int | None = None) -> dict[str, float]:
    """Reduce one cell's per-image arrays to the metric columns of ``metrics.parquet``.

    With 5 classes or fewer (VLCS has 5) every image is right at top-5: top-5 is NaN there, not 100."""
    n = int(per["correct"].size)
    top5_defined = n and (num_classes is None or num_classes > 5)
    return {
        "n": n,
        "top1": float(per["correct"].mean() * 100) if n else float("nan"),
        "top5": float(per["correct5"].mean() * 100) if top5_defined else float("nan"),
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


def _error(n: int, top1: float) -> Fraction:
    """A cell's top-1 error as an exact fraction: wrong images / n, counted as integers."""
    return Fraction(int(n) - int(round(top1 * n / 100)), int(n)) if n else Fraction(0)


def _errors(g: pd.DataFrame) -> list[Fraction]:
    return [_error(n, t) for n, t in zip(g["n"], g["top1"], strict=True)]


def _ratio(num: Fraction, den: Fraction, what: str) -> tuple[float, str]:
    """num / den in %, or NaN with the reason: a zero denominator or, for relative CE, a negative one
    (the baseline better on corrupted than on clean images) leaves the ratio undefined, never huge."""
    if den == 0:
        return float("nan"), f"{what}: the baseline's denominator is zero"
    if den < 0:
        return float("nan"), f"{what}: the baseline errs less on corrupted than on clean images"
    return float(num / den * 100), ""


def corruption_errors(metrics: pd.DataFrame, baseline: str | None, table=None) -> pd.DataFrame:
    """CE and relative CE per (model, dataset, corruption) and their means, ImageNet-C style.

    CE_c^f = Σ_s E_{s,c}^f / Σ_s E_{s,c}^base ; relative CE_c^f = Σ_s (E_{s,c}^f − E_clean^f) /
    Σ_s (E_{s,c}^base − E_clean^base), with E = top-1 error, counted exactly (integer errors per cell),
    so a zero denominator is zero, not −2.8e-14. The baseline is a model of the same run
    (``baseline``), or a published / external table (``table``, a ``BaselineTable``) matched by
    corruption and severity. An undefined ratio is NaN with its reason in ``note``: a zero or (relative)
    negative denominator, a cell the table lacks. The mean over corruptions (mCE, relative mCE) is a
    row with corruption ``"mean"``: against a model of the run, over the corruptions where CE is
    defined (the same for every model; ``note`` says which were left out); against a published table
    with a standard set (AlexNet: ImageNet-C's 15), over exactly that set, and NaN, with the reason,
    when the run lacks any of its corruptions or severities, so an incomplete mCE never reads as the
    published one. Without a baseline only the mean error per corruption is given.
    """
    base_name = table.name if table is not None else (baseline or "")
    clean = {(r.model, r.dataset): _error(r.n, r.top1)
             for r in metrics[metrics.corruption == "clean"].itertuples(index=False)}
    groups = {k: g.sort_values("severity") for k, g in metrics[metrics.corruption != "clean"]
              .groupby(["model", "dataset", "corruption"], sort=True)}
    rows = []
    for (model, dataset, corruption), g in groups.items():
        row = {"model": model, "dataset": dataset, "corruption": corruption, "baseline": base_name,
               "mean_top1": float(g["top1"].mean()), "ce": float("nan"), "relative_ce": float("nan"), "note": "",
               "_severities": tuple(int(v) for v in g["severity"])}
        errs, sevs = _errors(g), [int(v) for v in g["severity"]]
        c_err = clean.get((model, dataset))
        if table is not None:
            b_errs = [table.errors.get((corruption, s)) for s in sevs]
            b_clean = table.clean
        elif baseline is not None:
            b = groups.get((baseline, dataset, corruption))
            b_errs = dict(zip(b["severity"].astype(int), _errors(b), strict=True)) if b is not None else {}
            b_errs = [b_errs.get(s) for s in sevs]
            b_clean = clean.get((baseline, dataset))
        else:
            rows.append(row)
            continue
        if any(e is None for e in b_errs):
            lacking = [str(s) for s, e in zip(sevs, b_errs, strict=True) if e is None]
            row["note"] = f"{base_name} has no {corruption} severity {','.join(lacking)}"
        else:
            b_errs = [Fraction(e) if not isinstance(e, Fraction) else e for e in b_errs]
            row["ce"], why = _ratio(sum(errs), sum(b_errs), "CE")
            if c_err is None or b_clean is None:
                why_rel = f"relative CE: no clean error of {model if c_err is None else base_name}"
                row["note"] = "; ".join(x for x in (why, why_rel) if x)
            else:
                b_clean = Fraction(b_clean) if not isinstance(b_clean, Fraction) else b_clean
                row["relative_ce"], why_rel = _ratio(sum(e - c_err for e in errs),
                                                     sum(e - b_clean for e in b_errs), "relative CE")
                row["note"] = "; ".join(x for x in (why, why_rel) if x)
        rows.append(row)
    cols = ["model", "dataset", "corruption", "baseline", "mean_top1", "ce", "relative_ce", "note"]
    out = pd.DataFrame(rows, columns=cols + ["_severities"])
    if out.empty:
        return out[cols]
    return pd.concat([out, _means(out, table, baseline is not None or table is not None)], ignore_index=True)[cols]


def _means(out: pd.DataFrame, table, has_baseline: bool) -> pd.DataFrame:
    """The ``mean`` row of each (model, dataset): see :func:`corruption_errors`."""
    rows = []
    for (model, dataset), g in out.groupby(["model", "dataset"], sort=True):
        row = {"model": model, "dataset": dataset, "corruption": "mean", "baseline": g["baseline"].iloc[0],
               "mean_top1": float(g["mean_top1"].mean()), "ce": float("nan"), "relative_ce": float("nan"), "note": ""}
        if has_baseline:
            standard = getattr(table, "standard", None)
            if standard:
                part = g.set_index("corruption").reindex(standard)
                row["mean_top1"] = float(part["mean_top1"].mean())
                every = {c: tuple(sorted(s for k, s in table.errors if k == c)) for c in standard}
                bad = [c for c in standard if c not in g["corruption"].values or np.isnan(part.loc[c, "ce"])
                       or part.loc[c, "_severities"] != every[c]]
                if bad:
                    row["note"] = (f"mCE vs {table.name} needs all {len(standard)} of its corruptions at every "
                                   f"severity; incomplete here ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
                else:
                    row["ce"] = float(part["ce"].mean())
                    row["relative_ce"] = float(part["relative_ce"].mean())
                    if part["relative_ce"].isna().any():
                        row["note"] = "relative mCE undefined: " + next(n for n in part["note"] if n)
                extra = sorted(set(g["corruption"]) - set(standard))
                if extra:
                    row["note"] = "; ".join(x for x in (row["note"], f"not in the mean: {', '.join(extra)}") if x)
            else:
                left = g[g["ce"].isna()]["corruption"].tolist()
                row["ce"] = float(g["ce"].mean()) if len(left) < len(g) else float("nan")
                row["relative_ce"] = float(g["relative_ce"].mean()) if g["relative_ce"].notna().any() else float("nan")
                if left:
                    row["note"] = (f"over {len(g) - len(left)} of {len(g)} corruptions "
                                   f"(undefined: {', '.join(left[:3])})")
        rows.append(row)
    return pd.DataFrame(rows)

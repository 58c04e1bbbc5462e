"""The report's tables of a corruption run, as data frames (no rendering here).

A run can hold several data sets (the ``dataset`` column of ``metrics.parquet`` and
``summary.parquet``). Every table below is computed per data set; no mean ever takes rows of two.

Natural shifts. A data set whose rows are all ``clean`` (ImageNet-V2, -R, -A, -Sketch evaluated as
released) is a *shift set*; its top-1 is set beside the clean top-1 of the run's *main* data set:

1. the one data set that holds both a ``clean`` row and corrupted rows, if there is exactly one;
2. else the data set named ``imagenet-val``, if it has a ``clean`` row;
3. else none: the table lists each data set's clean top-1 without a drop, and says why.
"""

from __future__ import annotations

import pandas as pd

from mamba_bench.results.plots import corruption_table

MAIN_NAME = "imagenet-val"
SUMMARY_KNOWN = ["model", "dataset", "corruption", "baseline", "mean_top1", "ce", "relative_ce"]


def datasets(metrics: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(metrics["dataset"]))


def models(metrics: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(metrics["model"]))


def corrupted_datasets(metrics: pd.DataFrame) -> list[str]:
    """Data sets with at least one row other than ``clean``, in run order."""
    return [d for d in datasets(metrics) if (metrics[metrics.dataset == d].corruption != "clean").any()]


def split_datasets(metrics: pd.DataFrame) -> tuple[str | None, list[str], str]:
    """(main data set or None, shift sets, why there is no main set — empty when there is one).

    Shift sets are the data sets with only ``clean`` rows, the main one left out. With a single data
    set there are no shift sets."""
    order = datasets(metrics)
    with_clean = [d for d in order if (metrics[metrics.dataset == d].corruption == "clean").any()]
    corrupted = set(corrupted_datasets(metrics))
    clean_only = [d for d in with_clean if d not in corrupted]
    if len(order) < 2:
        return (order[0] if order else None), [], ""
    both = [d for d in with_clean if d in corrupted]
    if len(both) == 1:
        main = both[0]
    elif MAIN_NAME in with_clean:
        main = MAIN_NAME
    else:
        why = (f"several data sets hold corruptions ({', '.join(both)})" if both else
               "no data set holds both clean and corrupted rows")
        return None, clean_only, f"no main data set: {why} and none is named {MAIN_NAME}"
    return main, [d for d in clean_only if d != main], ""


def per_corruption(metrics: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Top-1 per corruption (mean over severities) of one data set: clean first, then run order."""
    m = metrics[metrics.dataset == dataset]
    t = corruption_table(m, models(m))
    t.insert(0, "corruption", t.index.astype(str))
    return t.reset_index(drop=True)


def severity_free_label(names: list[str]) -> str:
    shown = ", ".join(names) if len(names) <= 4 else f"{len(names)} corruptions"
    return f"severity-free ({shown})"


def per_severity(metrics: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Top-1 per severity, mean over the corruptions that have it, of one data set.

    The severity-free corruptions (recorded with severity 0, e.g. ``fliplr``) are not a severity 0 and
    not clean: their mean is a last row labelled ``severity-free (names)``. Clean is not in this table."""
    m = metrics[(metrics.dataset == dataset) & (metrics.corruption != "clean")]
    cols = models(m)
    graded = m[m.severity > 0]
    t = graded.groupby(["severity", "model"]).top1.mean().unstack("model").reindex(columns=cols)
    out = pd.DataFrame({"severity": t.index.astype(str)}).join(t.reset_index(drop=True))
    free = m[m.severity == 0]
    if len(free):
        row = free.groupby("model").top1.mean().reindex(cols)
        label = severity_free_label(list(dict.fromkeys(free.corruption)))
        out = pd.concat([out, pd.DataFrame([{"severity": label, **row.to_dict()}])], ignore_index=True)
    return out


def summary_means(summary: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, str]:
    """Per model of one data set: the summary's ``mean`` row (mean corrupted top-1, mCE, relative mCE).

    The ``mean`` rows are taken as written by the run (not averaged again here), so a mean the run
    marks NaN stays NaN. Columns the report does not know are shown as they are. Returns the table
    and the baseline's name ("" without one)."""
    s = summary[(summary.dataset == dataset) & (summary.corruption == "mean")]
    base = [b for b in s.get("baseline", pd.Series(dtype=object)).dropna().unique() if str(b)]
    out = s.rename(columns={"ce": "mCE", "relative_ce": "relative_mCE"})
    extra = [c for c in s.columns if c not in SUMMARY_KNOWN]
    keep = ["model", "mean_top1"] + (["mCE", "relative_mCE"] if base or s["ce"].notna().any() else []) + extra
    return out[[c for c in keep if c in out.columns]].reset_index(drop=True), ", ".join(map(str, base))


def natural_shifts(metrics: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None, str]:
    """Clean top-1 of the main data set beside top-1 on each shift set, with the drop (shift − main).

    Returns (table or None when the run has no shift set, the main data set, a note)."""
    main, shifts, why = split_datasets(metrics)
    if not shifts:
        return None, main, why
    clean = metrics[metrics.corruption == "clean"]
    top1 = clean.groupby(["model", "dataset"]).top1.mean()
    rows = []
    for model in models(metrics):
        row = {"model": model}
        base = top1.get((model, main), float("nan")) if main else None
        if main:
            row[f"{main} (clean)"] = base
        for d in shifts:
            v = top1.get((model, d), float("nan"))
            row[d] = v
            if main:
                row[f"Δ {d}"] = v - base
        rows.append(row)
    return pd.DataFrame(rows), main, why

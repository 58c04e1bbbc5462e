"""Baselines that CE / mCE are normalised by, other than a model of the same run.

- ``alexnet``: AlexNet's published ImageNet-C errors (``baselines/alexnet_imagenet_c.csv``, its
  source named in the file), per corruption and severity, the table of the ImageNet-C paper's mCE.
  Its mean is over the 15 standard corruptions (the 4 extras get a CE each, outside the mean).
- ``--baseline-table FILE``: any external table: a ``metrics.parquet`` of another run (pick its model
  with ``--baseline NAME`` when it holds several), or a CSV with ``corruption,severity`` and one of
  ``accuracy`` (fraction), ``top1`` (%), ``error`` (fraction) or ``err`` (%), optionally ``model``
  (pick with ``--baseline``) and ``dataset`` columns; a ``clean`` row (severity 0) enables relative CE.
  RobustBench's ``unaggregated_results.csv`` rows reshaped to those columns work as they are.

An external table is matched to the run by corruption name and severity: a cell the table lacks
makes that corruption's CE NaN, with the reason in the summary's ``note`` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mamba_bench.errors import MambaBenchError

HERE = Path(__file__).with_name("baselines")
PUBLISHED = {"alexnet": HERE / "alexnet_imagenet_c.csv"}


@dataclass
class BaselineTable:
    """Top-1 error (fraction) of a baseline per (corruption, severity); ``clean`` its clean error."""

    name: str
    errors: dict[tuple[str, int], float]
    clean: float | None = None
    #: the corruptions whose mean is the published mCE (None: every corruption of the run)
    standard: list[str] | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


def is_published(name: str | None) -> bool:
    return name in PUBLISHED


def load_baseline_table(ref: str, model: str | None = None) -> BaselineTable:
    """``alexnet`` or a file (CSV or parquet) as described in the module docstring; bad input → one line."""
    if ref in PUBLISHED:
        df = pd.read_csv(PUBLISHED[ref], comment="#")
        standard = df[df["standard"] == 1]["corruption"].drop_duplicates().tolist()
        return BaselineTable(ref, _errors(df, ref), None, standard, str(PUBLISHED[ref].name))
    path = Path(ref)
    if not path.is_file():
        known = ", ".join(PUBLISHED)
        raise MambaBenchError(f"--baseline-table {ref}: no such file (published tables by name: {known})")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, comment="#")
    except Exception as exc:  # unreadable or not a table: one line, whatever pandas raised
        raise MambaBenchError(f"--baseline-table {ref} cannot be read as a table: {type(exc).__name__}") from None
    if "model" in df.columns:
        models = list(dict.fromkeys(df["model"].astype(str)))
        if model is None and len(models) > 1:
            raise MambaBenchError(f"--baseline-table {ref} holds {len(models)} models ({', '.join(models[:5])}): "
                                  "pick one with --baseline NAME")
        pick = model or models[0]
        if pick not in models:
            raise MambaBenchError(f"--baseline-table {ref} has no model {pick!r}; it has {', '.join(models[:5])}")
        df = df[df["model"].astype(str) == pick]
        name = pick
    else:
        name = model or path.stem
    if "dataset" in df.columns and df["dataset"].nunique() > 1:
        raise MambaBenchError(f"--baseline-table {ref} holds several data sets "
                              f"({', '.join(map(str, df['dataset'].unique()[:4]))}): give a table of one")
    errors = _errors(df, ref)
    clean = errors.pop(("clean", 0), None)
    return BaselineTable(name, errors, clean, None, str(path))


def _errors(df: pd.DataFrame, ref: str) -> dict[tuple[str, int], float]:
    missing = [c for c in ("corruption", "severity") if c not in df.columns]
    if missing:
        raise MambaBenchError(f"--baseline-table {ref} lacks the column(s) {', '.join(missing)}")
    if "error" in df.columns:
        err = df["error"].astype(float)
    elif "err" in df.columns:
        err = df["err"].astype(float) / 100
    elif "accuracy" in df.columns:
        err = 1 - df["accuracy"].astype(float)
    elif "top1" in df.columns:
        err = 1 - df["top1"].astype(float) / 100
    else:
        raise MambaBenchError(f"--baseline-table {ref} has none of the columns accuracy, top1, error, err")
    if ((err < 0) | (err > 1) | err.isna()).any():
        raise MambaBenchError(f"--baseline-table {ref}: errors must lie in [0, 1] (accuracy/error as fractions, "
                              "top1/err in %)")
    keys = list(zip(df["corruption"].astype(str), df["severity"].astype(int), strict=True))
    if len(set(keys)) != len(keys):
        raise MambaBenchError(f"--baseline-table {ref} lists a (corruption, severity) twice")
    return dict(zip(keys, err.tolist(), strict=True))

"""``compare``: baseline vs candidate corruption results, with a paired test against noise.

Rows are matched on (model, dataset, corruption, severity). For each matched row every metric's
delta is reported (candidate − baseline). A row is a **regression** when its top-1 drops by more
than ``max_drop`` points and — when both sides saved per-image predictions for the same images —
the exact McNemar test on the discordant pairs rejects "no change" at ``alpha``; without
predictions the threshold alone decides. Rows present on one side only are listed, never dropped.

Each matched row knows the run it came from on each side, and the two runs are checked **per row**:
the seed and the suite's sha256 (corrupted rows only: clean images depend on neither), the hash of
the evaluated image list of the row's data set, and the precision (``execution.amp``: bf16 autocast
or fp32). A field one of the runs did not record is not checked. A mismatch is a warning naming the
rows and runs (compare what matches), or refused with ``strict``; so are rows held by several runs of
one side whose copies differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mamba_bench.errors import MambaBenchError
from mamba_bench.report.runs import Run

KEYS = ["model", "dataset", "corruption", "severity"]
METRICS = ["top1", "top5", "nll", "ece"]


@dataclass
class Comparison:
    rows: pd.DataFrame                     # matched rows with deltas, p-values and verdicts
    only_baseline: pd.DataFrame
    only_candidate: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    max_drop: float = 0.5
    alpha: float = 0.05

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows.verdict == "regression"]


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    from scipy.stats import binomtest

    n = b + c
    if n == 0:
        return 1.0
    return float(binomtest(min(b, c), n, 0.5).pvalue)


def _side(runs: list[Run], label: str, warnings: list[str]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """One side's metrics and predictions, each (model, data set, corruption, severity) once.

    Several runs of one model (say severities 1–2 in one run, 3–5 in another) each measure the clean
    images, so a report of them holds that row more than once. Pairing every copy with every copy
    would count each image several times (and shrink McNemar's p-value), so the first run holding a
    row is used, its predictions with it, and a warning names the rows whose copies differ."""
    frames = [r.tables["metrics"].assign(_run=i) for i, r in enumerate(runs) if "metrics" in r.tables]
    if not frames:
        return None, None
    metrics = pd.concat(frames, ignore_index=True)
    if not set(KEYS) <= set(metrics.columns):
        return metrics.drop(columns="_run"), None
    dup = metrics.duplicated(KEYS, keep=False)
    if dup.any():
        # counts exactly; NLL and ECE to float noise (bf16 on a GPU, another batch split)
        g = metrics[dup].groupby(KEYS, dropna=False)
        exact = [c for c in ("top1", "top5", "n") if c in metrics.columns]
        close = [c for c in ("nll", "ece") if c in metrics.columns]
        spread = (g[close].max() - g[close].min()).abs() > 1e-4 * g[close].max().abs().clip(lower=1e-8)
        differ = (g[exact].nunique(dropna=False) > 1).any(axis=1) | spread.any(axis=1)
        if differ.any():
            shown = ", ".join("/".join(map(str, k)) for k in differ[differ].index[:5])
            more = f" and {int(differ.sum()) - 5} more" if differ.sum() > 5 else ""
            warnings.append(f"{int(differ.sum())} {label} row(s) appear in several runs with different results "
                            f"({shown}{more}): each is taken from the first run that holds it")
        metrics = metrics.drop_duplicates(KEYS, keep="first")
    preds = [r.tables["predictions"].assign(_run=i) for i, r in enumerate(runs) if "predictions" in r.tables]
    predictions = None
    if preds:
        predictions = pd.concat(preds, ignore_index=True).merge(metrics[KEYS + ["_run"]], on=KEYS + ["_run"])
        predictions = predictions.drop(columns="_run")
    # which run each row came from: the per-row checks of compare() read that run's manifest
    return metrics.rename(columns={"_run": "source_run"}).reset_index(drop=True), predictions


def _what(df: pd.DataFrame) -> str:
    names = (", ".join(sorted(map(str, df[c].unique()))) for c in ("model", "dataset"))
    return "models {} on {}".format(*names)


def samples_hash(manifest: dict, dataset: str) -> str | None:
    """The recorded hash of the image list of ``dataset`` in a run's manifest, or None.

    Read robustly across manifest versions: a ``datasets`` list of ``{"name", "samples_sha256"}``
    entries (the entry named ``dataset``); ``data`` as such a list, or as a dict keyed by data set
    name; or ``data`` as one data set's dict (its hash, unless it names another data set)."""
    def pick(entries) -> str | None:
        for e in entries:
            if isinstance(e, dict) and e.get("name") == dataset and e.get("samples_sha256"):
                return e["samples_sha256"]
        return None

    if isinstance(manifest.get("datasets"), list):
        found = pick(manifest["datasets"])
        if found:
            return found
    data = manifest.get("data")
    if isinstance(data, list):
        return pick(data)
    if isinstance(data, dict):
        if data.get("samples_sha256"):
            named = data.get("name")
            return data["samples_sha256"] if named is None or named == dataset else None
        entry = data.get(dataset)
        if isinstance(entry, dict):
            return entry.get("samples_sha256")
    return None


def _amp(manifest: dict) -> str | None:
    amp = (manifest.get("execution") or {}).get("amp")
    return None if amp is None else ("bf16 autocast" if amp else "fp32")


# (field, what it is called in a warning, what a difference means, does it matter for clean rows)
_CHECKS = [
    ("seed", "seeds", "corrupted images differ", False),
    ("suite", "corruption suites (sha256)", "the corruptions differ", False),
    ("samples", "evaluated images", "other files, sampling or skips", True),
    ("precision", "precision", "bf16 autocast vs fp32 moves every metric a little", True),
]


def _field(run: Run, name: str, dataset: str):
    man = run.manifest
    if name == "seed":
        return man.get("seed")
    if name == "suite":
        return (man.get("suite") or {}).get("sha256")
    if name == "samples":
        return samples_hash(man, dataset)
    return _amp(man)


def _row_checks(rows: pd.DataFrame, baseline: list[Run], candidate: list[Run]) -> list[str]:
    """One warning per (field, baseline run, candidate run) whose matched rows disagree on it."""
    out = []
    for name, label, meaning, clean_too in _CHECKS:
        bad: dict[tuple, list[str]] = {}
        for r in rows.itertuples():
            if r.corruption == "clean" and not clean_too:
                continue
            rb, rc = baseline[int(r.source_run_base)], candidate[int(r.source_run_cand)]
            vb, vc = _field(rb, name, r.dataset), _field(rc, name, r.dataset)
            if vb is None or vc is None or vb == vc:
                continue
            key = (rb.name, rc.name, str(vb), str(vc))
            bad.setdefault(key, []).append(f"{r.model}/{r.dataset}/{r.corruption}/{r.severity}")
        for (nb, nc, vb, vc), names in bad.items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            if name in ("suite", "samples"):  # hashes: long and meaningless to a reader
                vb, vc = vb[:12], vc[:12]
            out.append(f"baseline and candidate use different {label} on {len(names)} matched row(s) ({shown}): "
                       f"baseline run {nb} has {vb}, candidate run {nc} has {vc}; {meaning}, deltas include that")
    return out


def compare(baseline: list[Run], candidate: list[Run], *, max_drop: float = 0.5, alpha: float = 0.05,
            strict: bool = False) -> Comparison:
    if max_drop < 0:
        raise MambaBenchError(f"--max-drop must be ≥ 0, got {max_drop}")
    if not 0 < alpha < 1:
        raise MambaBenchError(f"--alpha must be in (0, 1), got {alpha}")
    warnings: list[str] = []
    bm, bp = _side(baseline, "baseline", warnings)
    cm, cp = _side(candidate, "candidate", warnings)
    for name, df in (("baseline", bm), ("candidate", cm)):
        missing = [k for k in KEYS + ["top1"] if df is None or k not in df.columns]
        if missing:
            raise MambaBenchError(f"the {name}'s metrics lack columns {missing}")
    both = bm.merge(cm, on=KEYS, how="outer", suffixes=("_base", "_cand"), indicator=True)
    only_b = both[both._merge == "left_only"][KEYS].reset_index(drop=True)
    only_c = both[both._merge == "right_only"][KEYS].reset_index(drop=True)
    rows = both[both._merge == "both"].drop(columns="_merge").reset_index(drop=True)
    if rows.empty:  # a gate that compared nothing must not pass
        raise MambaBenchError(f"no row matches: the baseline has {_what(bm)}, the candidate {_what(cm)}")
    warnings += _row_checks(rows, baseline, candidate)
    rows = rows.drop(columns=["source_run_base", "source_run_cand"])
    if warnings and strict:
        raise MambaBenchError("--strict: " + "; ".join(warnings))
    for m in METRICS:
        if f"{m}_base" in rows and f"{m}_cand" in rows:
            rows[f"d_{m}"] = rows[f"{m}_cand"] - rows[f"{m}_base"]
    pvals, pairs = [], []
    for r in rows.itertuples():
        p, n = None, 0
        if bp is not None and cp is not None:
            key = (bp.model == r.model) & (bp.dataset == r.dataset) & (bp.corruption == r.corruption) & \
                  (bp.severity == r.severity)
            key_c = (cp.model == r.model) & (cp.dataset == r.dataset) & (cp.corruption == r.corruption) & \
                    (cp.severity == r.severity)
            m = bp[key][["image_id", "correct"]].merge(cp[key_c][["image_id", "correct"]], on="image_id",
                                                        suffixes=("_b", "_c"))
            n = len(m)
            if n:
                b = int((m.correct_b & ~m.correct_c).sum())
                c = int((~m.correct_b & m.correct_c).sum())
                p = mcnemar_p(b, c)
        pvals.append(p)
        pairs.append(n)
    rows["paired_images"] = pairs
    rows["p_value"] = pd.array(pvals, dtype="Float64")
    drop = -rows["d_top1"]
    significant = rows["p_value"].isna() | (rows["p_value"] < alpha)
    rows["verdict"] = "ok"
    rows.loc[(drop > max_drop) & ~significant.fillna(True).astype(bool), "verdict"] = "within noise"
    rows.loc[(drop > max_drop) & significant.fillna(True).astype(bool), "verdict"] = "regression"
    rows.loc[rows["d_top1"] > max_drop, "verdict"] = "improved"
    return Comparison(rows, only_b, only_c, warnings, max_drop, alpha)


def to_markdown(c: Comparison) -> str:
    reg = c.regressions
    lines = [f"**mamba-bench compare**: {len(c.rows)} matched rows, {len(reg)} regression(s) "
             f"(top-1 drop > {c.max_drop} points and McNemar p < {c.alpha} where predictions exist)", ""]
    for w in c.warnings:
        lines.append(f"> warning: {w}")
    shown = c.rows[c.rows.verdict != "ok"]
    if len(shown):
        lines += ["| model | data set | corruption | severity | top-1 base | top-1 cand | Δ top-1 | p | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in shown.itertuples():
            lines.append(f"| {_md(r.model)} | {_md(r.dataset)} | {_md(r.corruption)} | {r.severity} | "
                         f"{fmt(r.top1_base, '.2f')} | {fmt(r.top1_cand, '.2f')} | {fmt(r.d_top1, '+.2f')} | "
                         f"{fmt(r.p_value, '.3g')} | {r.verdict} |")
    else:
        lines.append("No row moved by more than the threshold.")
    for label, df in (("only in the baseline", c.only_baseline), ("only in the candidate", c.only_candidate)):
        if len(df):
            lines += ["", f"Rows {label} ({len(df)}): " + ", ".join(
                f"{_md(r.model)}/{_md(r.dataset)}/{_md(r.corruption)}/{r.severity}" for r in df.itertuples())]
    return "\n".join(lines) + "\n"


def fmt(v: object, spec: str) -> str:
    """A number for a table, "—" when missing (None, NaN, pd.NA: e.g. top-5 of a ≤ 5-class set)."""
    return "—" if v is None or pd.isna(v) else format(float(v), spec)


def _md(s: object) -> str:
    return str(s).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def to_json(c: Comparison) -> dict:
    cols = KEYS + [x for x in c.rows.columns if x.endswith(("_base", "_cand")) or x.startswith("d_")] + \
        ["paired_images", "p_value", "verdict"]
    rows = c.rows[[x for x in cols if x in c.rows.columns]].astype(object).where(c.rows.notna(), None)
    return {"max_drop": c.max_drop, "alpha": c.alpha, "regressions": int(len(c.regressions)),
            "warnings": c.warnings, "rows": rows.to_dict("records"),
            "only_baseline": c.only_baseline.to_dict("records"), "only_candidate": c.only_candidate.to_dict("records")}

"""Reading run directories of every kind (corrupt, dg-train, finetune, explain) and report directories.

A report directory (written by ``mamba-bench report``) keeps a copy of each corruption run's tables
under ``data/<run>/`` so that it can serve as the baseline of ``mamba-bench compare`` later, after
the runs themselves are gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mamba_bench.errors import MambaBenchError


@dataclass
class Run:
    name: str
    path: Path
    kind: str                      # corrupt | dg | finetune | explain | repair
    manifest: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)


def _parquet(path: Path, required: bool = True) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            raise MambaBenchError(f"{path} is missing")
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise MambaBenchError(f"{path} is not a readable Parquet file ({type(exc).__name__}); "
                              "re-run the command that wrote it") from None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise MambaBenchError(f"{path} is not readable JSON") from None


def load_run(path: Path, name: str | None = None) -> Run:
    path = Path(path)
    name = name or path.name
    if not path.is_dir():
        raise MambaBenchError(f"{path} is not a directory")
    if (path / "manifest.json").exists():
        man = _json(path / "manifest.json")
        if man.get("command") in ("explain", "explain --repair"):
            return _explain_run(path, name, man)
        if man.get("kind") != "corrupt":
            raise MambaBenchError(f"{path}/manifest.json is not a mamba-bench corrupt manifest")
        if man.get("status") != "complete":
            raise MambaBenchError(f"{path} is still in progress (status {man.get('status')!r}): let it finish or "
                                  "re-run its command to resume it")
        tables = {"metrics": _parquet(path / "metrics.parquet"), "summary": _parquet(path / "summary.parquet")}
        preds = _parquet(path / "predictions.parquet", required=False)
        if preds is not None:
            tables["predictions"] = preds
        plots = {p: path / p for p in man.get("plots", []) if (path / p).exists()}
        return Run(name, path, "corrupt", man, tables, plots)
    if (path / "dg_run.json").exists():
        from mamba_bench.dg.run import results_frame

        df, pending = results_frame(path)
        if df.empty:
            raise MambaBenchError(f"{path} has no finished dg-train cell")
        man = {**_json(path / "dg_run.json"), "pending": pending}
        plots = {"dg_results.png": path / "dg_results.png"} if (path / "dg_results.png").exists() else {}
        tables = {"dg": df}
        gap = _parquet(path / "dg_gap.parquet", required=False)
        if gap is not None:
            tables["gap"] = gap
        return Run(name, path, "dg", man, tables, plots)
    if (path / "metrics.parquet").exists() and any((path / m / "config.json").exists()
                                                   for m in ("scratch", "full", "freeze")):
        df = _parquet(path / "metrics.parquet")
        plots = {"finetune.png": path / "finetune.png"} if (path / "finetune.png").exists() else {}
        return Run(name, path, "finetune", {}, {"finetune": df}, plots)
    raise MambaBenchError(f"{path} is not a mamba-bench run (no manifest.json, dg_run.json or finetune metrics)")


def _explain_run(path: Path, name: str, man: dict) -> Run:
    """An ``explain`` run (Mender scores, flip views) or an ``explain --repair`` run."""
    if man["command"] == "explain":
        tables = {"scores": _parquet(path / "scores.parquet")}
        plots = {p: path / p for p in man.get("plots", []) if (path / p).exists()}
        return Run(name, path, "explain", man, tables, plots)
    return Run(name, path, "repair", man, {"repair": _parquet(path / "repair.parquet")}, {})


def load_side(path: Path) -> list[Run]:
    """Runs of one side of a comparison: a report directory (its saved tables) or one run directory."""
    path = Path(path)
    if (path / "report.json").exists():
        index = _json(path / "report.json")
        runs = []
        for entry in index.get("runs", []):
            d = path / "data" / entry["name"]
            if entry["kind"] != "corrupt":
                continue
            man = _json(d / "manifest.json")
            tables = {"metrics": _parquet(d / "metrics.parquet"), "summary": _parquet(d / "summary.parquet")}
            preds = _parquet(d / "predictions.parquet", required=False)
            if preds is not None:
                tables["predictions"] = preds
            runs.append(Run(entry["name"], d, "corrupt", man, tables))
        if not runs:
            raise MambaBenchError(f"{path} (a report) holds no corruption-run tables to compare")
        return runs
    run = load_run(path)
    if run.kind != "corrupt":
        raise MambaBenchError(f"{path} is a {run.kind} run; compare works on corruption runs (or reports of them)")
    return [run]

"""The run directory: Parquet schema, manifest, atomic writes and resume.

A run directory holds ``manifest.json`` and long-format tables. While a run is going, each finished
(corruption, severity) cell is written as its own part file under ``parts/`` with write-to-temp +
``os.replace``, the metrics part last, so a part either exists whole or not at all. Re-running the
same command skips the cells whose part exists; the final tables are rebuilt from the parts, so an
interrupted and resumed run ends with exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mamba_bench.errors import RunDirError

# The one place the table schemas are written down; tests hold the code to it and the README quotes it.
METRICS_SCHEMA: dict[str, str] = {
    "model": "string", "dataset": "string", "corruption": "string", "severity": "int64",
    "n": "int64", "top1": "float64", "top5": "float64", "nll": "float64", "ece": "float64",
    "top1_drop": "float64",
}
PREDICTIONS_SCHEMA: dict[str, str] = {
    "model": "string", "dataset": "string", "corruption": "string", "severity": "int64",
    "image_id": "string", "label": "int64", "pred": "int64", "correct": "bool", "correct5": "bool",
    "confidence": "float64", "nll": "float64",
}
SUMMARY_SCHEMA: dict[str, str] = {
    "model": "string", "dataset": "string", "corruption": "string", "baseline": "string",
    "mean_top1": "float64", "ce": "float64", "relative_ce": "float64", "note": "string",
}

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def conform(df: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    """Exactly the schema's columns, in its order, with its dtypes (missing columns are an error)."""
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    return df[list(schema)].astype(schema).reset_index(drop=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fingerprint(config: dict[str, Any]) -> str:
    """Hash of everything that changes results (never batch size, workers or device)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("mamba_bench", "torch", "timm", "imgaug", "numpy", "pandas", "pyarrow", "PIL"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # an optional package missing is not an error here
            versions[mod] = None
    return versions


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class RunStore:
    """One run directory. ``begin`` either starts it or checks that it holds the same run."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out)
        self.parts = self.root / "parts"
        self.manifest_path = self.root / "manifest.json"
        self._previous: bytes | None = None  # the manifest ``begin`` found, for ``abandon``

    # -- lifecycle -------------------------------------------------------------------------
    def begin(self, config: dict[str, Any], fp: str, seed: int, device: str) -> dict[str, Any]:
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"--out {self.root} is a file, not a directory")
        self._previous = None
        if self.manifest_path.exists():
            try:
                self._previous = self.manifest_path.read_bytes()
                manifest = json.loads(self._previous)
            except (OSError, json.JSONDecodeError):
                raise RunDirError(f"{self.manifest_path} is unreadable; use another --out") from None
            if manifest.get("fingerprint") != fp:
                raise RunDirError(
                    f"--out {self.root} holds a different run (other models, data, corruptions or seed); "
                    "use another --out, or delete it to start over"
                )
        elif self.root.is_dir() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
            raise RunDirError(f"--out {self.root} is not empty and holds no mamba-bench run; use another --out")
        else:
            manifest = {
                "tool": "mamba-bench", "kind": "corrupt", "fingerprint": fp, "config": config,
                "seed": seed, "created": _now(), "sessions": [],
            }
        manifest.update({
            "status": "running", "command": sys.argv, "device": device, "versions": environment(),
            "git_commit": git_commit(),
        })
        manifest["sessions"].append({"started": _now(), "device": device})
        atomic_write_json(self.manifest_path, manifest)
        self.manifest = manifest
        return manifest

    def abandon(self) -> None:
        """Put back the manifest ``begin`` found: a session refused before computing anything
        leaves the run as it was (a complete run stays complete)."""
        if self._previous is not None:
            atomic_write_bytes(self.manifest_path, self._previous)

    def update_manifest(self, **fields: Any) -> None:
        self.manifest.update(fields)
        atomic_write_json(self.manifest_path, self.manifest)

    # -- cells -----------------------------------------------------------------------------
    @staticmethod
    def cell_key(corruption: str, severity: int) -> str:
        return f"{_SAFE.sub('_', corruption)}@{severity}"

    def done_cells(self) -> set[str]:
        if not self.parts.is_dir():
            return set()
        return {p.name[len("metrics-"):-len(".parquet")] for p in self.parts.glob("metrics-*.parquet")}

    def write_cell(self, key: str, metrics: pd.DataFrame, predictions: pd.DataFrame | None) -> None:
        if predictions is not None:
            atomic_write_parquet(self.parts / f"predictions-{key}.parquet", predictions)
        atomic_write_parquet(self.parts / f"metrics-{key}.parquet", metrics)  # the commit marker: last

    def read_parts(self, kind: str, keys: list[str]) -> pd.DataFrame:
        frames = [pd.read_parquet(self.parts / f"{kind}-{k}.parquet") for k in keys]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_table(self, name: str, df: pd.DataFrame, schema: dict[str, str]) -> Path:
        path = self.root / name
        atomic_write_parquet(path, conform(df, schema))
        return path

    def finish(self, **fields: Any) -> None:
        self.manifest["sessions"][-1]["finished"] = _now()
        self.update_manifest(status="complete", **fields)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

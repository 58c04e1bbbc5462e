"""``mamba-bench materialize``: write a corrupted evaluation set to disk once, evaluate from it later.

The RobustBench / ImageNet-C way: ``OUT/<corruption>/<severity>/<image id>.png`` (the clean images
under ``OUT/clean/0/``), lossless PNG of exactly the pixels that on-the-fly corruption makes (the
preprocessed image, corrupted with the per-image seed), and ``OUT/materialized.json`` with the data
set, the suite (name and SHA-256), the seed and every sample. ``mamba-bench corrupt --data OUT``
then reads the corrupted images instead of making them, with identical results (tested).

A run that stops half-way resumes: each PNG is written to a temporary name and renamed, the
manifest is written last, and a rerun skips the files that are already there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from mamba_bench.corruptions import Corruption, load_suite
from mamba_bench.data.materialized import KIND, MANIFEST, cell_dir, image_file
from mamba_bench.errors import MambaBenchError, RunDirError
from mamba_bench.eval.corrupt import _CellImages, cell_loader
from mamba_bench.results.store import atomic_write_json


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    Image.fromarray(img).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


class _Writer(_CellImages):
    """Item k = (cell, image): the benchmark's corrupted image, written as one PNG in a DataLoader
    worker (skipped when a finished file is there); returns 1 if written."""

    def __init__(self, out: Path, images: np.ndarray, ids: list[str], cells: list[tuple[Corruption | None, int]],
                 seed: int):
        super().__init__(images, ids, cells, seed)
        self.out = out

    def __getitem__(self, k: int) -> int:
        c, i = divmod(k, len(self.ids))
        corruption, severity = self.cells[c]
        path = self.out / cell_dir(corruption.name if corruption is not None else "clean", severity) \
            / image_file(self.ids[i])
        if path.is_file():
            return 0
        _write_png(path, super().__getitem__(k).numpy())
        return 1


def materialize(data: str, out: str | os.PathLike, *, corruptions="all", severities="all", per_class: int | None = None,
                seed: int = 0, labels: str | None = None, suite: str | None = None, workers: int | None = None,
                on_progress=None) -> dict:
    """Write the clean and corrupted images of ``data``; returns the manifest."""
    from mamba_bench.data import open_dataset
    from mamba_bench.eval.corrupt import _load_clean, default_workers

    t0 = time.perf_counter()
    out = Path(out)
    s = load_suite(suite)
    chosen = s.select(corruptions)
    cells: list[tuple[Corruption | None, int]] = [(None, 0)]
    for c in chosen:
        cells += [(c, sev) for sev in s.severities(c, severities)]
    ds = open_dataset(data, per_class=per_class, seed=seed, labels=labels)
    if ds.layout == "materialized":
        raise MambaBenchError(f"{data} is already a materialized set; materialize the original images")
    config = {
        "data": str(Path(data).resolve()) if Path(data).exists() else data, "labels": labels,
        "per_class": per_class, "seed": seed, "suite": {"name": s.name, "sha256": s.sha256},
        "cells": [[c.name if c else "clean", sev] for c, sev in cells],
    }
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("config") == config:
            return old  # already complete
        raise RunDirError(f"{out} holds another materialized set ({MANIFEST} differs); choose another --out")
    if out.exists() and any(p for p in out.iterdir() if p.name != ".partial.json"):
        partial = out / ".partial.json"
        if not partial.is_file() or json.loads(partial.read_text()) != config:
            raise RunDirError(f"{out} is not empty and is not an unfinished materialize of the same set; "
                              "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / ".partial.json", config)
    workers = default_workers() if workers is None else workers
    images, keep, skipped = _load_clean(ds, workers)
    ids = [ds.samples[i].image_id for i in keep]
    files = [image_file(i) for i in ids]
    if len(set(files)) != len(files):
        dup = next(f for f in files if files.count(f) > 1)
        raise MambaBenchError(f"two images of {data} would both be written as {dup} (same name, another suffix); "
                              "rename one of them")
    writer = _Writer(out, images, ids, cells, seed)
    tasks = [list(range(a, min(a + 16, len(writer)))) for a in range(0, len(writer), 16)]
    loader = cell_loader(writer, tasks, workers=workers, collate=sum)
    written = 0
    for k in loader:
        written += k
        if on_progress is not None:
            on_progress(16)
    manifest = {
        "kind": KIND, "version": 1, "config": config, "format": "png",
        "data": {"name": ds.name, "root": ds.root, "layout": ds.layout, "num_classes": ds.num_classes,
                 "class_names": ds.class_names, "class_ids": ds.class_ids, "image_size": ds.image_size,
                 "resize": ds.resize, "notes": ds.notes},
        "suite": {"name": s.name, "path": str(s.path), "sha256": s.sha256},
        "seed": seed, "cells": config["cells"],
        "samples": [{"image_id": ids[k], "label": int(ds.samples[i].label), "file": image_file(ids[k])}
                    for k, i in enumerate(keep)],
        "skipped": skipped, "images_written": written, "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(manifest_path, manifest)
    (out / ".partial.json").unlink(missing_ok=True)
    return manifest

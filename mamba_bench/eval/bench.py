"""``mamba-bench bench corrupt``: what the corruption pipeline costs, measured side by side in one run.

Two numbers: milliseconds per image for each corruption at 224 px (one process), and the end-to-end
throughput of a multi-model run (corrupt once, feed every model) divided by the throughput of the
same models on ready-made clean batches. Weights do not change speed, so models are randomly
initialised and nothing is downloaded.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mamba_bench.corruptions import Suite, apply_corruption, load_suite
from mamba_bench.eval.corrupt import LoadedModel, compile_models, default_workers, iterate_cells, resolve_device
from mamba_bench.models.preprocess import to_model_input
from mamba_bench.models.registry import get_spec
from mamba_bench.results.store import atomic_write_json, environment

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def bench_photos(n: int, size: int = 224) -> tuple[np.ndarray, list[str]]:
    """``n`` real photos shipped with scikit-image, eval-preprocessed to ``size`` px (cycled)."""
    import skimage.data
    from PIL import Image

    from mamba_bench.data import eval_preprocess

    base = []
    for name in _PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # a data file not bundled with this scikit-image build
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            base.append((name, eval_preprocess(Image.fromarray(arr[..., :3]), image_size=size)))
    imgs = [base[i % len(base)][1] for i in range(n)]
    ids = [f"{base[i % len(base)][0]}/{i}" for i in range(n)]
    return np.stack(imgs), ids


def bench_corrupt(*, models: list[str], images: int = 16, severity: int = 3, repeats: int = 3,
                  batch_size: int = 16, workers: int | None = None, device: str = "auto",
                  compile: bool = False, from_disk: bool = True, out: Path | None = None,
                  suite: str | None = None) -> dict:
    """``suite``: a shipped suite's name or a file (default imgaug21). Every corruption of the suite is
    timed (ImageNet-C's extras too); the pipeline runs the cells ``--corruptions all`` would."""
    suite = load_suite(suite)
    dev = resolve_device(device)
    workers = default_workers() if workers is None else workers
    photos, ids = bench_photos(images)

    ms: dict[str, float] = {}
    for c in suite.corruptions.values():
        sev = c.severities[0] if c.severity_free else severity
        apply_corruption(c, sev, photos[0], seed=0, image_id="warm-up")
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for img, iid in zip(photos, ids, strict=True):
                apply_corruption(c, sev, img, seed=0, image_id=iid)
            best = min(best, time.perf_counter() - t)
        ms[c.name] = best / len(photos) * 1000

    loaded = []
    for name in models:
        spec = get_spec(name)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = spec.build().eval().to(dev)
        if dev.type == "cuda":
            module.to(memory_format=torch.channels_last)
        loaded.append(LoadedModel(name, spec, module, None, None))
    if compile:
        compile_models(loaded, batch_size, dev)
    labels = torch.zeros(len(ids), dtype=torch.long)
    clean = torch.from_numpy(photos)
    if dev.type == "cuda":
        clean = clean.pin_memory()  # as the pipeline's batches are

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cells = [(c, c.severities[0] if c.severity_free else severity) for c in suite.default]
    # Model-only: as many images as the end-to-end run (one pass over the clean images per cell), the
    # models taking turns each pass, total time: the two figures are measured alike, not a best
    # round against a whole run (on a drifting machine that alone cost ~10 % of the ratio).
    amp = dev.type == "cuda"
    seconds = {m.name: 0.0 for m in loaded}
    with torch.inference_mode():
        for m in loaded:
            for _ in range(2):  # warm-up in the timed precision (kernel selection, autotuning)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    m.module(to_model_input(clean[:batch_size], m.spec, dev))
        for _ in cells:
            for m in loaded:
                sync()
                t = time.perf_counter()
                for a in range(0, len(clean), batch_size):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                        m.module(to_model_input(clean[a:a + batch_size], m.spec, dev))
                sync()
                seconds[m.name] += time.perf_counter() - t
    model_only = {name: len(cells) * len(clean) / sec for name, sec in seconds.items()}
    combined = len(cells) * len(clean) / sum(seconds.values())

    def through(models_: list[LoadedModel], reader=None) -> float:
        sync()
        t = time.perf_counter()
        for _ in iterate_cells(photos, ids, labels, cells, list(range(len(cells))), models_, seed=0,
                               batch_size=batch_size, workers=workers, device=dev, reader=reader):
            pass
        sync()
        return len(cells) * len(ids) / (time.perf_counter() - t)

    feed = through([])  # the input pipeline alone: the most images/s the workers can hand over
    e2e = through(loaded)
    disk = _from_disk_ips(photos, ids, cells, lambda reader: through(loaded, reader)) if from_disk else None
    res = {
        "ms_per_image": ms,
        "pipeline": {
            "models": models, "cells": len(cells), "images": len(ids), "batch_size": batch_size,
            "workers": workers, "device": str(dev), "compile": compile, "model_only_ips": model_only,
            "input_pipeline_ips": feed,
            "model_only_combined_ips": combined, "end_to_end_ips": e2e, "ratio": e2e / combined,
            "from_disk_ips": disk, "from_disk_ratio": None if disk is None else disk / combined,
            "projected_study": project_study(e2e, suite),
        },
        "suite": {"name": suite.name, "sha256": suite.sha256, "severity": severity},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor(), **environment()},
    }
    if out is not None:
        atomic_write_json(Path(out) / "bench_corrupt.json", res)
    return res


def project_study(ips: float, suite: Suite, per_class: int = 15, classes: int = 1000) -> dict[str, float]:
    """Minutes for the report's study at ``ips`` images/s through every model: clean + every corruption
    at one severity (the report's 21 transformations), and with all 5 severities (1 + 18 × 5 + 2
    severity-free = 93 cells). The MISSION's targets on one H100: 15 min and 1 h."""
    corruptions = suite.default  # what `--corruptions all` runs
    one, every = 1 + len(corruptions), 1 + sum(len(c.severities) for c in corruptions)
    images = per_class * classes
    return {"cells_one_severity": one, "minutes_one_severity": images * one / ips / 60,
            "cells_all_severities": every, "minutes_all_severities": images * every / ips / 60}


def _from_disk_ips(photos, ids, cells, run) -> float:
    """End-to-end images/s when the corrupted images come from a materialized set (PNG reads)."""
    import tempfile

    from mamba_bench.data.materialized import DiskReader, cell_dir, image_file
    from mamba_bench.eval.materialize import _write_png

    with tempfile.TemporaryDirectory(prefix="mamba-bench-disk-") as d:
        root = Path(d)
        for c, sev in cells:  # written untimed, as `materialize` would have done once
            for img, iid in zip(photos, ids, strict=True):
                _write_png(root / cell_dir(c.name, sev) / image_file(iid),
                           apply_corruption(c, sev, img, seed=0, image_id=iid))
        return run(DiskReader(root, {iid: image_file(iid) for iid in ids}))

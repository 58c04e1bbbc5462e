"""The corruption benchmark: one function behind ``mamba-bench corrupt``.

Data flow: data set → clean preprocessed images (decoded once) → for each (corruption, severity)
cell, corrupted batches made once by DataLoader workers → every model of the run → per-image
metrics → one part file per cell → final tables and plots. Corruption of an image depends only on
(seed, image id, corruption, severity), so batch size, worker count and device never change it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mamba_bench.corruptions import Corruption, Suite, apply_corruption, load_suite
from mamba_bench.data import ImageSet, open_dataset
from mamba_bench.errors import CheckpointError, MambaBenchError
from mamba_bench.eval.distributed import Dist, init_distributed, merge_shards, shard_path, write_shard
from mamba_bench.eval.metrics import add_clean_drop, corruption_errors, nonfinite, per_image, summarize
from mamba_bench.models.preprocess import to_model_input
from mamba_bench.models.registry import ModelSpec, get_spec, spec_for_weights
from mamba_bench.models.weights import file_sha256, load_weights_into, release_ref
from mamba_bench.results.store import (
    METRICS_SCHEMA,
    PREDICTIONS_SCHEMA,
    SUMMARY_SCHEMA,
    RunStore,
    conform,
    fingerprint,
)


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass
class CorruptConfig:
    """Options of ``mamba-bench corrupt`` (see ``--help`` for each)."""

    models: list[str]
    #: one data set, or several (each evaluated on its cells, the ``dataset`` column telling them apart)
    data: str | list[str]
    out: str
    weights: list[str] = field(default_factory=list)
    labels: str | None = None
    per_class: int | None = None
    seed: int = 0
    corruptions: str | list[str] = "all"
    severities: str | list[int] = "all"
    suite: str | None = None
    baseline: str | None = None
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    save_predictions: bool = False
    random_init: bool = False
    cache_dir: str | None = None
    progress: bool = True
    compile: bool = False
    #: the clean ImageNet validation images a released set (ImageNet-C, ...) was made from
    clean_data: str | None = None
    #: an external baseline table (a run's metrics.parquet or a CSV); --baseline then names its model
    baseline_table: str | None = None


@dataclass
class LoadedModel:
    name: str
    spec: ModelSpec
    module: torch.nn.Module
    weights: str | None
    weights_sha256: str | None


@dataclass
class RunResult:
    out: Path
    metrics: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise MambaBenchError(f"unknown --device {device!r}; valid: cpu, cuda, auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MambaBenchError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def pair_weights(models: Sequence[str], weights: Sequence[str]) -> list[str | None]:
    """``--weights`` given once belongs to the last ``--model``; given per model, they pair in order."""
    if not weights:
        return [None] * len(models)
    if len(weights) == len(models):
        return list(weights)
    if len(weights) == 1:
        return [None] * (len(models) - 1) + [weights[0]]
    raise MambaBenchError(
        f"{len(weights)} --weights for {len(models)} --model: give one (for the last model) or one per model"
    )


def build_seeded(spec: ModelSpec, num_classes: int, seed: int) -> torch.nn.Module:
    """Initialise a model from ``(seed, name)`` alone, leaving the global RNG as it was."""
    import zlib

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(spec.name.encode()))
        return spec.build(num_classes)


def load_models(names: Sequence[str], weights: Sequence[str], num_classes: int, *, random_init: bool,
                cache_dir: str | None, dataset: str, seed: int = 0) -> list[LoadedModel]:
    if len(set(names)) != len(names):
        raise MambaBenchError(f"a --model is named twice: {', '.join(names)}")
    specs = [get_spec(n) for n in names]  # every name checked before any weights are fetched
    loaded = []
    for name, spec, ref in zip(names, specs, pair_weights(names, weights), strict=True):
        spec = spec_for_weights(spec, ref)
        if ref is None and not random_init:
            if not spec.has_release or spec.num_classes != num_classes:
                raise CheckpointError(
                    f"model {name} has no released weights for {dataset} ({num_classes} classes); pass "
                    "--weights FILE (or --random-init for a smoke test)"
                )
            ref = release_ref(spec)
        module = build_seeded(spec, num_classes, seed)
        sha = None
        if ref is not None:
            path = load_weights_into(module, ref, spec, cache_dir=cache_dir)
            sha = file_sha256(path)
        loaded.append(LoadedModel(name, spec, module.eval(), ref, sha))
    return loaded


def match_preprocessing(ds: ImageSet, models: list[LoadedModel]) -> dict | None:
    """Preprocess ``ds`` the way its models were trained when that is not the ImageNet crop.

    Every model sees the same clean pixels (corrupted once per cell), so the models of one run must
    share their preprocessing: dg-train checkpoints (images stretched to a square) go together, at
    their common input size; mixing them with center-crop models is an error. Returns the
    preprocessing for the run's fingerprint (None: the usual ImageNet crop, nothing changed).
    """
    stretch = [m for m in models if m.spec.resize_mode == "stretch"]
    if not stretch:
        return None
    if len(stretch) < len(models):
        crop = next(m for m in models if m.spec.resize_mode != "stretch")
        raise MambaBenchError(f"{stretch[0].name} was trained on whole images stretched to a square (dg-train) and "
                              f"{crop.name} on center crops; every model of a run sees the same clean images: "
                              "run them separately")
    kinds = sorted({(m.spec.input_size, m.spec.interpolation) for m in stretch})
    if len(kinds) > 1:
        raise MambaBenchError("these dg-train checkpoints were trained at different image sizes or interpolations "
                              f"({', '.join(f'{s} px {i}' for s, i in kinds)}); run them separately")
    size, interpolation = kinds[0]
    if ds.arrays is None:  # embedded data are already square at their own size
        ds.resize_mode, ds.image_size, ds.interpolation = "stretch", size, interpolation
    return {"resize_mode": "stretch", "image_size": size, "interpolation": interpolation}


class _CellImages(torch.utils.data.Dataset):
    """Index k = cell * N + i → image i under the cell's corruption; runs in DataLoader workers."""

    def __init__(self, images: np.ndarray, ids: list[str], cells: list[tuple[Corruption | None, int]],
                 seed: int, reader=None):
        self.images, self.ids, self.cells, self.seed, self.reader = images, ids, cells, seed, reader

    def __len__(self) -> int:
        return len(self.cells) * len(self.ids)

    def __getitem__(self, k: int) -> torch.Tensor:
        c, i = divmod(k, len(self.ids))
        corruption, severity = self.cells[c]
        img = self.images[i]
        if corruption is not None:
            if self.reader is not None:  # a materialized set: the corrupted image is on disk
                img = self.reader(corruption.name, severity, self.ids[i])
            else:
                img = apply_corruption(corruption, severity, img, seed=self.seed, image_id=self.ids[i])
        return torch.from_numpy(np.ascontiguousarray(img))


def _load_clean(ds: ImageSet, workers: int) -> tuple[np.ndarray, list[int], list[dict]]:
    """Decode + preprocess every image once; unusable files are skipped and recorded."""
    from mamba_bench.data.images import ImageReadError

    def one(i: int):
        try:
            return ds.load(i), None
        except ImageReadError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, range(len(ds))))
    keep = [i for i, (img, _) in enumerate(results) if img is not None]
    skipped = [{"image_id": ds.samples[i].image_id, "reason": err}
               for i, (img, err) in enumerate(results) if img is None]
    if not keep:
        raise MambaBenchError(f"none of the {len(ds)} images in {ds.root} could be read (first: "
                              f"{skipped[0]['reason'] if skipped else '?'})")
    images = np.stack([results[i][0] for i in keep])
    return images, keep, skipped


CHUNK = 16  # images per DataLoader task (or a batch / workers if more): a batch is corrupted by several workers


@contextlib.contextmanager
def _one_thread_each():
    """Processes forked inside get one OpenCV thread and one BLAS/OpenMP thread each.

    Both libraries start a thread per core in every process, so N corruption workers on a C-core
    machine would run N × C threads for the same work. The limits are set here, in the parent,
    around the fork and restored after it: ``cv2.setNumThreads`` called in a forked child can
    deadlock on the pool the parent's threads left behind (3 hangs in 4 tries here).
    """
    import cv2  # imgaug's own dependency
    from threadpoolctl import threadpool_limits

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        cv2.setNumThreads(before)


def cell_loader(dataset: torch.utils.data.Dataset, tasks: list[list[int]], *, workers: int,
                device: torch.device = torch.device("cpu"), lookahead: int = 2, collate=torch.stack):
    """An iterator over ``collate([dataset[i] for i in task])`` for each task, in order, made by
    ``workers`` forked processes (none: in this one) holding ``lookahead`` tasks each in flight;
    pinned memory for a CUDA ``device``."""
    workers = workers if tasks else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=tasks, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", multiprocessing_context="fork" if workers and os.name == "posix" else None,
        prefetch_factor=lookahead if workers else None,
    )
    if not workers:
        return iter(loader)
    with _one_thread_each():
        return iter(loader)  # the workers are forked here


def iterate_cells(images: np.ndarray, ids: list[str], labels: torch.Tensor,
                  cells: list[tuple[Corruption | None, int]], pending: list[int], models: list[LoadedModel], *,
                  seed: int, batch_size: int, workers: int, device: torch.device, on_batch=None,
                  shard: tuple[int, int] = (0, 1), reader=None, backoff: list[dict] | None = None,
                  class_subset: Sequence[int] | None = None):
    """Yield ``(cell index, image positions, {model: per-image arrays})`` for each pending cell, in order.

    Each corrupted batch is made once (in DataLoader workers, overlapping with the models' compute)
    and fed to every model before the next one is taken. Workers corrupt chunks of ``CHUNK`` images
    (at least a batch / workers), so one batch of a slow corruption is spread over several workers
    instead of holding up the queue in one; the chunks are joined on the device. Per-image outputs stay on the
    device until the cell is complete: nothing waits for the accelerator between batches.

    With ``shard=(rank, world)`` this process takes every world-th batch of each cell, starting at
    its rank: the batches are the ones a single process would make, so per-image results do not
    depend on the number of processes.

    With ``class_subset`` (ImageNet-R/-A: 200 of the 1000 classes) the logits are restricted to those
    classes before any metric; ``labels`` are then positions in the subset, and the predictions are
    given back as class indices of the whole label space.
    """
    rank, world = shard
    n = len(ids)
    # split a batch no finer than the workers can share it: one worker gains nothing from chunks
    chunk = max(min(batch_size, CHUNK), -(-batch_size // workers)) if workers else batch_size
    plan = []
    for j in pending:
        cell_batches = [(j * n + a, min(a + batch_size, n) - a) for a in range(0, n, batch_size)]
        plan.append((j, cell_batches[rank::world]))
    tasks = [list(range(s + c, s + min(c + chunk, size))) for _, mine in plan for s, size in mine
             for c in range(0, size, chunk)]
    # the same look-ahead in images as two whole batches per worker
    stream = cell_loader(_CellImages(images, ids, cells, seed, reader), tasks, workers=workers, device=device,
                         lookahead=2 * -(-batch_size // chunk))
    limits: dict[str, int] = {}  # model → largest sub-batch that fitted after an out-of-memory
    backoff = [] if backoff is None else backoff
    on_device = labels.to(device)
    subset = None if class_subset is None else torch.as_tensor(list(class_subset), dtype=torch.long, device=device)
    with torch.inference_mode():
        for j, mine in plan:
            acc: dict[str, list[dict[str, torch.Tensor]]] = {m.name: [] for m in models}
            positions: list[int] = []
            for s, size in mine:
                chunks = [next(stream).to(device, non_blocking=True) for _ in range(0, size, chunk)]
                batch = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
                start = s - j * n
                y = on_device[start:start + size]
                for m in models:
                    x = to_model_input(batch, m.spec, device)
                    logits = forward_with_backoff(m, x, limits, backoff)
                    if subset is None:
                        acc[m.name].append(per_image(logits, y))
                    else:
                        per = per_image(logits[:, subset], y)
                        per["pred"] = subset[per["pred"]]
                        acc[m.name].append(per)
                positions += range(start, start + size)
                if on_batch is not None:
                    on_batch(size)
            yield j, np.asarray(positions, np.int64), {  # the one wait for the device per cell
                name: {k: torch.cat([b[k] for b in parts]).cpu().numpy() for k in parts[0]} if parts else {}
                for name, parts in acc.items()}


def forward_with_backoff(m: LoadedModel, x: torch.Tensor, limits: dict[str, int], events: list[dict]) -> torch.Tensor:
    """Logits of ``x``; on out-of-memory the batch is split in halves (and stays split for this model).

    Per-image outputs do not depend on the split (eval mode: no batch statistics), so a back-off
    changes speed, not results; each one is appended to ``events`` for the manifest.
    """
    size = limits.get(m.name, x.shape[0])
    while True:
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                if size >= x.shape[0]:
                    return m.module(x)
                return torch.cat([m.module(x[a:a + size]) for a in range(0, x.shape[0], size)])
        except torch.OutOfMemoryError:
            if size <= 1:
                raise MambaBenchError(f"out of memory running {m.name} even one image at a time; use a device with "
                                      "more memory (finished cells are kept)") from None
            new = max(1, min(size, x.shape[0]) // 2)
            events.append({"model": m.name, "batch_size": min(size, x.shape[0]), "retried_with": new})
            limits[m.name] = size = new
            if x.device.type == "cuda":
                torch.cuda.empty_cache()


def compile_models(models: list[LoadedModel], batch_size: int, device: torch.device) -> None:
    """``torch.compile`` each model and compile it now, on a batch of the run's shape, so a failure
    (no C++ compiler, an unsupported op) is one clear error before any cell runs."""
    for m in models:
        compiled = torch.compile(m.module)
        x = torch.zeros(batch_size, 3, m.spec.input_size, m.spec.input_size, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                compiled(x)
        except torch.OutOfMemoryError:
            raise MambaBenchError(f"out of memory compiling {m.name} at --batch-size {batch_size}; pass a smaller "
                                  "one") from None
        except Exception as exc:  # noqa: BLE001 - whatever the compiler stack raises becomes one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MambaBenchError(f"torch.compile failed for {m.name} ({type(exc).__name__}: {first[:200]}); "
                                  "run without --compile") from None
        m.module = compiled


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):  # images per second over the whole pipeline
            return Text(f"{task.speed:,.0f} img/s" if task.speed else "… img/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def run_corrupt(cfg: CorruptConfig) -> RunResult:
    """Run (or resume) the corruption benchmark described by ``cfg``; returns the final tables."""
    t_start = time.perf_counter()
    if cfg.batch_size < 1:
        raise MambaBenchError("--batch-size must be at least 1")
    if cfg.per_class is not None and cfg.per_class < 1:
        raise MambaBenchError("--per-class must be at least 1")
    workers = default_workers() if cfg.workers is None else cfg.workers
    if workers < 0:
        raise MambaBenchError("--workers must be 0 or more")
    device = resolve_device(cfg.device)
    dist, device = init_distributed(device)
    try:
        return _run_corrupt(cfg, workers, device, dist, t_start)
    finally:
        dist.close()


Cell = tuple[Corruption | None, int]


@dataclass(frozen=True)
class ReleasedCorruption:
    """A corruption of a released set (ImageNet-C, ...): only its folder name; the images are on disk."""

    name: str


@dataclass
class EvalSet:
    """One data set of a run (the ``dataset`` column), the cells it is evaluated on, and its images."""

    name: str
    ds: ImageSet
    cells: list[Cell]
    reader: object | None = None  # corrupted images on disk: (corruption, severity, image id) → image
    key_prefix: str = ""  # "" in a run of one data set, so its part files keep their names
    clean: ImageSet | None = None  # where a released set's clean images come from (--clean-data)
    images: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)
    labels: torch.Tensor | None = None  # positions in ds.class_subset when the set has one
    skipped: list[dict] = field(default_factory=list)
    samples_sha256: str = ""

    def key(self, j: int) -> str:
        c, s = self.cells[j]
        return self.key_prefix + RunStore.cell_key(c.name if c else "clean", s)

    @property
    def num_scored_classes(self) -> int:
        return len(self.ds.class_subset) if self.ds.class_subset else self.ds.num_classes

    def record(self) -> dict:
        ds = self.ds
        return {"name": self.name, "root": ds.root, "layout": ds.layout, "images": len(ds), "usable": len(self.ids),
                "samples_sha256": self.samples_sha256, "num_classes": ds.num_classes,
                "scored_classes": self.num_scored_classes, "image_size": ds.image_size, "notes": ds.notes,
                **({"clean_data": self.clean.root} if self.clean is not None else {})}


def data_list(data: str | Sequence[str]) -> list[str]:
    return [data] if isinstance(data, str) else list(data)


def _names(corruptions: str | Sequence[str]) -> list[str] | None:
    """The corruption names asked for (comma-separated items split); None for ``all``."""
    items = [corruptions] if isinstance(corruptions, str) else list(corruptions)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    return None if names == ["all"] else names


def _suite_cells(suite: Suite, cfg: CorruptConfig, names: list[str] | None) -> list[Cell]:
    cells: list[Cell] = [(None, 0)]
    for c in suite.select("all" if names is None else names or ["clean"]):
        cells += [(c, s) for s in suite.severities(c, cfg.severities)]
    return cells


def _released_cells(ds: ImageSet, cfg: CorruptConfig, names: list[str] | None) -> list[Cell]:
    """The clean cell and the chosen cells of a released set, from what is on disk."""
    from mamba_bench.data.released import RELEASED_SETS

    held = ds.released.cells
    order = RELEASED_SETS[ds.released.set_name]
    names = ["all"] if names is None else names
    # 'all': ImageNet-C's 15 (its 4 extras by name or as 'extras', as in the imagenet-c suite), every
    # corruption of the others
    expanded = [c for n in names for c in ([c for c in order[:15] if c in held] if n == "all"
                                           else [c for c in order[15:] if c in held] if n == "extras" else [n])]
    if names:
        wanted = [n for n in dict.fromkeys(expanded) if n not in ("clean", "none")]
        missing = [c for c in wanted if c not in held]
        if missing:
            raise MambaBenchError(f"{ds.root} ({ds.name}) holds no {', '.join(missing)}; it holds "
                                  f"{', '.join(held) or 'nothing'}")
        names = [c for c in order if c in wanted]
    cells: list[Cell] = [(None, 0)]
    for c in names:
        sevs = held[c] if cfg.severities == "all" else list(cfg.severities)
        missing = [s for s in sevs if s not in held[c]]
        if missing:
            raise MambaBenchError(f"{ds.root}/{c} holds no severity {', '.join(map(str, missing))} (it holds "
                                  f"{', '.join(map(str, held[c]))}); choose --severities it has")
        cells += [(ReleasedCorruption(c), s) for s in sevs]
    return cells


def _open_sets(cfg: CorruptConfig, suite: Suite) -> list[EvalSet]:
    """Every ``--data`` of the run with its cells: the suite's (a plain set), its own (a released set),
    or clean only (a natural-shift set); names must be distinct, as the ``dataset`` column tells them apart."""
    entries = data_list(cfg.data)
    if not entries:
        raise MambaBenchError("no --data given")
    opened = [open_dataset(e, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels) for e in entries]
    names = _names(cfg.corruptions)
    sets = []
    for entry, ds in zip(entries, opened, strict=True):
        clean = None
        mine = names
        if names is not None and len(opened) > 1:  # several sets: each takes the names it has
            has = ({"all", "extras", *ds.released.cells} if ds.released is not None
                   else {"all", *suite.corruptions, *suite.groups})
            mine = [n for n in names if n in has]
        if ds.released is not None:
            cells = _released_cells(ds, cfg, mine)
            if cfg.clean_data is None:
                raise MambaBenchError(f"{entry} ({ds.name}) holds no clean images: pass --clean-data DIR, the ImageNet "
                                      "validation images it was made from, so clean accuracy is measured in the same "
                                      "run on the same images")
            clean = open_dataset(cfg.clean_data, labels=cfg.labels)
        elif ds.natural_shift:
            cells = [(None, 0)]
        else:
            cells = _suite_cells(suite, cfg, mine)
        sets.append(EvalSet(ds.name, ds, cells, clean=clean))
    if names is not None and len(opened) > 1:
        known = set(suite.corruptions) | set(suite.groups) | {"all", "extras"} | {
            c for ds in opened if ds.released is not None for c in ds.released.cells}
        unknown = [n for n in names if n not in known | {"clean", "none"}]
        if unknown:
            raise MambaBenchError(f"no --data set has the corruption {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MambaBenchError(f"two --data sets are both named {twice[0]}: give one as LAYOUT=DIR "
                              "(e.g. imagenet-sketch=DIR) or run them separately")
    if len(sets) > 1:
        for s in sets:
            s.key_prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", s.name) + "~"
    classes = sorted({s.ds.num_classes for s in sets})
    if len(classes) > 1:
        raise MambaBenchError(f"the --data sets have different label spaces ({', '.join(map(str, classes))} classes); "
                              "every model of a run is scored on each of them: run them separately")
    return sets


def _prepare_readers(cfg: CorruptConfig, sets: list[EvalSet], models: list[LoadedModel], suite: Suite) -> dict | None:
    """Preprocessing the models need (dg-train checkpoints) and the on-disk readers of each set."""
    preprocess = None
    for s in sets:
        p = match_preprocessing(s.ds, models)
        preprocess = preprocess or p
        if s.ds.materialized is not None or s.ds.released is not None:
            if p is not None:
                raise MambaBenchError(f"{s.ds.root} holds center-cropped images; dg-train checkpoints need the "
                                      "original images (stretched to a square): evaluate them on the original data")
        if s.ds.materialized is not None:
            from mamba_bench.data.materialized import DiskReader, check_run

            check_run(s.ds.materialized, s.ds.root, cfg.seed, suite.sha256, suite.name, s.cells, cfg.per_class)
            s.reader = DiskReader(s.ds.root, {x["image_id"]: x["file"] for x in s.ds.materialized["samples"]})
        elif s.ds.released is not None:
            from mamba_bench.data.released import ReleasedReader

            s.reader = ReleasedReader(s.ds.root, s.ds.image_size)
    return preprocess


def _result_config(cfg: CorruptConfig, sets: list[EvalSet], suite: Suite, models: list[LoadedModel],
                   preprocess: dict | None) -> dict:
    """Only what changes results goes into the fingerprint: never batch size, workers or device."""
    def where(d: str) -> str:
        return str(Path(d).resolve()) if Path(d).exists() else d

    entries = data_list(cfg.data)
    config = {
        "models": [{"name": m.name, "weights": m.weights, "weights_sha256": m.weights_sha256} for m in models],
        "data": where(entries[0]) if len(entries) == 1 else [where(d) for d in entries],
        "labels": cfg.labels, "per_class": cfg.per_class, "seed": cfg.seed,
        "suite": {"name": suite.name, "sha256": suite.sha256},
        "cells": [[c.name if c else "clean", s] for c, s in sets[0].cells],
        "baseline": cfg.baseline, "save_predictions": cfg.save_predictions,
    }
    if len(sets) > 1:  # a run of one set keeps the fingerprint it always had
        config["cells"] = {s.name: [[c.name if c else "clean", v] for c, v in s.cells] for s in sets}
    if cfg.clean_data is not None:
        config["clean_data"] = where(cfg.clean_data)
    if cfg.baseline_table is not None:
        config["baseline_table"] = where(cfg.baseline_table)
    if preprocess is not None:  # only when not the ImageNet crop, so earlier runs keep their fingerprint
        config["preprocess"] = preprocess
    return config


def _begin(store: RunStore, config: dict, cfg: CorruptConfig, dist: Dist, device: torch.device) -> dict:
    """Rank 0 starts or resumes the run directory; every rank stops on its bad input, and every rank must see it."""
    error, manifest = None, None
    if dist.main:
        try:
            manifest = store.begin(config, fingerprint(config), cfg.seed, str(device))
        except MambaBenchError as exc:
            error = str(exc)
    dist.stop_on_main_error(error)  # every rank stops on rank 0's bad input (and waits for the manifest)
    blind = [r for r, sees in enumerate(dist.gather(store.manifest_path.is_file())) if not sees]
    if blind:  # e.g. nodes whose --out is a local disk: rank 0 could never merge their shards
        raise MambaBenchError(f"rank(s) {', '.join(map(str, blind))} cannot see the manifest rank 0 wrote to "
                              f"{cfg.out}: with several machines, --out must be on a file system every node sees")
    if not dist.main:
        manifest = store.manifest = json.loads(store.manifest_path.read_text())
    return manifest


def _load_images(s: EvalSet, workers: int) -> None:
    """Decode the clean images once (a released set's from --clean-data, matched by file name)."""
    source = s.ds
    if s.clean is not None:
        source = _clean_counterparts(s.ds, s.clean)
    images, keep, s.skipped = _load_clean(source, workers)
    s.images = images
    s.ids = [s.ds.samples[i].image_id for i in keep]
    full = [s.ds.samples[i].label for i in keep]
    if s.ds.class_subset:
        position = {c: p for p, c in enumerate(s.ds.class_subset)}
        outside = [s.ids[i] for i, y in enumerate(full) if y not in position]
        if outside:
            raise MambaBenchError(f"{s.ds.root}: {outside[0]} is labelled outside the set's {len(position)} classes")
        s.labels = torch.tensor([position[y] for y in full], dtype=torch.long)
    else:
        s.labels = torch.tensor(full, dtype=torch.long)
    s.samples_sha256 = hashlib.sha256("\n".join(f"{i}\t{y}" for i, y in zip(s.ids, full, strict=True))
                                      .encode()).hexdigest()


def _clean_counterparts(released: ImageSet, clean: ImageSet) -> ImageSet:
    """``clean`` re-ordered to the released set's samples: the same file name (stem) and label."""
    by_stem = {Path(x.image_id).stem: x for x in clean.samples}
    samples, missing = [], []
    for x in released.samples:
        match = by_stem.get(Path(x.image_id).stem)
        if match is None or match.label != x.label:
            missing.append(x.image_id)
        else:
            samples.append(match)
    if missing:
        raise MambaBenchError(f"--clean-data {clean.root} lacks the clean image of {len(missing)} of the "
                              f"{len(released)} images of {released.root} (e.g. {missing[0]}, matched by file name and "
                              "class): pass the ImageNet validation images the set was made from")
    return replace(clean, samples=samples, arrays=None)


def _check_unchanged(store: RunStore, manifest: dict, sets: list[EvalSet], cfg: CorruptConfig, dist: Dist) -> None:
    """Refuse a resume after files under --data were added, removed or repaired since cells were computed."""
    error = None
    if dist.main:
        before = {d["name"]: d for d in manifest.get("datasets") or []} or {sets[0].name: manifest.get("data") or {}}
        started = store.done_cells() or any(store.parts.glob("shard-*.npz"))  # torchrun: shards first
        for s in sets:
            old = before.get(s.name, {})
            if old.get("samples_sha256", s.samples_sha256) != s.samples_sha256 and started:
                which = f" of {s.name}" if len(sets) > 1 else ""
                error = (f"--out {cfg.out} holds cells computed on other images ({old.get('usable')} usable then, "
                         f"{len(s.ids)} now, or other files{which}): {s.ds.root} changed since; use another --out, "
                         "or delete it to start over")
                store.abandon()
                break
    dist.stop_on_main_error(error)


def _record_session(store: RunStore, cfg: CorruptConfig, sets: list[EvalSet], models: list[LoadedModel],
                    suite: Suite, workers: int, device: torch.device, dist: Dist) -> None:
    if not dist.main:
        return
    records = [s.record() for s in sets]
    store.update_manifest(
        execution={"batch_size": cfg.batch_size, "workers": workers, "device": str(device),
                   "amp": device.type == "cuda", "processes": dist.world, "compile": cfg.compile},
        data=records[0], datasets=records,
        skipped=[{**x, "dataset": s.name} if len(sets) > 1 else x for s in sets for x in s.skipped],
        models=[{"name": m.name, "description": m.spec.description, "input_size": m.spec.input_size,
                 "mean": m.spec.mean, "std": m.spec.std, "weights": m.weights,
                 "params": sum(p.numel() for p in m.module.parameters())} for m in models],
        suite={"name": suite.name, "path": str(suite.path), "sha256": suite.sha256},
    )


def _run_corrupt(cfg: CorruptConfig, workers: int, device: torch.device, dist: Dist, t_start: float) -> RunResult:
    suite: Suite = load_suite(cfg.suite)
    table = _baseline_table(cfg)
    sets = _open_sets(cfg, suite)
    models = load_models(cfg.models, cfg.weights, sets[0].ds.num_classes, random_init=cfg.random_init,
                         cache_dir=cfg.cache_dir, dataset=sets[0].name, seed=cfg.seed)
    preprocess = _prepare_readers(cfg, sets, models, suite)
    store = RunStore(cfg.out)
    manifest = _begin(store, _result_config(cfg, sets, suite, models, preprocess), cfg, dist, device)
    for s in sets:
        _load_images(s, workers)
    _check_unchanged(store, manifest, sets, cfg, dist)
    _record_session(store, cfg, sets, models, suite, workers, device, dist)

    done = store.done_cells()
    pending = {s.name: [j for j in range(len(s.cells)) if s.key(j) not in done] for s in sets}
    for m in models:
        m.module.to(device)
        if device.type == "cuda":
            m.module.to(memory_format=torch.channels_last)
    if cfg.compile and any(pending.values()):
        compile_models(models, cfg.batch_size, device)
    backoff: list[dict] = []
    t_cells = time.perf_counter()
    computed = _evaluate(cfg, store, sets, pending, models, workers, device, dist, backoff)
    if computed is None:  # a non-zero torchrun rank: rank 0 merged and wrote the tables
        return _read_result(store)
    seconds = time.perf_counter() - t_cells
    n_done = sum(len(pending[s.name]) * len(s.ids) for s in sets)
    res = _write_tables(cfg, store, sets, models, table)
    sess = manifest["sessions"][-1]
    if dist.active:
        sess["shards_computed_per_rank"] = computed
    sess["oom_backoff"] = backoff  # this process's (rank 0's under torchrun) out-of-memory retries
    sess.update({"cells_run": sum(map(len, pending.values())),
                 "images_per_second": (n_done / seconds) if n_done else None,
                 "seconds_cells": round(seconds, 3), "seconds_total": round(time.perf_counter() - t_start, 3)})
    store.finish(tables=res["tables"], plots=res["plots"], config_cli=asdict(cfg) | {"progress": None})
    dist.barrier()
    return RunResult(store.root, res["metrics"], res["summary"], store.manifest)


def _evaluate(cfg: CorruptConfig, store: RunStore, sets: list[EvalSet], pending: dict[str, list[int]],
              models: list[LoadedModel], workers: int, device: torch.device, dist: Dist,
              backoff: list[dict]) -> list[int] | None:
    """Every pending cell of every set, each committed as it finishes (under torchrun: this rank's shards,
    merged by rank 0). Returns the shards each rank computed; None on a rank that is not rank 0."""
    mine = {s.name: pending[s.name] if not dist.active else [
        j for j in pending[s.name] if not shard_path(store.parts, s.key(j), dist.rank, dist.world).exists()]
        for s in sets}
    total = sum(len(mine[s.name]) * len(s.ids) for s in sets) // dist.world
    n_pending, n_cells = sum(map(len, pending.values())), sum(len(s.cells) for s in sets)
    failure = None
    with _progress(cfg.progress and dist.main) as bar:
        task = bar.add_task(f"{n_pending}/{n_cells} cells × {len(models)} models"
                            + (f", {dist.world} processes" if dist.active else ""), total=total)
        try:
            for s in sets:
                for j, positions, per_model in iterate_cells(
                        s.images, s.ids, s.labels, s.cells, mine[s.name], models, seed=cfg.seed,
                        batch_size=cfg.batch_size, workers=workers, device=device,
                        on_batch=lambda k: bar.advance(task, k), shard=(dist.rank, dist.world), reader=s.reader,
                        backoff=backoff, class_subset=s.ds.class_subset):
                    _check_finite(per_model, s.cells[j], device)
                    if dist.active:
                        write_shard(shard_path(store.parts, s.key(j), dist.rank, dist.world), positions, per_model)
                        _test_crash_hook(dist.rank)
                    else:
                        _commit_cell(store, s, j, models, per_model, cfg.save_predictions)
        except MambaBenchError as exc:  # under torchrun every rank must hear it, not wait for this one
            if not dist.active:
                raise
            failure = f"rank {dist.rank}: {exc}"
    gathered = dist.gather((sum(map(len, mine.values())), failure))  # also the barrier after every rank's shards
    failures = [f for _, f in gathered if f]
    if failures:
        raise MambaBenchError(failures[0])
    if dist.active:
        if not dist.main:
            dist.barrier()
            return None
        for s in sets:
            for j in pending[s.name]:
                shards = [shard_path(store.parts, s.key(j), r, dist.world) for r in range(dist.world)]
                per_model = merge_shards(shards, len(s.ids), [m.name for m in models])
                _commit_cell(store, s, j, models, per_model, cfg.save_predictions)
                for f in shards:
                    f.unlink()
    return [n for n, _ in gathered]


def _baseline_table(cfg: CorruptConfig):
    """The published or external table CE is normalised by (None: a model of the run, or none)."""
    from mamba_bench.eval.baselines import is_published, load_baseline_table

    if cfg.baseline_table is not None:
        return load_baseline_table(cfg.baseline_table, cfg.baseline)
    if is_published(cfg.baseline):
        return load_baseline_table(cfg.baseline)
    if cfg.baseline is not None and cfg.baseline not in cfg.models:
        raise MambaBenchError(f"--baseline {cfg.baseline} is not one of the --model names of this run nor a "
                              f"published table (alexnet): {', '.join(cfg.models)}")
    return None


def _write_tables(cfg: CorruptConfig, store: RunStore, sets: list[EvalSet], models: list[LoadedModel],
                  table=None) -> dict:
    """The final tables from every cell's part file, and the plots."""
    keys = [s.key(j) for s in sets for j in range(len(s.cells))]
    metrics = conform(add_clean_drop(store.read_parts("metrics", keys)), METRICS_SCHEMA)
    summary = conform(corruption_errors(metrics, None if table else cfg.baseline, table), SUMMARY_SCHEMA)
    store.write_table("metrics.parquet", metrics, METRICS_SCHEMA)
    store.write_table("summary.parquet", summary, SUMMARY_SCHEMA)
    tables = ["metrics.parquet", "summary.parquet"]
    if cfg.save_predictions:
        store.write_table("predictions.parquet", store.read_parts("predictions", keys), PREDICTIONS_SCHEMA)
        tables.append("predictions.parquet")
    from mamba_bench.results.plots import write_corruption_plots

    plots = write_corruption_plots(metrics, store.root, [m.name for m in models])
    return {"metrics": metrics, "summary": summary, "tables": tables, "plots": [p.name for p in plots]}


def _read_result(store: RunStore) -> RunResult:
    """What a non-zero rank returns: the tables rank 0 wrote."""
    return RunResult(store.root, pd.read_parquet(store.root / "metrics.parquet"),
                     pd.read_parquet(store.root / "summary.parquet"), json.loads(store.manifest_path.read_text()))


def _commit_cell(store: RunStore, s: EvalSet, j: int, models: list[LoadedModel],
                 per_model: dict[str, dict[str, np.ndarray]], save_predictions: bool) -> None:
    corruption, severity = s.cells[j]
    cname = corruption.name if corruption else "clean"
    labels = _full_labels(s)
    rows, preds = [], []
    for m in models:
        per = per_model[m.name]
        rows.append({"model": m.name, "dataset": s.name, "corruption": cname, "severity": severity,
                     **summarize(per, s.num_scored_classes)})
        if save_predictions:
            preds.append(pd.DataFrame({
                "model": m.name, "dataset": s.name, "corruption": cname, "severity": severity,
                "image_id": s.ids, "label": labels, "pred": per["pred"], "correct": per["correct"],
                "correct5": per["correct5"], "confidence": per["confidence"], "nll": per["nll"],
            }))
    metrics = pd.DataFrame(rows)
    metrics["top1_drop"] = np.nan
    store.write_cell(s.key(j), conform(metrics, METRICS_SCHEMA),
                     conform(pd.concat(preds, ignore_index=True), PREDICTIONS_SCHEMA) if save_predictions else None)


def _full_labels(s: EvalSet) -> np.ndarray:
    """Labels as class indices of the whole label space (ImageNet-1k), also for a 200-class subset."""
    y = s.labels.numpy()
    return np.asarray(s.ds.class_subset, np.int64)[y] if s.ds.class_subset else y


def _check_finite(per_model: dict[str, dict[str, np.ndarray]], cell: tuple[Corruption | None, int],
                  device: torch.device) -> None:
    """Stop before a cell is written when a model's logits held NaN/inf: its top-1 would count those
    images as predicted class 0 and its NLL/ECE would be NaN — a silently wrong row."""
    for name, per in per_model.items():
        bad = nonfinite(per)
        if bad:
            cname = f"{cell[0].name}/{cell[1]}" if cell[0] else "clean"
            hint = " or run it in fp32 (--device cpu; on CUDA it runs under bf16 autocast)" \
                if device.type == "cuda" else ""
            raise MambaBenchError(f"{name} gave non-finite logits (NaN/inf) for {bad} of {per['confidence'].size} "
                                  f"images of {cname}: check its weights{hint}; finished cells are kept")


_shards_written = 0


def _test_crash_hook(rank: int) -> None:
    """MAMBA_BENCH_TEST_DIE_AFTER=RANK:N makes that rank die after N shard files (the resume test)."""
    global _shards_written
    spec = os.environ.get("MAMBA_BENCH_TEST_DIE_AFTER")
    if not spec:
        return
    who, count = (int(v) for v in spec.split(":"))
    _shards_written += 1
    if who == rank and _shards_written >= count:
        os._exit(17)

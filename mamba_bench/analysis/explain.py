"""``mamba-bench explain``: Mender's state correlations and scores over a data set, and the repair.

Data flow: data set (optionally under one corruption) → Grad-ESC / Grad-ISC of each chosen block
and state, per image → the perturbation and segmentation tests per image (against foreground
masks) → ECS per sample group, ICS per class → ``scores.parquet`` per (model, block, state, sample
group); images that the corruption flips from right to wrong get side-by-side maps for the true and
the predicted class. ``--repair`` fine-tunes with Mender's losses and measures the accuracy change
in the same run. The formulas are those of one definition (``--definition``, looked up in
``mamba_bench.analysis.definitions``); this module only runs them over data.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mamba_bench.analysis import mender
from mamba_bench.analysis.definitions import DEFAULT, get_definition
from mamba_bench.analysis.mender import Definition
from mamba_bench.data import ImageSet, open_dataset
from mamba_bench.errors import MambaBenchError, RunDirError
from mamba_bench.models.preprocess import to_model_input
from mamba_bench.results.store import atomic_write_json, atomic_write_parquet, environment, git_commit

#: Gray level (0-255) above which a digit pixel is stroke, i.e. foreground, for the embedded digits.
DIGIT_STROKE = 96

SCORES_SCHEMA = {
    "model": "string", "block": "string", "stage": "int64", "index": "int64", "state": "string",
    "group": "string", "n_samples": "int64", "n_classes": "int64", "ecs": "float64", "perturbation": "float64",
    "iou": "float64", "ics": "float64", "simplicity": "float64", "homogeneity": "float64",
}


@dataclass
class ExplainConfig:
    """One explain run. ``corruption=None`` analyses clean images; ``blocks=None`` every Mamba block;
    ``definition``: Mender's formulas (``mamba_bench.analysis.definitions``)."""

    model: str
    data: str
    out: str
    weights: str | None = None
    labels: str | None = None
    per_class: int | None = None
    limit: int | None = None
    seed: int = 0
    corruption: str | None = None
    severity: int = 3
    suite: str | None = None
    masks: str | None = None
    blocks: list[str] | None = None
    states: list[str] = field(default_factory=lambda: list(mender.STATES))
    difficult_fraction: float = 0.5
    views: int = 8
    view_state: str = "s"
    definition: str = DEFAULT
    batch_size: int = 16
    device: str = "auto"
    cache_dir: str | None = None
    workers: int | None = None


# ---------------------------------------------------------------------------------------------- inputs


#: Options that never change results (execution knobs), left out of a run's identity.
EXECUTION = ("batch_size", "device", "workers", "cache_dir", "out")


def result_config(cfg) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in EXECUTION}


#: Each command's own files (the marker, written last, is the first): an interrupted run leaves
#: only these, and rerunning the command redoes it.
OUTPUTS = {"explain": ("scores.parquet", "manifest.json", "samples.parquet", "flips.parquet", "scores.png",
                       "flips.png"),
           "explain --repair": ("repair.parquet", "manifest.json", "history.parquet")}


def _ours(name: str, command: str) -> bool:
    return name in OUTPUTS[command] or name.startswith(".") or (
        command == "explain --repair" and name.startswith("repaired-") and name.endswith(".safetensors"))


def finished_run(out: Path, command: str, config: dict) -> dict | None:
    """The manifest of the same finished run in ``out`` (re-running it is a no-op), None if there is
    none; another run there is an error, never overwritten."""
    import json

    marker = OUTPUTS[command][0]
    manifest = None
    if (out / "manifest.json").is_file():
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest is not None and manifest.get("command") != command:
            raise RunDirError(f"{out} holds a {manifest.get('command') or 'different'} run; choose another --out")
    if not (out / marker).exists() or manifest is None:
        foreign = [p.name for p in out.iterdir() if not _ours(p.name, command)] if out.is_dir() else []
        if foreign:  # an interrupted run of ours leaves only its own files: those are simply rewritten
            raise RunDirError(f"{out} holds {foreign[0]}, not an {command} run; choose another --out")
        return None
    if manifest.get("result_config") != json.loads(json.dumps(config, default=str)):
        raise RunDirError(f"{out} already holds a finished run with other options; choose another --out")
    return manifest


def resolve_model(name: str, weights: str | None, ds: ImageSet, *, cache_dir: str | None, seed: int):
    """The loaded Mamba model; the digits default to the demo's digit-trained vmamba-nano. ``ds`` is
    set to preprocess its images the way the model was trained (dg-train: stretched to a square)."""
    from mamba_bench.eval.corrupt import load_models
    from mamba_bench.models.registry import get_spec, spec_for_weights

    spec = spec_for_weights(get_spec(name), weights)
    if spec.family not in ("vmamba", "vim", "mambavision"):
        raise MambaBenchError(f"{name} has no selective-scan (Mamba) blocks: Mender's state correlations need a "
                              "Mamba model (vmamba-*, vim-*, mambavision-*, start-m, start-x); Swin and ConvNeXt have "
                              "no SSM states")
    if weights is None and _embedded(ds) and name == "vmamba-nano":
        from mamba_bench.train.digits import demo_weights

        weights = str(demo_weights(name, cache=cache_dir))
    (loaded,) = load_models([name], [weights] if weights else [], ds.num_classes, random_init=False,
                            cache_dir=cache_dir, dataset=ds.name, seed=seed)
    _match(ds, loaded)
    return loaded


def _embedded(ds: ImageSet) -> bool:
    """The embedded digits, also once materialized (their masks are the strokes)."""
    return ds.layout == "embedded" or (ds.materialized is not None
                                       and ds.materialized["data"].get("layout") == "embedded")


def _match(ds: ImageSet, loaded) -> None:
    from mamba_bench.eval.corrupt import match_preprocessing

    if match_preprocessing(ds, [loaded]) is not None and ds.materialized is not None:
        raise MambaBenchError(f"{ds.root} holds center-cropped images; {loaded.name} (dg-train) needs the original "
                              "images, stretched to a square: use the original data")


def select_blocks(all_blocks: list[str], wanted: list[str] | None) -> list[str]:
    """``wanted`` as module names (``layers.2.blocks.1``) or positions (``-1`` the last); None: all."""
    if not wanted:
        return list(all_blocks)
    chosen = []
    for w in wanted:
        if w in all_blocks:
            chosen.append(w)
            continue
        try:
            chosen.append(all_blocks[int(w)])
        except (ValueError, IndexError):
            raise MambaBenchError(f"unknown block {w!r}; the model's Mamba blocks are {', '.join(all_blocks)} "
                                  f"(or positions 0..{len(all_blocks) - 1}, -1 the last)") from None
    return list(dict.fromkeys(chosen))


def load_images(ds: ImageSet, workers: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    from mamba_bench.eval.corrupt import _load_clean

    images, keep, _ = _load_clean(ds, workers)
    ids = [ds.samples[i].image_id for i in keep]
    labels = np.asarray([ds.samples[i].label for i in keep], np.int64)
    return images, ids, labels


def foreground_masks(ds: ImageSet, images: np.ndarray, ids: list[str], masks: str | None) -> np.ndarray | None:
    """Boolean (N, H, W) foreground masks aligned with the preprocessed images, or None.

    Embedded digits: stroke pixels of the clean image. A directory: ``MASKS/<image id>`` with any
    image suffix (``.png`` first), preprocessed like the image (resize + center crop), nonzero =
    foreground. Masks describe the clean image (a geometric corruption moves the object, not them).
    """
    if masks is None:
        if _embedded(ds):
            return images[..., 0] > DIGIT_STROKE
        return None
    from mamba_bench.data.images import ImageReadError, load_image_rgb

    root = Path(masks).expanduser()
    if not root.is_dir():
        raise MambaBenchError(f"--masks {masks} is not a directory")
    out = np.zeros(images.shape[:3], bool)
    for k, image_id in enumerate(ids):
        rel = Path(image_id)
        stem = root / rel.parent / rel.stem  # only the last suffix goes: img.2.jpg → img.2.png
        found = [stem.parent / (stem.name + s) for s in (".png", ".PNG", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
                 if (stem.parent / (stem.name + s)).is_file()]
        if not found:
            raise MambaBenchError(f"no mask for image {image_id} in {root} (expected {stem}.png); every analysed "
                                  "image needs one, or drop --masks")
        try:
            arr = ds.preprocess(load_image_rgb(found[0]))
        except ImageReadError as exc:
            raise MambaBenchError(f"mask {found[0]} cannot be read: {exc}") from None
        if arr.shape[:2] != out.shape[1:]:
            raise MambaBenchError(f"mask {found[0]} preprocesses to {arr.shape[:2]}, not {out.shape[1:]}")
        out[k] = arr.max(axis=2) > 127
    return out


def corrupt_images(images: np.ndarray, ids: list[str], cell, seed: int, workers: int) -> np.ndarray:
    """``images`` under one (corruption, severity) cell, made in DataLoader workers (the benchmark's
    per-image corruption, so the same pixels as ``corrupt``)."""
    from mamba_bench.eval.corrupt import _CellImages, cell_loader

    tasks = [list(range(a, min(a + 64, len(ids)))) for a in range(0, len(ids), 64)]
    return torch.cat(list(cell_loader(_CellImages(images, ids, [cell], seed), tasks, workers=workers))).numpy()


# ---------------------------------------------------------------------------------------------- analysis


def difficult_split(p_true: np.ndarray, fraction: float) -> np.ndarray:
    """Group per sample: the ``ceil(fraction × N)`` lowest true-class probabilities are 'difficult'."""
    n = len(p_true)
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    groups = np.full(n, "simple", dtype=object)
    groups[np.argsort(p_true, kind="stable")[:k]] = "difficult"
    return groups


Key = tuple[str, str]


@dataclass
class Analysis:
    """Per image: true-class probability, prediction; per (block, state): the perturbation test's
    two probabilities and the IoU (NaN where not computed), and the Grad-ISC vectors (N, D)."""

    p_true: np.ndarray
    pred: np.ndarray
    p_keep: dict[Key, np.ndarray]
    p_drop: dict[Key, np.ndarray]
    iou: dict[Key, np.ndarray]
    internal: dict[Key, torch.Tensor]


def analyse(defn: Definition, module, spec, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
            blocks: list[str], states: list[str], *, batch_size: int, device: torch.device,
            ecs_keys=None) -> Analysis:
    """Every image's correlations for every (block, state), batch by batch.

    ``ecs_keys``: the (block, state)s whose ECS parts are computed — the perturbation test costs a
    forward pass of two images per image and (block, state); None: all.
    """
    n = len(labels)
    keys = [(b, s) for b in blocks for s in states]
    res = Analysis(np.zeros(n), np.zeros(n, np.int64), *({k: np.full(n, np.nan) for k in keys} for _ in range(3)),
                   internal={})
    parts: dict[Key, list[torch.Tensor]] = {k: [] for k in keys}
    for a in range(0, n, batch_size):
        m = None if masks is None else torch.from_numpy(masks[a:a + batch_size]).to(device)
        internal = _analyse_batch(defn, module, spec, images[a:a + batch_size], labels[a:a + batch_size], m, blocks,
                                  states, set(keys if ecs_keys is None else ecs_keys), res, a, device)
        for k in keys:
            parts[k].append(internal[k])
    res.internal = {k: torch.cat(v) for k, v in parts.items()}
    return res


def _analyse_batch(defn: Definition, module, spec, images, labels, masks, blocks, states, ecs_keys, res: Analysis,
                   start: int, device) -> dict[Key, torch.Tensor]:
    """One batch into ``res`` (rows from ``start``); returns its Grad-ISC vectors on the CPU."""
    x = to_model_input(torch.from_numpy(images), spec, device)
    y = torch.from_numpy(labels).to(device)
    rows = slice(start, start + len(y))
    corr = defn.correlations(module, x, y, blocks, states)
    res.p_true[rows] = corr.probs.gather(1, y[:, None])[:, 0].cpu().numpy()
    res.pred[rows] = corr.probs.argmax(1).cpu().numpy()
    for key in ecs_keys:
        e = corr.external[key]
        keep, drop = defn.perturbation_probs(module, x, y, e)
        res.p_keep[key][rows], res.p_drop[key][rows] = keep.cpu().numpy(), drop.cpu().numpy()
        if masks is not None:
            res.iou[key][rows] = defn.segmentation_iou(e, masks).cpu().numpy()
    return {k: v.cpu() for k, v in corr.internal.items()}


def class_ics(defn: Definition, internal: torch.Tensor, labels: np.ndarray) -> tuple[float, float, float, int]:
    """Mean over classes (with ≥ 2 samples) of (ICS, simplicity, homogeneity), and the class count."""
    vals = [defn.ics(internal[torch.from_numpy(np.flatnonzero(labels == c))]) for c in np.unique(labels)
            if (labels == c).sum() >= 2]
    if not vals:
        return float("nan"), float("nan"), float("nan"), 0
    arr = np.asarray(vals, float)
    with np.errstate(all="ignore"):
        return (*(float(np.nanmean(arr[:, k])) if not np.isnan(arr[:, k]).all() else float("nan")
                  for k in range(3)), len(vals))


def score_row(defn: Definition, res: Analysis, key: Key, labels: np.ndarray, sel: np.ndarray) -> dict:
    """ECS and ICS (and their parts) of one (block, state) over the images ``sel``."""
    ecs_v, pert, iou = defn.ecs(res.p_keep[key][sel], res.p_drop[key][sel], res.iou[key][sel])
    ics_v, simp, homo, n_cls = class_ics(defn, res.internal[key][torch.from_numpy(np.flatnonzero(sel))],
                                         labels[sel])
    return {"n_samples": int(sel.sum()), "n_classes": n_cls, "ecs": ecs_v, "perturbation": pert, "iou": iou,
            "ics": ics_v, "simplicity": simp, "homogeneity": homo}


def score_table(defn: Definition, model: str, blocks: list[str], all_blocks: list[str], states: list[str],
                labels: np.ndarray, groups: np.ndarray, res: Analysis) -> pd.DataFrame:
    rows = []
    for b in blocks:
        for s in states:
            for g in ("simple", "difficult", "all"):
                sel = np.ones(len(labels), bool) if g == "all" else groups == g
                if sel.any():
                    with np.errstate(all="ignore"):
                        rows.append({"model": model, "block": b, "stage": mender.block_stage(b),
                                     "index": all_blocks.index(b), "state": s, "group": g,
                                     **score_row(defn, res, (b, s), labels, sel)})
    return pd.DataFrame(rows, columns=list(SCORES_SCHEMA)).astype(SCORES_SCHEMA)


def run_explain(cfg: ExplainConfig) -> dict:
    """Scores, plots and misclassification views of one model; returns paths and the score table."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    done = finished_run(out, "explain", result_config(cfg))
    if done is not None:
        return {"out": out, "scores": pd.read_parquet(out / "scores.parquet"),
                "samples": pd.read_parquet(out / "samples.parquet"), "flips": pd.read_parquet(out / "flips.parquet"),
                "plots": [out / p for p in done["plots"]], "masks": done["data"]["masks"] is not None,
                "resumed": True}
    defn, states, cells = _check_explain(cfg)
    inp = _explain_inputs(cfg, cells)
    res = analyse(defn, inp.module, inp.spec, inp.images, inp.labels, inp.masks, inp.blocks, states,
                  batch_size=cfg.batch_size, device=inp.device)
    groups = difficult_split(res.p_true, cfg.difficult_fraction)
    scores = score_table(defn, cfg.model, inp.blocks, inp.all_blocks, states, inp.labels, groups, res)
    samples = _samples_table(defn, inp, res, groups, states)
    out.mkdir(parents=True, exist_ok=True)
    from mamba_bench.analysis.plots import plot_scores

    plots = [plot_scores(scores, out / "scores.png", cfg.model, defn.name)]
    flips = _flips(cfg, defn, inp, res, out, plots) if cells else _flips_frame([], inp, res, None)
    atomic_write_parquet(out / "samples.parquet", samples)
    atomic_write_parquet(out / "flips.parquet", flips)
    atomic_write_json(out / "manifest.json", _explain_manifest(cfg, defn, inp, states, flips, plots, t0))
    atomic_write_parquet(out / "scores.parquet", scores)  # the marker of a finished run: last
    return {"out": out, "scores": scores, "samples": samples, "flips": flips, "plots": plots,
            "masks": inp.masks is not None, "resumed": False}


def _check_explain(cfg: ExplainConfig):
    """The definition, the states and the corruption cell (none or one) of a valid config."""
    defn = get_definition(cfg.definition)
    states = mender.check_states(cfg.states)
    if cfg.view_state not in states:
        raise MambaBenchError(f"--view-state {cfg.view_state} is not one of --states {','.join(states)}")
    if not 0 < cfg.difficult_fraction < 1:
        raise MambaBenchError(f"--difficult-fraction must be in (0, 1), not {cfg.difficult_fraction}")
    if cfg.limit is not None and cfg.limit < 1:
        raise MambaBenchError(f"--limit must be >= 1, not {cfg.limit}")
    if cfg.batch_size < 1:
        raise MambaBenchError(f"--batch-size must be >= 1, not {cfg.batch_size}")
    cells = _cells(cfg.suite, [cfg.corruption] if cfg.corruption else [], cfg.severity)
    if len(cells) > 1:
        raise MambaBenchError(f"--corruption takes one corruption name, not {cfg.corruption!r}")
    return defn, states, cells


@dataclass
class ExplainInputs:
    """What an explain run analyses: the model, its blocks, the (corrupted) images and the masks."""

    ds: ImageSet
    loaded: object
    module: torch.nn.Module
    spec: object
    device: torch.device
    all_blocks: list[str]
    blocks: list[str]
    clean: np.ndarray
    images: np.ndarray
    ids: list[str]
    labels: np.ndarray
    masks: np.ndarray | None


def _explain_inputs(cfg: ExplainConfig, cells) -> ExplainInputs:
    from mamba_bench.eval.corrupt import default_workers, resolve_device

    device = resolve_device(cfg.device)
    workers = default_workers() if cfg.workers is None else cfg.workers
    ds = open_dataset(cfg.data, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels)
    if cfg.limit is not None:
        ds.samples = ds.samples[:cfg.limit]
        if ds.arrays is not None:
            ds.arrays = ds.arrays[:cfg.limit]
    loaded = resolve_model(cfg.model, cfg.weights, ds, cache_dir=cfg.cache_dir, seed=cfg.seed)
    module = loaded.module.to(device)
    all_blocks = mender.mamba_blocks(module, cfg.model)
    clean, ids, labels = load_images(ds, workers)
    masks = foreground_masks(ds, clean, ids, cfg.masks)
    images = corrupt_images(clean, ids, cells[0], cfg.seed, workers) if cells else clean
    return ExplainInputs(ds, loaded, module, loaded.spec, device, all_blocks, select_blocks(all_blocks, cfg.blocks),
                         clean, images, ids, labels, masks)


def _samples_table(defn: Definition, inp: ExplainInputs, res: Analysis, groups, states) -> pd.DataFrame:
    samples = pd.DataFrame({"image_id": inp.ids, "label": inp.labels, "pred": res.pred, "p_true": res.p_true,
                            "group": groups.astype(str)})
    for b in inp.blocks:
        for s in states:
            samples[f"ecs/{b}/{s}"] = defn.sample_ecs(res.p_keep[(b, s)], res.p_drop[(b, s)], res.iou[(b, s)])
    return samples


def _flips_frame(flipped, inp: ExplainInputs, res: Analysis, clean_pred) -> pd.DataFrame:
    if not len(flipped):
        return pd.DataFrame({"image_id": pd.Series(dtype="string"), "label": pd.Series(dtype="int64"),
                             "clean_pred": pd.Series(dtype="int64"), "pred": pd.Series(dtype="int64"),
                             "p_true": pd.Series(dtype="float64")})
    return pd.DataFrame({"image_id": [inp.ids[k] for k in flipped], "label": inp.labels[flipped],
                         "clean_pred": clean_pred[flipped], "pred": res.pred[flipped], "p_true": res.p_true[flipped]})


def _flips(cfg: ExplainConfig, defn: Definition, inp: ExplainInputs, res: Analysis, out: Path, plots: list):
    """Images the corruption flips from right to wrong; ``flips.png`` (appended to ``plots``) shows
    the first ``cfg.views`` of them with the maps of the true and of the predicted class."""
    from mamba_bench.analysis.plots import plot_flips

    clean_pred = _predict(inp.module, inp.spec, inp.clean, cfg.batch_size, inp.device)
    flipped = np.flatnonzero((clean_pred == inp.labels) & (res.pred != inp.labels))
    if len(flipped) and cfg.views > 0:
        show = flipped[:cfg.views]
        block, images = inp.blocks[-1], inp.images[show]
        maps_true, p_t = _maps(defn, inp.module, inp.spec, images, inp.labels[show], block, cfg.view_state,
                               inp.device)
        maps_pred, p_p = _maps(defn, inp.module, inp.spec, images, res.pred[show], block, cfg.view_state, inp.device)
        plots.append(plot_flips(inp.clean[show], images, maps_true, maps_pred, inp.labels[show], res.pred[show],
                                p_t, p_p, inp.ds.class_names, out / "flips.png",
                                f"{cfg.model}: {cfg.corruption} severity {cfg.severity}, Grad-ESC of state "
                                f"{cfg.view_state} in {block} ({defn.name} definition)"))
    return _flips_frame(flipped, inp, res, clean_pred)


def _explain_manifest(cfg: ExplainConfig, defn: Definition, inp: ExplainInputs, states, flips, plots, t0) -> dict:
    loaded, ds = inp.loaded, inp.ds
    return {
        "command": "explain", "argv": sys.argv, "config": asdict(cfg), "result_config": result_config(cfg),
        "definition": {"name": defn.name, "follows": defn.follows},
        "device": str(inp.device), "model": {"name": loaded.name, "weights": loaded.weights,
                                             "weights_sha256": loaded.weights_sha256},
        "data": {"name": ds.name, "root": ds.root, "images": len(inp.ids), "notes": ds.notes,
                 "masks": "digit strokes" if cfg.masks is None and inp.masks is not None else cfg.masks},
        "blocks": inp.blocks, "states": states, "flipped": int(len(flips)), "plots": [p.name for p in plots],
        "seconds": round(time.perf_counter() - t0, 1), "environment": environment(), "git_commit": git_commit(),
    }


def _cells(suite_path: str | None, names: list[str], severity: int):
    if not names:
        return []
    from mamba_bench.corruptions import load_suite

    suite = load_suite(suite_path)
    chosen = suite.select(names)
    return [(c, s) for c in chosen for s in suite.severities(c, [severity])]


@torch.no_grad()
def _probs(module, spec, images: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    """Softmax outputs (N, classes) on the CPU."""
    out = []
    for a in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[a:a + batch_size]), spec, device)
        out.append(module(x).float().softmax(1).cpu())
    return torch.cat(out)


def _predict(module, spec, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    return _probs(module, spec, images, batch_size, device).argmax(1).numpy()


def _maps(defn: Definition, module, spec, images: np.ndarray, targets: np.ndarray, block: str, state: str, device):
    """The definition's view of the map (N, H, W) in [0, 1] for ``targets``, and their probabilities."""
    x = to_model_input(torch.from_numpy(images), spec, device)
    t = torch.from_numpy(np.asarray(targets, np.int64)).to(device)
    corr = defn.correlations(module, x, t, [block], [state])
    maps = defn.view_map(corr.external[(block, state)], images.shape[1:3]).clamp(0, 1).cpu().numpy()
    return maps, corr.probs.gather(1, t[:, None])[:, 0].cpu().numpy()


# ---------------------------------------------------------------------------------------------- repair


@dataclass
class RepairConfig:
    """Mender's repair: fine-tune with the external loss on c and s and the internal loss on x.
    ``lambda_ext``/``lambda_int`` None: the definition's default weights."""

    model: str
    data: str
    out: str
    weights: str | None = None
    train_data: str | None = None
    masks: str | None = None
    labels: str | None = None
    per_class: int | None = None
    blocks: list[str] | None = None
    arms: list[str] = field(default_factory=lambda: ["ce", "ext", "int", "all"])
    steps: int = 150
    lr: float = 1e-4
    train_batch: int = 32
    lambda_ext: float | None = None
    lambda_int: float | None = None
    corruptions: list[str] | str = "all"
    severity: int = 3
    suite: str | None = None
    seed: int = 0
    definition: str = DEFAULT
    device: str = "auto"
    cache_dir: str | None = None
    workers: int | None = None
    batch_size: int = 64


ARMS = {"ce": (False, False), "ext": (True, False), "int": (False, True), "all": (True, True)}
#: The states of each loss (both definitions: ``train_repair.sh``'s external types ``c s``, internal ``x``).
EXTERNAL_STATES, INTERNAL_STATES = ("c", "s"), ("x",)


def repair_blocks(defn: Definition, all_blocks: list[str], wanted: list[str] | None) -> tuple[list[str], list[str]]:
    """(external, internal) loss blocks: ``wanted`` for both, else the definition's."""
    if wanted:
        chosen = select_blocks(all_blocks, wanted)
        return chosen, chosen
    return defn.repair_blocks(all_blocks)


def class_templates(defn: Definition, module, spec, images, labels, blocks, num_classes: int, *, batch_size: int,
                    device) -> dict[str, torch.Tensor]:
    """Per block, the class templates (C, D) of the state x, from the training images the
    definition picks (``defn.template_images`` per class)."""
    pick = defn.pick_template_images(
        labels, defn.template_images,
        lambda: _probs(module, spec, images, batch_size, device).gather(1, torch.from_numpy(labels)[:, None])[:, 0])
    lab = labels[pick]
    res = analyse(defn, module, spec, images[pick], lab, None, blocks, list(INTERNAL_STATES), batch_size=batch_size,
                  device=device, ecs_keys=())
    correct = res.pred == lab
    out = {}
    for b in blocks:
        internal = res.internal[(b, INTERNAL_STATES[0])]
        t = torch.zeros(num_classes, internal.shape[1])
        for c in np.unique(lab):
            idx = np.flatnonzero(lab == c)
            t[c] = defn.template(internal[torch.from_numpy(idx)], correct[idx])
        out[b] = t.to(device)
    return out


def repair_step_losses(defn: Definition, module, x, y, masks, ext_blocks, int_blocks, templates, use_ext: bool,
                       use_int: bool):
    """(cross-entropy, external loss, internal loss) of one batch; the losses are 0 when unused."""
    ext_keys = [(b, s) for b in ext_blocks for s in EXTERNAL_STATES] if use_ext else []
    int_keys = [(b, s) for b in int_blocks for s in INTERNAL_STATES] if use_int else []
    if not ext_keys and not int_keys:
        zero = torch.zeros((), device=x.device)
        return F.cross_entropy(module(x).float(), y), zero, zero
    blocks = list(dict.fromkeys(b for b, _ in ext_keys + int_keys))
    states = list(dict.fromkeys(s for _, s in ext_keys + int_keys))
    corr = defn.correlations(module, x, y, blocks, states, keep_graph=True)
    ext, itn = defn.repair_losses(corr, masks, y, ext_keys, int_keys, templates)
    return F.cross_entropy(corr.logits, y), ext, itn


def finetune_arm(defn: Definition, base, spec, data, blocks, templates, arm: str, cfg: RepairConfig, device):
    """A copy of ``base`` fine-tuned ``cfg.steps`` steps on ``data`` (images, labels, masks); the
    data order depends on the seed only (every arm sees the same batches), so arms differ by their
    losses alone. ``blocks``: (external, internal) loss blocks."""
    images, labels, masks = data
    use_ext, use_int = ARMS[arm]
    model = copy.deepcopy(base).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(labels)
    order = torch.randperm(n, generator=gen)
    pos, history = 0, []
    for step in range(cfg.steps):
        if pos + cfg.train_batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + cfg.train_batch].numpy()
        pos += cfg.train_batch
        x = to_model_input(torch.from_numpy(images[idx]), spec, device)
        y = torch.from_numpy(labels[idx]).to(device)
        m = torch.from_numpy(masks[idx]).to(device)
        ce, ext, itn = repair_step_losses(defn, model, x, y, m, *blocks, templates, use_ext, use_int)
        loss = ce + cfg.lambda_ext * ext + cfg.lambda_int * itn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"arm": arm, "step": step + 1, "ce": float(ce.detach()), "ext": float(ext.detach()),
                        "int": float(itn.detach())})
    return model.eval(), history


def _train_set(cfg: RepairConfig, test: ImageSet, base):
    """Training images, labels and masks: the digits' train split, or ``--train-data`` with ``--masks``."""
    from mamba_bench.data import digits_split

    if cfg.train_data is None:
        if not _embedded(test):
            raise MambaBenchError("--repair on a directory needs --train-data DIR (and --masks for its images); "
                                  "the repair fine-tunes on training images, never on the evaluated ones")
        x, y, ids = digits_split("train")
        return x, y, x[..., 0] > DIGIT_STROKE
    if cfg.masks is None:
        raise MambaBenchError("--repair with --train-data needs --masks DIR: the external loss uses foreground masks")
    ds = open_dataset(cfg.train_data, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels)
    if ds.class_ids != test.class_ids:
        raise MambaBenchError(f"--train-data and --data have different classes ({ds.num_classes} vs "
                              f"{test.num_classes}, or other names/order): the labels would not match")
    _match(ds, base)
    from mamba_bench.eval.corrupt import default_workers

    x, ids, y = load_images(ds, default_workers() if cfg.workers is None else cfg.workers)
    return x, y, foreground_masks(ds, x, ids, cfg.masks)


def check_repair(cfg: RepairConfig) -> tuple[RepairConfig, Definition]:
    """The config with the definition's loss weights filled in, and the definition; bad options refused."""
    defn = get_definition(cfg.definition)
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad or not cfg.arms:
        raise MambaBenchError(f"unknown --arms {','.join(bad) or '(none)'}; valid: {', '.join(ARMS)}")
    for name, v in (("--repair-steps", cfg.steps), ("--repair-batch", cfg.train_batch),
                    ("--batch-size", cfg.batch_size)):
        if v < 1:
            raise MambaBenchError(f"{name} must be >= 1, not {v}")
    cfg = replace(cfg, lambda_ext=defn.lambda_ext if cfg.lambda_ext is None else cfg.lambda_ext,
                  lambda_int=defn.lambda_int if cfg.lambda_int is None else cfg.lambda_int)
    if cfg.lr <= 0 or cfg.lambda_ext < 0 or cfg.lambda_int < 0:
        raise MambaBenchError("--lr must be > 0 and --lambda-ext / --lambda-int >= 0")
    return cfg, defn


def run_repair(cfg: RepairConfig, on_arm=None) -> dict:
    """Fine-tune one copy of the model per arm and evaluate all of them, and the base, on the test
    data, clean and corrupted, in one pass over the corrupted images."""
    from mamba_bench.eval.corrupt import resolve_device

    t0 = time.perf_counter()
    cfg, defn = check_repair(cfg)
    out = Path(cfg.out)
    done = finished_run(out, "explain --repair", result_config(cfg))
    if done is not None:
        return {"out": out, "table": pd.read_parquet(out / "repair.parquet"),
                "history": pd.read_parquet(out / "history.parquet"), "blocks": done["blocks"],
                "checkpoint": out / done["checkpoint"], "resumed": True}
    cells = _repair_cells(cfg)
    device = resolve_device(cfg.device)
    test = open_dataset(cfg.data, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels)
    base = resolve_model(cfg.model, cfg.weights, test, cache_dir=cfg.cache_dir, seed=cfg.seed)
    blocks = repair_blocks(defn, mender.mamba_blocks(base.module, cfg.model), cfg.blocks)
    train = _train_set(cfg, test, base)
    if train[1].max() >= test.num_classes:
        raise MambaBenchError("training labels exceed the model's classes")
    models, history = _finetune_arms(cfg, defn, base, train, blocks, test.num_classes, device, on_arm)
    df, n_test = _evaluate_arms(cfg, defn, test, models, cells, blocks, device)
    every = list(dict.fromkeys(blocks[0] + blocks[1]))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _save_repaired(cfg, defn, out, models, test, base, every)
    atomic_write_parquet(out / "history.parquet", pd.DataFrame(history))
    atomic_write_json(out / "manifest.json", {
        "command": "explain --repair", "argv": sys.argv, "config": asdict(cfg), "result_config": result_config(cfg),
        "definition": {"name": defn.name, "follows": defn.follows}, "device": str(device), "blocks": every,
        "external_blocks": blocks[0], "internal_blocks": blocks[1],
        "cells": [[c.name if c else "clean", s] for c, s in cells], "test_images": n_test,
        "train_images": len(train[1]), "checkpoint": ckpt.name, "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(), "git_commit": git_commit()})
    atomic_write_parquet(out / "repair.parquet", df)  # the marker of a finished run: last
    return {"out": out, "table": df, "history": pd.DataFrame(history), "blocks": every, "checkpoint": ckpt,
            "resumed": False}


def _repair_cells(cfg: RepairConfig) -> list:
    from mamba_bench.corruptions import load_suite

    suite = load_suite(cfg.suite)
    return [(None, 0)] + [(c, s) for c in suite.select(cfg.corruptions) for s in suite.severities(c, [cfg.severity])]


def _finetune_arms(cfg: RepairConfig, defn: Definition, base, train, blocks, num_classes: int, device, on_arm):
    """The base model and one fine-tuned copy per arm (as ``LoadedModel``s), and the loss history."""
    from mamba_bench.eval.corrupt import LoadedModel

    module = base.module.to(device)
    templates = class_templates(defn, module, base.spec, train[0], train[1], blocks[1], num_classes,
                                batch_size=cfg.batch_size, device=device)
    models = [LoadedModel("base", base.spec, module.eval(), base.weights, base.weights_sha256)]
    history = []
    for arm in cfg.arms:
        if on_arm is not None:
            on_arm(arm)
        m, h = finetune_arm(defn, module, base.spec, train, blocks, templates, arm, cfg, device)
        models.append(LoadedModel(arm, base.spec, m, None, None))
        history += h
    return models, history


def _evaluate_arms(cfg: RepairConfig, defn: Definition, test: ImageSet, models, cells, blocks, device):
    """Top-1 of the base and every arm, clean and mean corrupted, with their ECS and ICS; and the
    number of test images."""
    from mamba_bench.eval.corrupt import default_workers, iterate_cells

    workers = default_workers() if cfg.workers is None else cfg.workers
    te_x, te_ids, te_y = load_images(test, workers)
    te_masks = foreground_masks(test, te_x, te_ids, cfg.masks if cfg.train_data is None else None)
    rows = {m.name: {"clean": np.nan, "corrupted": []} for m in models}
    for j, _, res in iterate_cells(te_x, te_ids, torch.from_numpy(te_y), cells, list(range(len(cells))), models,
                                   seed=cfg.seed, batch_size=cfg.batch_size, workers=workers, device=device):
        for name, r in res.items():
            top1 = float(np.mean(r["correct"])) * 100
            if cells[j][0] is None:
                rows[name]["clean"] = top1
            else:
                rows[name]["corrupted"].append(top1)
    table = []
    for m in models:
        ecs_v, ics_v = _repair_scores(defn, m.module, m.spec, te_x, te_y, te_masks, blocks, device, cfg.batch_size)
        corr = rows[m.name]["corrupted"]
        table.append({"arm": m.name, "clean_top1": rows[m.name]["clean"],
                      "corrupted_top1": float(np.mean(corr)) if corr else float("nan"),
                      "ecs": ecs_v, "ics": ics_v, "steps": 0 if m.name == "base" else cfg.steps})
    df = pd.DataFrame(table)
    df["clean_change"] = df.clean_top1 - df.clean_top1.iloc[0]
    df["corrupted_change"] = df.corrupted_top1 - df.corrupted_top1.iloc[0]
    return df, len(te_y)


def _save_repaired(cfg: RepairConfig, defn: Definition, out: Path, models, test: ImageSet, base, blocks):
    """The ``all`` arm's model (else the last arm's) as ``repaired-<arm>.safetensors``."""
    from mamba_bench.models.weights import save_checkpoint

    best = "all" if "all" in cfg.arms else cfg.arms[-1]
    return save_checkpoint(next(m.module for m in models if m.name == best), out / f"repaired-{best}.safetensors",
                           {"mamba_bench_model": cfg.model, "num_classes": str(test.num_classes),
                            "dataset": test.name, "repair_arm": best, "repaired_from": str(base.weights),
                            "blocks": ",".join(blocks), "mender_definition": defn.name})


def _repair_scores(defn: Definition, module, spec, images, labels, masks, blocks, device, batch_size: int,
                   limit: int = 200):
    """Mean ECS of c and s over the external loss's blocks and mean ICS of x over the internal
    loss's blocks (first ``limit`` test images): the scores the repair is meant to raise."""
    ext_blocks, int_blocks = blocks
    every = list(dict.fromkeys(ext_blocks + int_blocks))
    ecs_keys = [(b, s) for b in ext_blocks for s in EXTERNAL_STATES]
    res = analyse(defn, module, spec, images[:limit], labels[:limit], None if masks is None else masks[:limit],
                  every, list(dict.fromkeys(INTERNAL_STATES + EXTERNAL_STATES)), batch_size=batch_size,
                  device=device, ecs_keys=ecs_keys)
    e = [defn.ecs(res.p_keep[k], res.p_drop[k], res.iou[k])[0] for k in ecs_keys]
    i = [class_ics(defn, res.internal[(b, s)], labels[:limit])[0] for b in int_blocks for s in INTERNAL_STATES]
    with np.errstate(all="ignore"):
        return float(np.nanmean(e)) if masks is not None else float("nan"), float(np.nanmean(i))

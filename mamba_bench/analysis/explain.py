"""``mamba-bench explain``: Mender's state correlations and scores over a data set, and the repair.

Data flow: data set (optionally under one corruption) → Grad-ESC / Grad-ISC of each chosen block
and state, per image → ECS per image (perturbation × segmentation against foreground masks) →
ICS per class → ``scores.parquet`` per (model, block, state, sample group); images that the
corruption flips from right to wrong get side-by-side maps for the true and the predicted class.
``--repair`` fine-tunes with Mender's losses and measures the accuracy change in the same run.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mamba_bench.analysis import mender
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
    """One explain run. ``corruption=None`` analyses clean images; ``blocks=None`` every Mamba block."""

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
    states: list[str] = field(default_factory=lambda: list(mender.MENDER_STATES))
    difficult_fraction: float = 0.5
    views: int = 8
    view_state: str = "s"
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
    if spec.family != "vmamba":
        raise MambaBenchError(f"{name} has no selective-scan (Mamba) blocks: Mender's state correlations need a "
                              "Mamba model (vmamba-*, start-m, start-x); Swin and ConvNeXt have no SSM states")
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


def _stage(block: str) -> int:
    parts = block.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


def difficult_split(p_true: np.ndarray, fraction: float) -> np.ndarray:
    """Group per sample: the ``ceil(fraction × N)`` lowest true-class probabilities are 'difficult'."""
    n = len(p_true)
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    groups = np.full(n, "simple", dtype=object)
    groups[np.argsort(p_true, kind="stable")[:k]] = "difficult"
    return groups


def analyse(module, spec, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None, blocks: list[str],
            states: list[str], *, batch_size: int, device: torch.device, ecs_states=None):
    """Per-image true-class probability, prediction, ECS parts and ``i⁺`` for every (block, state).

    ``ecs_states``: the states whose ECS parts (perturbation ratio, IoU) are computed — the
    perturbation test costs two forward passes per (block, state); None: all. Others stay NaN.
    """
    n = len(labels)
    ecs_states = set(states if ecs_states is None else ecs_states)
    p_true, pred = np.zeros(n), np.zeros(n, np.int64)
    ratio = {(b, s): np.full(n, np.nan) for b in blocks for s in states}
    iou = {(b, s): np.full(n, np.nan) for b in blocks for s in states}
    i_pos: dict[tuple[str, str], list[torch.Tensor]] = {(b, s): [] for b in blocks for s in states}
    for a in range(0, n, batch_size):
        x = to_model_input(torch.from_numpy(images[a:a + batch_size]), spec, device)
        y = torch.from_numpy(labels[a:a + batch_size]).to(device)
        corr = mender.state_correlations(module, x, y, blocks, states)
        p_true[a:a + len(y)] = corr.probs.gather(1, y[:, None])[:, 0].cpu().numpy()
        pred[a:a + len(y)] = corr.probs.argmax(1).cpu().numpy()
        m = None if masks is None else torch.from_numpy(masks[a:a + batch_size]).to(device)
        for key, e in corr.external.items():
            if key[1] in ecs_states:
                ratio[key][a:a + len(y)] = mender.perturbation_ratio(module, x, y, e).cpu().numpy()
                if m is not None:
                    iou[key][a:a + len(y)] = mender.segmentation_iou(e, m).cpu().numpy()
            i_pos[key].append(mender.positive_channels(corr.internal[key]).cpu())
    return p_true, pred, ratio, iou, {k: torch.cat(v) for k, v in i_pos.items()}


def class_ics(i_pos: torch.Tensor, labels: np.ndarray) -> tuple[float, float, float, int]:
    """Mean over classes (with ≥ 2 samples) of (ICS, simplicity, homogeneity), and the class count."""
    vals = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            s, h = mender.ics(i_pos[torch.from_numpy(idx)])
            vals.append((s * h, s, h))
    if not vals:
        return float("nan"), float("nan"), float("nan"), 0
    arr = np.asarray(vals, float)
    with np.errstate(all="ignore"):
        return (*(float(np.nanmean(arr[:, k])) if not np.isnan(arr[:, k]).all() else float("nan")
                  for k in range(3)), len(vals))


def score_table(model: str, blocks: list[str], all_blocks: list[str], states: list[str], labels: np.ndarray,
                groups: np.ndarray, ratio, iou, i_pos) -> pd.DataFrame:
    rows = []
    for b in blocks:
        for s in states:
            for g in ("simple", "difficult", "all"):
                sel = np.ones(len(labels), bool) if g == "all" else groups == g
                if not sel.any():
                    continue
                r = ratio[(b, s)][sel]
                pert = r / (1 + r)
                io = iou[(b, s)][sel]
                e = pert * io
                ics_v, simp, homo, n_cls = class_ics(i_pos[(b, s)][torch.from_numpy(np.flatnonzero(sel))],
                                                     labels[sel])
                with np.errstate(all="ignore"):
                    rows.append({
                        "model": model, "block": b, "stage": _stage(b), "index": all_blocks.index(b), "state": s,
                        "group": g, "n_samples": int(sel.sum()), "n_classes": n_cls,
                        "ecs": float(np.nanmean(e)) if not np.isnan(e).all() else float("nan"),
                        "perturbation": float(pert.mean()),
                        "iou": float(np.nanmean(io)) if not np.isnan(io).all() else float("nan"),
                        "ics": ics_v, "simplicity": simp, "homogeneity": homo})
    df = pd.DataFrame(rows, columns=list(SCORES_SCHEMA))
    return df.astype(SCORES_SCHEMA)


def run_explain(cfg: ExplainConfig) -> dict:
    """Scores, plots and misclassification views of one model; returns paths and the score table."""
    from mamba_bench.eval.corrupt import default_workers, resolve_device

    t0 = time.perf_counter()
    out = Path(cfg.out)
    done = finished_run(out, "explain", result_config(cfg))
    if done is not None:
        return {"out": out, "scores": pd.read_parquet(out / "scores.parquet"),
                "samples": pd.read_parquet(out / "samples.parquet"), "flips": pd.read_parquet(out / "flips.parquet"),
                "plots": [out / p for p in done["plots"]], "masks": done["data"]["masks"] is not None,
                "resumed": True}
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
    device = resolve_device(cfg.device)
    workers = default_workers() if cfg.workers is None else cfg.workers
    ds = open_dataset(cfg.data, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels)
    if cfg.limit is not None:
        ds.samples = ds.samples[:cfg.limit]
        if ds.arrays is not None:
            ds.arrays = ds.arrays[:cfg.limit]
    loaded = resolve_model(cfg.model, cfg.weights, ds, cache_dir=cfg.cache_dir, seed=cfg.seed)
    module, spec = loaded.module.to(device), loaded.spec
    all_blocks = mender.mamba_blocks(module, cfg.model)
    blocks = select_blocks(all_blocks, cfg.blocks)
    clean, ids, labels = load_images(ds, workers)
    masks = foreground_masks(ds, clean, ids, cfg.masks)
    images = corrupt_images(clean, ids, cells[0], cfg.seed, workers) if cells else clean

    p_true, pred, ratio, iou, i_pos = analyse(module, spec, images, labels, masks, blocks, states,
                                              batch_size=cfg.batch_size, device=device)
    groups = difficult_split(p_true, cfg.difficult_fraction)
    scores = score_table(cfg.model, blocks, all_blocks, states, labels, groups, ratio, iou, i_pos)
    samples = pd.DataFrame({"image_id": ids, "label": labels, "pred": pred, "p_true": p_true,
                            "group": groups.astype(str)})
    for b in blocks:
        for s in states:
            r = ratio[(b, s)]
            samples[f"ecs/{b}/{s}"] = r / (1 + r) * iou[(b, s)]

    out.mkdir(parents=True, exist_ok=True)
    from mamba_bench.analysis.plots import plot_flips, plot_scores

    plots = [plot_scores(scores, out / "scores.png", cfg.model)]
    flips = pd.DataFrame({"image_id": pd.Series(dtype="string"), "label": pd.Series(dtype="int64"),
                          "clean_pred": pd.Series(dtype="int64"), "pred": pd.Series(dtype="int64"),
                          "p_true": pd.Series(dtype="float64")})
    if cells:
        clean_pred = _predict(module, spec, clean, cfg.batch_size, device)
        flipped = np.flatnonzero((clean_pred == labels) & (pred != labels))
        flips = pd.DataFrame({"image_id": [ids[k] for k in flipped], "label": labels[flipped],
                              "clean_pred": clean_pred[flipped], "pred": pred[flipped], "p_true": p_true[flipped]})
        if len(flipped) and cfg.views > 0:
            show = flipped[:cfg.views]
            view_block = blocks[-1]
            maps_true, p_t = _maps(module, spec, images[show], labels[show], view_block, cfg.view_state, device)
            maps_pred, p_p = _maps(module, spec, images[show], pred[show], view_block, cfg.view_state, device)
            plots.append(plot_flips(clean[show], images[show], maps_true, maps_pred, labels[show], pred[show],
                                    p_t, p_p, ds.class_names, out / "flips.png",
                                    f"{cfg.model}: {cfg.corruption} severity {cfg.severity}, Grad-ESC of "
                                    f"state {cfg.view_state} in {view_block}"))
    atomic_write_parquet(out / "samples.parquet", samples)
    atomic_write_parquet(out / "flips.parquet", flips)
    manifest = {
        "command": "explain", "argv": sys.argv, "config": asdict(cfg), "result_config": result_config(cfg),
        "device": str(device), "model": {"name": loaded.name, "weights": loaded.weights,
                                                               "weights_sha256": loaded.weights_sha256},
        "data": {"name": ds.name, "root": ds.root, "images": len(ids), "notes": ds.notes,
                 "masks": "digit strokes" if cfg.masks is None and masks is not None else cfg.masks},
        "blocks": blocks, "states": states, "flipped": int(len(flips)), "plots": [p.name for p in plots],
        "seconds": round(time.perf_counter() - t0, 1), "environment": environment(), "git_commit": git_commit(),
    }
    atomic_write_json(out / "manifest.json", manifest)
    atomic_write_parquet(out / "scores.parquet", scores)  # the marker of a finished run: last
    return {"out": out, "scores": scores, "samples": samples, "flips": flips, "plots": plots,
            "masks": masks is not None, "resumed": False}


def _cells(suite_path: str | None, names: list[str], severity: int):
    if not names:
        return []
    from mamba_bench.corruptions import load_suite

    suite = load_suite(suite_path)
    chosen = suite.select(names)
    return [(c, s) for c in chosen for s in suite.severities(c, [severity])]


@torch.no_grad()
def _predict(module, spec, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    preds = []
    for a in range(0, len(images), batch_size):
        x = to_model_input(torch.from_numpy(images[a:a + batch_size]), spec, device)
        preds.append(module(x).argmax(1).cpu())
    return torch.cat(preds).numpy()


def _maps(module, spec, images: np.ndarray, targets: np.ndarray, block: str, state: str, device):
    """Upsampled ``e⁺`` in [0, 1] (N, H, W) for ``targets`` and the targets' probabilities."""
    x = to_model_input(torch.from_numpy(images), spec, device)
    t = torch.from_numpy(np.asarray(targets, np.int64)).to(device)
    corr = mender.state_correlations(module, x, t, [block], [state])
    pos = mender.positive_negative(corr.external[(block, state)])[0]
    maps = mender.upsample(pos, images.shape[1:3])[:, 0].clamp(0, 1).cpu().numpy()
    return maps, corr.probs.gather(1, t[:, None])[:, 0].cpu().numpy()


# ---------------------------------------------------------------------------------------------- repair


@dataclass
class RepairConfig:
    """Mender's repair: fine-tune with the external loss on c and s and the internal loss on x."""

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
    lambda_ext: float = 1.0
    lambda_int: float = 1.0
    corruptions: list[str] | str = "all"
    severity: int = 3
    suite: str | None = None
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    workers: int | None = None
    batch_size: int = 64


#: Training images per class that the internal loss's class templates are averaged over.
TEMPLATE_IMAGES = 50
ARMS = {"ce": (False, False), "ext": (True, False), "int": (False, True), "all": (True, True)}


def default_repair_blocks(all_blocks: list[str]) -> list[str]:
    """The deep blocks: those of the last two stages."""
    stages = sorted({_stage(b) for b in all_blocks})
    deep = set(stages[-2:])
    return [b for b in all_blocks if _stage(b) in deep]


def class_templates(module, spec, images, labels, blocks, num_classes: int, *, batch_size: int, device,
                    per_class: int = TEMPLATE_IMAGES):
    """Per block, the class templates ``î`` (C, D): mean ``i⁺`` of the state x over each class's
    correctly classified training images (all of its images when none is), from the first
    ``per_class`` training images of each class."""
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
    images, labels = images[pick], labels[pick]
    _, pred, _, _, i_pos = analyse(module, spec, images, labels, None, blocks, ["x"], batch_size=batch_size,
                                   device=device, ecs_states=())
    out = {}
    for b in blocks:
        ip = i_pos[(b, "x")]
        t = torch.zeros(num_classes, ip.shape[1])
        for c in range(num_classes):
            idx = np.flatnonzero((labels == c) & (pred == c))
            if not len(idx):
                idx = np.flatnonzero(labels == c)
            if len(idx):
                t[c] = ip[torch.from_numpy(idx)].mean(0)
        out[b] = t.to(device)
    return out


def repair_step_losses(module, x, y, masks, blocks, templates, use_ext: bool, use_int: bool):
    """(cross-entropy, external loss, internal loss) of one batch; the losses are 0 when unused."""
    states = (["c", "s"] if use_ext else []) + (["x"] if use_int else [])
    zero = torch.zeros((), device=x.device)
    if not states:
        return F.cross_entropy(module(x), y), zero, zero
    corr = mender.state_correlations(module, x, y, blocks, states, keep_graph=True)
    ce = F.nll_loss(corr.probs.clamp_min(1e-12).log(), y)
    ext = sum((mender.external_loss(corr.external[(b, s)], masks) for b in blocks for s in ("c", "s")),
              zero) / len(blocks) if use_ext else zero
    itn = sum((mender.internal_loss(corr.internal[(b, "x")], templates[b][y]) for b in blocks), zero) / len(blocks) \
        if use_int else zero
    return ce, ext, itn


def finetune_arm(base, spec, images, labels, masks, blocks, templates, arm: str, cfg: RepairConfig, device):
    """A copy of ``base`` fine-tuned ``cfg.steps`` steps; the data order depends on the seed only
    (every arm sees the same batches), so arms differ by their losses alone."""
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
        ce, ext, itn = repair_step_losses(model, x, y, m, blocks, templates, use_ext, use_int)
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


def run_repair(cfg: RepairConfig, on_arm=None) -> dict:
    """Fine-tune one copy of the model per arm and evaluate all of them, and the base, on the test
    data, clean and corrupted, in one pass over the corrupted images."""
    from mamba_bench.corruptions import load_suite
    from mamba_bench.eval.corrupt import LoadedModel, default_workers, iterate_cells, resolve_device
    from mamba_bench.models.weights import save_checkpoint

    t0 = time.perf_counter()
    out = Path(cfg.out)
    done = finished_run(out, "explain --repair", result_config(cfg))
    if done is not None:
        return {"out": out, "table": pd.read_parquet(out / "repair.parquet"),
                "history": pd.read_parquet(out / "history.parquet"), "blocks": done["blocks"],
                "checkpoint": out / done["checkpoint"], "resumed": True}
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad or not cfg.arms:
        raise MambaBenchError(f"unknown --arms {','.join(bad) or '(none)'}; valid: {', '.join(ARMS)}")
    for name, v in (("--repair-steps", cfg.steps), ("--repair-batch", cfg.train_batch),
                    ("--batch-size", cfg.batch_size)):
        if v < 1:
            raise MambaBenchError(f"{name} must be >= 1, not {v}")
    if cfg.lr <= 0 or cfg.lambda_ext < 0 or cfg.lambda_int < 0:
        raise MambaBenchError("--lr must be > 0 and --lambda-ext / --lambda-int >= 0")
    suite = load_suite(cfg.suite)
    chosen = suite.select(cfg.corruptions)
    cells = [(None, 0)] + [(c, s) for c in chosen for s in suite.severities(c, [cfg.severity])]
    device = resolve_device(cfg.device)
    workers = default_workers() if cfg.workers is None else cfg.workers
    test = open_dataset(cfg.data, per_class=cfg.per_class, seed=cfg.seed, labels=cfg.labels)
    base = resolve_model(cfg.model, cfg.weights, test, cache_dir=cfg.cache_dir, seed=cfg.seed)
    spec = base.spec
    module = base.module.to(device)
    blocks = select_blocks(mender.mamba_blocks(module, cfg.model), cfg.blocks) if cfg.blocks \
        else default_repair_blocks(mender.mamba_blocks(module, cfg.model))
    tr_x, tr_y, tr_m = _train_set(cfg, test, base)
    if tr_y.max() >= test.num_classes:
        raise MambaBenchError("training labels exceed the model's classes")
    templates = class_templates(module, spec, tr_x, tr_y, blocks, test.num_classes, batch_size=cfg.batch_size,
                                device=device)
    models = [LoadedModel("base", spec, module.eval(), base.weights, base.weights_sha256)]
    history = []
    for arm in cfg.arms:
        if on_arm is not None:
            on_arm(arm)
        m, h = finetune_arm(module, spec, tr_x, tr_y, tr_m, blocks, templates, arm, cfg, device)
        models.append(LoadedModel(arm, spec, m, None, None))
        history += h

    te_x, te_ids, te_y = load_images(test, workers)
    te_masks = foreground_masks(test, te_x, te_ids, cfg.masks if cfg.train_data is None else None)
    rows = {m.name: {"clean": np.nan, "corrupted": []} for m in models}
    labels_t = torch.from_numpy(te_y)
    for j, _, res in iterate_cells(te_x, te_ids, labels_t, cells, list(range(len(cells))), models,
                                   seed=cfg.seed, batch_size=cfg.batch_size, workers=workers, device=device):
        for name, r in res.items():
            top1 = float(np.mean(r["correct"])) * 100
            if cells[j][0] is None:
                rows[name]["clean"] = top1
            else:
                rows[name]["corrupted"].append(top1)
    table = []
    for m in models:
        ecs_v, ics_v = _repair_scores(m.module, spec, te_x, te_y, te_masks, blocks, device, cfg.batch_size)
        corr = rows[m.name]["corrupted"]
        table.append({"arm": m.name, "clean_top1": rows[m.name]["clean"],
                      "corrupted_top1": float(np.mean(corr)) if corr else float("nan"),
                      "ecs": ecs_v, "ics": ics_v, "steps": 0 if m.name == "base" else cfg.steps})
    df = pd.DataFrame(table)
    b = df.iloc[0]
    df["clean_change"] = df.clean_top1 - b.clean_top1
    df["corrupted_change"] = df.corrupted_top1 - b.corrupted_top1
    out.mkdir(parents=True, exist_ok=True)
    best = "all" if "all" in cfg.arms else cfg.arms[-1]
    ckpt = save_checkpoint(next(m.module for m in models if m.name == best), out / f"repaired-{best}.safetensors",
                           {"mamba_bench_model": cfg.model, "num_classes": str(test.num_classes),
                            "dataset": test.name, "repair_arm": best, "repaired_from": str(base.weights),
                            "blocks": ",".join(blocks)})
    atomic_write_parquet(out / "history.parquet", pd.DataFrame(history))
    atomic_write_json(out / "manifest.json", {
        "command": "explain --repair", "argv": sys.argv, "config": asdict(cfg), "result_config": result_config(cfg),
        "device": str(device), "blocks": blocks,
        "cells": [[c.name if c else "clean", s] for c, s in cells], "test_images": len(te_y),
        "train_images": len(tr_y), "checkpoint": ckpt.name, "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(), "git_commit": git_commit()})
    atomic_write_parquet(out / "repair.parquet", df)  # the marker of a finished run: last
    return {"out": out, "table": df, "history": pd.DataFrame(history), "blocks": blocks, "checkpoint": ckpt,
            "resumed": False}


def _repair_scores(module, spec, images, labels, masks, blocks, device, batch_size: int, limit: int = 200):
    """Mean ECS over the repaired blocks' c and s states and mean ICS of their x state (first
    ``limit`` test images): the scores the repair is meant to raise."""
    _, _, ratio, iou, i_pos = analyse(module, spec, images[:limit], labels[:limit],
                                      None if masks is None else masks[:limit], blocks, ["x", "c", "s"],
                                      batch_size=batch_size, device=device, ecs_states=("c", "s"))
    e = [np.nanmean(ratio[(b, s)] / (1 + ratio[(b, s)]) * iou[(b, s)]) for b in blocks for s in ("c", "s")]
    i = [class_ics(i_pos[(b, "x")], labels[:limit])[0] for b in blocks]
    with np.errstate(all="ignore"):
        return float(np.nanmean(e)) if masks is not None else float("nan"), float(np.nanmean(i))

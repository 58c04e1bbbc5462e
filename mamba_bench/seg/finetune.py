"""``finetune``: U-Mamba on road segmentation, regimes ``scratch`` / ``full`` / ``freeze`` on one budget.

* ``scratch``: random initialisation (seeded);
* ``full``: every weight from ``--init``, all trained;
* ``freeze``: like ``full`` for ``freeze_warmup`` iterations (1 <= warm-up < iters, counted in the
  budget; default ``min(50, max(1, iters // 10))``, so a short run works) while the mean absolute
  gradient of every parameter tensor is accumulated; then every tensor whose mean |grad| is below
  ``freeze_threshold`` (0 < threshold <= 1) × the median over all tensors is frozen
  (``requires_grad`` off) and the optimiser is rebuilt over the rest, so neither momentum nor
  weight decay moves the frozen tensors any more, while the rest keep their optimiser state (SGD
  momentum buffers or AdamW moments). The report saw near-zero gradients in the Mamba layers (its
  Figure 1): this rule finds such tensors wherever they are, and the closing table says which were
  frozen.

Optimiser (``optimizer``): ``sgd`` (default), nnU-Net's ``nnUNetTrainer`` (U-Mamba's trainers
inherit it): SGD, Nesterov, momentum 0.99, lr 1e-2, weight decay 3e-5, gradient norm clipped at 12,
poly schedule ``lr · (1 − t/T)^0.9`` — nnU-Net steps it once per epoch of 250 iterations over 1000
epochs, here once per iteration over the budget; ``adamw``: our earlier AdamW, lr 1e-3, weight
decay 1e-4, the same poly schedule, no clipping.

Loss: cross-entropy + (1 − soft Dice of the road class over the batch), on every decoder level with
nnU-Net's deep-supervision weights for the official architecture (``nnUNetTrainer._build_loss``:
1, 1/2, 1/4, ... with the coarsest output's weight set to 0, normalised to sum 1) and our earlier
1, 1/2, 1/4, ... normalised for ``arch="ours"``. nnU-Net's Dice term is −Dice (its loss goes
negative; the report's "unnormalised" Dice); 1 − Dice differs by a constant, the same gradients.
Training samples random ``crop``-sized crops of the training tiles with flips and 90° rotations;
evaluation runs tiled inference over whole validation tiles (windows of ``crop`` with half
overlap, softmax averaged) and reports road Dice and IoU over all pixels and the validation loss.

Output: ``OUT/<mode>/last.pt`` (safetensors, usable as ``--init``), ``OUT/<mode>/state.pt`` (resume),
``OUT/metrics.parquet`` (one row per mode × evaluation step; ``peak_mem_mb`` is the regime's peak
CUDA allocation, NaN on CPU), ``OUT/finetune.png`` (the report's Figure 5: validation loss and Dice
against the step, every regime on one chart).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.dg.data import seed_hash
from mamba_bench.errors import CheckpointError, MambaBenchError, RunDirError
from mamba_bench.results.store import atomic_write_bytes, atomic_write_json, atomic_write_parquet
from mamba_bench.seg.roads import RoadSplit, open_roads
from mamba_bench.seg.umamba import ARCHES, UMamba, build_umamba

MODES = ("scratch", "full", "freeze")
CHECKPOINT_KIND = "mamba-bench finetune checkpoint"
METRIC_COLUMNS = ["mode", "step", "dice", "iou", "val_loss", "trainable_params", "frozen_tensors", "sec_per_iter",
                  "peak_mem_mb"]
#: nnU-Net's nnUNetTrainer (SGD) and our earlier AdamW
OPTIMIZERS = {"sgd": {"lr": 1e-2, "weight_decay": 3e-5, "momentum": 0.99, "clip": 12.0},
              "adamw": {"lr": 1e-3, "weight_decay": 1e-4, "clip": None}}


def default_freeze_warmup(iters: int) -> int:
    """--freeze-warmup's default: a tenth of the budget, at least 1 and at most 50."""
    return min(50, max(1, iters // 10))


def deep_supervision_weights(n: int, scheme: str = "nnunet") -> torch.Tensor:
    """Loss weights of ``n`` outputs, fine to coarse: nnU-Net's 1/2^i with the coarsest set to 0 (for
    n > 1), or our earlier 1/2^i; normalised to sum 1."""
    w = torch.tensor([0.5 ** i for i in range(n)])
    if scheme == "nnunet" and n > 1:
        w[-1] = 0.0
    return w / w.sum()


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FinetuneConfig:
    data: str
    model: str = "umamba-bot"
    width: int = 16
    init: str | None = None
    iters: int = 6000
    crop: int = 256
    batch_size: int = 8
    lr: float | None = None            # default: the optimiser's (sgd 1e-2, adamw 1e-3)
    weight_decay: float | None = None  # default: the optimiser's (sgd 3e-5, adamw 1e-4)
    eval_every: int = 500
    seed: int = 0
    deep_supervision: bool = True
    freeze_warmup: int | None = None   # default: min(50, max(1, iters // 10))
    freeze_threshold: float = 0.05
    optimizer: str = "sgd"
    arch: str = "official"

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise MambaBenchError(f"unknown --arch-variant {self.arch!r}; valid: {', '.join(ARCHES)}")
        if self.optimizer not in OPTIMIZERS:
            raise MambaBenchError(f"unknown --optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        for key in ("lr", "weight_decay"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, OPTIMIZERS[self.optimizer][key])
        if self.freeze_warmup is None:
            object.__setattr__(self, "freeze_warmup", default_freeze_warmup(self.iters))

    def fingerprint(self, mode: str) -> str:
        import hashlib

        return hashlib.sha256(json.dumps([mode, asdict(self)], sort_keys=True).encode()).hexdigest()[:16]


# -- loss and metrics --------------------------------------------------------------------------------------------
def seg_loss(outs, mask: torch.Tensor, scheme: str = "nnunet") -> torch.Tensor:
    """CE + (1 − soft Dice of class 1) per level, :func:`deep_supervision_weights` (levels of weight 0
    are skipped, as nnU-Net's DeepSupervisionWrapper does)."""
    if isinstance(outs, torch.Tensor):
        outs = [outs]
    weights = deep_supervision_weights(len(outs), scheme)
    total = 0.0
    for w, logits in zip(weights, outs, strict=True):
        if w == 0:
            continue
        target = mask
        if logits.shape[-1] != mask.shape[-1]:
            target = F.interpolate(mask[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        logits = logits.float()
        ce = F.cross_entropy(logits, target)
        p = logits.softmax(1)[:, 1]
        t = (target == 1).float()
        dice = (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
        total = total + w * (ce + 1 - dice)
    return total


def _to_input(img: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    s = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def sample_batch(split: RoadSplit, crop: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    imgs, masks = [], []
    for _ in range(batch):
        i = int(rng.integers(len(split)))
        im, mk = split.images[i], split.masks[i]
        h, w = mk.shape
        if h < crop or w < crop:
            raise MambaBenchError(f"{split.names[i]} is {w}x{h}, smaller than --crop {crop}")
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        a, b = im[y:y + crop, x:x + crop], mk[y:y + crop, x:x + crop]
        k = int(rng.integers(4))
        a, b = np.rot90(a, k), np.rot90(b, k)
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        imgs.append(a)
        masks.append(b)
    return np.stack(imgs), np.stack(masks)


@torch.no_grad()
def predict_tile(model: UMamba, img: np.ndarray, crop: int, device, batch: int = 16) -> torch.Tensor:
    """Softmax (2, H, W) of one whole tile: windows of ``crop`` at half overlap, averaged."""
    h, w = img.shape[:2]
    x = _to_input(img[None], device)
    m = model.multiple
    ph, pw = max(crop, -(-h // m) * m), max(crop, -(-w // m) * m)
    x = F.pad(x, (0, pw - w, 0, ph - h), mode="reflect" if pw - w < w and ph - h < h else "constant")
    acc = torch.zeros(2, ph, pw, device=device)
    cnt = torch.zeros(1, ph, pw, device=device)
    step = max(m, crop // 2)
    ys = sorted({*range(0, ph - crop + 1, step), ph - crop})
    xs = sorted({*range(0, pw - crop + 1, step), pw - crop})
    corners = [(y, x0) for y in ys for x0 in xs]
    for a in range(0, len(corners), batch):  # windows go through the model in batches
        part = corners[a:a + batch]
        out = model(torch.cat([x[:, :, y:y + crop, x0:x0 + crop] for y, x0 in part])).float().softmax(1)
        for (y, x0), p in zip(part, out, strict=True):
            acc[:, y:y + crop, x0:x0 + crop] += p
            cnt[:, y:y + crop, x0:x0 + crop] += 1
    return (acc / cnt)[:, :h, :w]


@torch.no_grad()
def evaluate(model: UMamba, split: RoadSplit, crop: int, device) -> dict:
    model.eval()
    tp = fp = fn = 0
    losses = []
    for img, mask in zip(split.images, split.masks, strict=True):
        prob = predict_tile(model, img, crop, device)
        target = torch.from_numpy(mask.astype(np.int64)).to(device)
        pred = prob.argmax(0)
        tp += int(((pred == 1) & (target == 1)).sum())
        fp += int(((pred == 1) & (target == 0)).sum())
        fn += int(((pred == 0) & (target == 1)).sum())
        logp = prob.clamp(min=1e-8).log()
        ce = F.nll_loss(logp[None], target[None])
        p, t = prob[1], (target == 1).float()
        dice = (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
        losses.append(float(ce + 1 - dice))
    return {"dice": 2 * tp / max(1, 2 * tp + fp + fn), "iou": tp / max(1, tp + fp + fn),
            "val_loss": float(np.mean(losses))}


# -- one regime --------------------------------------------------------------------------------------------------
def load_init(model: nn.Module, path: str) -> None:
    from mamba_bench.models.weights import check_fit, checkpoint_metadata, read_state_dict

    if not Path(path).is_file():
        raise CheckpointError(f"--init {path}: no such file")
    md = checkpoint_metadata(path)
    state = read_state_dict(path)
    try:
        check_fit(model, state, "this U-Mamba")
    except CheckpointError as exc:
        arch = (f" (it is a {md.get('model')} of width {md.get('width')}"
                + (f", --arch-variant {md['arch']}, --crop {md.get('crop')}" if "arch" in md else "")
                + ")") if md.get("kind") == CHECKPOINT_KIND else ""
        raise CheckpointError(f"--init {path} does not fit this U-Mamba{arch}: {exc}") from None
    model.load_state_dict(state, strict=True)


def _peak_mb(device) -> float | None:
    """Peak CUDA memory allocated by this regime so far (MB; reset when the regime starts).

    None on CPU: the only cheap CPU figure, the process's max RSS, is a high-water mark over the
    whole process (every earlier regime, data loading, ...), not this regime's memory.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return None


def check_freeze_config(cfg: FinetuneConfig) -> None:
    """The freeze regime needs a warm-up inside the budget and a threshold that keeps tensors trainable."""
    if cfg.iters < 2:
        raise MambaBenchError(f"--mode freeze needs --iters of at least 2 (a warm-up, then frozen iterations), "
                              f"got {cfg.iters}")
    if not 1 <= cfg.freeze_warmup < cfg.iters:
        raise MambaBenchError(f"--freeze-warmup must be at least 1 and below --iters ({cfg.iters}), got "
                              f"{cfg.freeze_warmup} (0 measures no gradients and freezes nothing)")
    if not 0 < cfg.freeze_threshold <= 1:
        raise MambaBenchError(f"--freeze-threshold must be in (0, 1] (a fraction of the median mean |grad|; "
                              f"above 1 it can freeze every tensor), got {cfg.freeze_threshold}")


def _optimizer(model, cfg: FinetuneConfig, step: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":  # nnUNetTrainer.configure_optimizers
        opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=OPTIMIZERS["sgd"]["momentum"],
                              nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for g in opt.param_groups:
        g["initial_lr"] = cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / cfg.iters) ** 0.9, last_epoch=step - 1)
    return opt, sched


def rebuild_optimizer(model, old: torch.optim.Optimizer, cfg: FinetuneConfig, step: int):
    """The optimiser over the still-trainable tensors, keeping their state (AdamW moments and step counts,
    SGD momentum buffers).

    The frozen tensors leave it (so neither momentum nor weight decay moves them); the others carry
    on exactly as with the old optimiser.
    """
    if not any(p.requires_grad for p in model.parameters()):  # an empty optimiser would raise a bare ValueError
        raise MambaBenchError("the freeze rule froze every tensor; use a lower --freeze-threshold")
    opt, sched = _optimizer(model, cfg, step)
    for p in opt.param_groups[0]["params"]:
        if p in old.state:
            opt.state[p] = old.state[p]
    return opt, sched


def run_mode(cfg: FinetuneConfig, mode: str, train: RoadSplit, valid: RoadSplit, out: Path, device,
             on_eval=None) -> list[dict]:
    mdir = out / mode
    conf = {"config": asdict(cfg), "mode": mode, "fingerprint": cfg.fingerprint(mode)}
    started = any((mdir / f).exists() for f in ("state.pt", "last.pt", "metrics.json"))
    if (mdir / "config.json").exists() and started:  # a mode that never saved a step binds nothing
        if json.loads((mdir / "config.json").read_text()).get("fingerprint") != conf["fingerprint"]:
            raise RunDirError(f"{mdir} holds a {mode} run with another configuration; use another --out")
    if (mdir / "last.pt").exists() and (mdir / "metrics.json").exists():
        return json.loads((mdir / "metrics.json").read_text())["rows"]
    if mode != "scratch" and cfg.init is None:
        raise MambaBenchError(f"--mode {mode} starts from pre-trained weights: pass --init CHECKPOINT")
    if mode == "freeze":
        check_freeze_config(cfg)
    atomic_write_json(mdir / "config.json", conf)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_hash(cfg.seed, "init"))
        model = build_umamba(cfg.model, cfg.width, arch=cfg.arch, input_size=cfg.crop)
    model.deep_supervision = cfg.deep_supervision
    if mode != "scratch":
        load_init(model, cfg.init)
    model.to(device)
    step, rows, frozen = 0, [], []
    grad_acc: dict[str, float] = {}
    train_seconds = 0.0
    state_path = mdir / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        step, rows, frozen = st["step"], json.loads(st["rows"]), json.loads(st["frozen"])
        grad_acc, train_seconds = json.loads(st["grad_acc"]), float(st["train_seconds"])
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)
        opt, sched = _optimizer(model, cfg, step)
        opt.load_state_dict(st["opt"])
    else:
        opt, sched = _optimizer(model, cfg, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while step < cfg.iters:
        model.train()
        rng = np.random.default_rng(seed_hash(cfg.seed, "batch", step))  # data depend on the step only
        imgs, masks = sample_batch(train, cfg.crop, cfg.batch_size, rng)
        x = _to_input(imgs, device)
        y = torch.from_numpy(masks.astype(np.int64)).to(device)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs = model(x)
        loss = seg_loss(outs, y, "nnunet" if cfg.arch == "official" else "ours")
        if not torch.isfinite(loss):
            raise MambaBenchError(f"{mode}: the loss became {float(loss)} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if OPTIMIZERS[cfg.optimizer]["clip"] is not None:  # nnUNetTrainer.train_step: clip_grad_norm_(..., 12)
            torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZERS[cfg.optimizer]["clip"])
        if mode == "freeze" and step < cfg.freeze_warmup:
            for n, p in model.named_parameters():
                if p.grad is not None:
                    grad_acc[n] = grad_acc.get(n, 0.0) + float(p.grad.abs().mean()) / cfg.freeze_warmup
        opt.step()
        sched.step()
        step += 1
        if mode == "freeze" and step == cfg.freeze_warmup:
            frozen = freeze_rule(grad_acc, cfg.freeze_threshold)
            for n, p in model.named_parameters():
                p.requires_grad_(n not in frozen)
            opt, sched = rebuild_optimizer(model, opt, cfg, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        if step % cfg.eval_every == 0 or step == cfg.iters:
            ev = evaluate(model, valid, cfg.crop, device)
            row = {"mode": mode, "step": step, **ev,
                   "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "frozen_tensors": len(frozen), "sec_per_iter": train_seconds / step,
                   "peak_mem_mb": _peak_mb(device)}
            rows.append(row)
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "rows": json.dumps(rows),
                        "frozen": json.dumps(frozen), "grad_acc": json.dumps(grad_acc),
                        "train_seconds": train_seconds}, buf)
            atomic_write_bytes(state_path, buf.getvalue())
            _write_metrics(out)
            if on_eval is not None:  # after the state is on disk: an interruption here loses nothing
                on_eval(row)
    from mamba_bench.models.weights import save_checkpoint

    save_checkpoint(model, mdir / "last.pt", {"kind": CHECKPOINT_KIND, "model": cfg.model, "width": str(cfg.width),
                                              "arch": cfg.arch, "crop": str(cfg.crop), "mode": mode,
                                              "step": str(step), "config": json.dumps(asdict(cfg))})
    atomic_write_json(mdir / "metrics.json", {"rows": rows, "frozen": frozen,
                                              "grad_magnitude": grad_acc})
    _write_metrics(out)
    return rows


def freeze_rule(grad_mean_abs: dict[str, float], threshold: float) -> list[str]:
    """Tensors whose mean |grad| over the warm-up is below ``threshold`` × the median over all tensors."""
    if not grad_mean_abs:
        return []
    cut = threshold * float(np.median(list(grad_mean_abs.values())))
    return sorted(n for n, g in grad_mean_abs.items() if g < cut)


def _write_metrics(out: Path) -> None:
    rows = []
    for mode in MODES:
        st = out / mode / "state.pt"
        done = out / mode / "metrics.json"
        if done.exists():
            rows += json.loads(done.read_text())["rows"]
        elif st.exists():
            rows += json.loads(torch.load(st, map_location="cpu", weights_only=True)["rows"])
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    df["peak_mem_mb"] = df["peak_mem_mb"].astype(float)  # NaN where not measured (CPU)
    atomic_write_parquet(out / "metrics.parquet", df)


def plot_curves(df: pd.DataFrame, path: Path) -> Path:
    from mamba_bench.results.plots import plt, save_figure  # Agg backend, atomic PNG writes

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode in dict.fromkeys(df["mode"]):
        d = df[df["mode"] == mode]
        axes[0].plot(d.step, d.val_loss, marker="o", ms=3, label=mode)
        axes[1].plot(d.step, d.dice, marker="o", ms=3, label=mode)
    axes[0].set(xlabel="iteration", ylabel="validation loss (CE + 1 − Dice)", title="(a) validation loss")
    axes[1].set(xlabel="iteration", ylabel="road Dice", title="(b) Dice")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def finetune(cfg: FinetuneConfig, modes: list[str], out: Path, device, on_mode=None, on_eval=None) -> pd.DataFrame:
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise MambaBenchError(f"unknown --mode {bad[0]!r}; valid: {', '.join(MODES)}")
    if cfg.crop % 16:
        raise MambaBenchError(f"--crop must be a multiple of 16 (the U-Net's 4 down-samplings), got {cfg.crop}")
    if "freeze" in modes:
        check_freeze_config(cfg)
    if cfg.init is not None and not Path(cfg.init).is_file():
        raise CheckpointError(f"--init {cfg.init}: no such file")
    train, valid = open_roads(cfg.data, "train"), open_roads(cfg.data, "valid")
    if not len(train) or not len(valid):
        raise MambaBenchError(f"{cfg.data}: the train and valid splits need at least one tile each")
    out = Path(out)
    for mode in modes:
        if on_mode is not None:
            on_mode(mode)
        run_mode(cfg, mode, train, valid, out, device, on_eval)
    df = pd.read_parquet(out / "metrics.parquet")
    plot_curves(df, out / "finetune.png")
    return df

"""``dg-train``: leave-one-domain-out training with the DomainBed protocol.

One *cell* = (algorithm, test domain, seed). It trains on the ``in`` splits of every other domain
(each step draws ``batch_size`` images from each training domain, with replacement, as DomainBed's
infinite loaders do), evaluates every ``eval_every`` steps on the ``in`` and ``out`` split of every
domain, and keeps:

    OUT/<algorithm>/<test domain>/seed<k>/
        config.json   the cell's resolved configuration and its fingerprint
        state.pt      resume state: model, optimiser, schedule, RNG states, evaluations so far
        best.pt       weights at the step chosen by training-domain validation (safetensors +
                      metadata: architecture, classes, algorithm, data set, split, seed, step)
        last.pt       weights after the last step (same format)
        evals.json    every evaluation (step, domain, split, accuracy, n)

Every file is written atomically (temporary file, then ``os.replace``). ``state.pt`` is written at
every evaluation, then ``best.pt`` when that evaluation is the best so far; killing a run and
running the same command again resumes from the last evaluation with the same random streams (and
rewrites ``best.pt`` if the run stopped between the two). A cell whose ``last.pt`` exists is
complete and skipped.

The recipe (optimiser, schedule, loss, augmentation, regularisers: :mod:`mamba_bench.dg.recipes`)
is ``cfg.recipe``; the splits and evaluation points are ``cfg.protocol``'s:

* ``domainbed`` evaluates as DomainBed's ``scripts/train.py``, whose loop evaluates at step indices
  ``s % checkpoint_freq == 0`` and at the last one, each *after* that step's update: after update 1
  (DomainBed's "step 0"), 1 + every, 1 + 2·every, ... and the last. Steps here count updates done,
  so DomainBed's step s is recorded as step s + 1;
* ``dgmamba`` and ``ours`` evaluate after updates every, 2·every, ... and the last (DGMamba: every
  epoch of 200 updates).

Evaluation images are stretched to ``image_size`` squared (bilinear: DomainBed's and DGMamba's
eval transform, ``Resize((224, 224))``). The checkpoints record that resize (``resize_mode``,
``interpolation``), and ``predict`` / ``corrupt`` preprocess with it instead of the ImageNet resize
+ center crop.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.dg.algorithms import get_algorithm
from mamba_bench.dg.data import DGDataset, Domain, cell_splits, seed_hash
from mamba_bench.dg.recipes import (
    build_optimizer,
    get_recipe,
    lr_lambda,
    mixup_cutmix,
    set_drop_path,
    soft_cross_entropy,
    warmup_cosine,
)
from mamba_bench.errors import MambaBenchError, RunDirError
from mamba_bench.models.registry import DG_KIND
from mamba_bench.results.store import atomic_write_bytes, atomic_write_json

CHECKPOINT_KIND = DG_KIND
#: how training (and evaluation) images are brought to ``image_size``: stretched to a square, bilinear
RESIZE_MODE, INTERPOLATION = "stretch", "bilinear"


@dataclass(frozen=True)
class DGTrainConfig:
    dataset: str
    algorithm: str
    test_domain: str
    seed: int
    init: str = "vmamba-nano"
    weights: str | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    image_size: int = 224
    eval_every: int = 50
    augment: str = "imagenet"
    hparams: dict = field(default_factory=dict)
    protocol: str = "domainbed"     # splits and evaluation points: domainbed, dgmamba or ours
    recipe: str = "ours"            # optimiser, schedule, loss, regularisers (mamba_bench.dg.recipes)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=list).encode()).hexdigest()[:16]

    def cell_dir(self, out: Path) -> Path:
        return Path(out) / self.algorithm / self.test_domain / f"seed{self.seed}"


lr_factor = warmup_cosine  # recipe ``ours``'s schedule (the name earlier code imported)


def eval_due(step: int, steps: int, every: int, protocol: str) -> bool:
    """Whether to evaluate after ``step`` updates (see the module docstring)."""
    if step == steps:
        return True
    if protocol == "domainbed":
        return (step - 1) % every == 0
    return step % every == 0


# -- images ------------------------------------------------------------------------------------------------
class ImageSource:
    """uint8 (n, 3, S, S) tensors of a domain's samples, decoded in a thread pool (files) or sliced."""

    def __init__(self, image_size: int, threads: int = 8):
        self.size = image_size
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def _one(self, domain: Domain, i: int) -> np.ndarray:
        from PIL import Image

        from mamba_bench.data.images import load_image_rgb, stretch_resize

        if domain.arrays is not None:
            img = Image.fromarray(domain.arrays[i])
        else:
            img = load_image_rgb(domain.paths[i])
        return stretch_resize(img, self.size, INTERPOLATION)

    def original(self, domain: Domain, i: int) -> torch.Tensor:
        """One image at its own size, uint8 (3, H, W): what DomainBed's and DGMamba's training
        transforms crop from (``RandomResizedCrop`` of the decoded image, no resize first)."""
        from PIL import Image

        from mamba_bench.data.images import load_image_rgb

        if domain.arrays is not None:
            arr = np.array(Image.fromarray(domain.arrays[i]).convert("RGB"))
        else:
            arr = np.array(load_image_rgb(domain.paths[i]))
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)

    def augmented(self, domain: Domain, idx: np.ndarray, augment) -> torch.Tensor:
        """uint8 (n, 3, S, S): ``augment`` applied to each image, from the original (``augment.from_original``)
        or from the stretched ``S`` x ``S`` image."""
        if augment.from_original:
            return torch.stack(list(self.pool.map(lambda i: augment(self.original(domain, int(i))), idx)))
        return torch.stack([augment(img) for img in self.batch(domain, idx)])

    def batch(self, domain: Domain, idx: np.ndarray) -> torch.Tensor:
        if domain.arrays is not None and domain.arrays.shape[1] == self.size:
            arr = domain.arrays[idx]
        else:
            arr = np.stack(list(self.pool.map(lambda i: self._one(domain, int(i)), idx)))
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


AUGMENTS = ("imagenet", "domainbed", "none")


def _augmenter(kind: str, size: int):
    """``imagenet``: RandomResizedCrop(0.7-1) of the image stretched to ``size``, flip, ColorJitter(0.3 ×4),
    grayscale p 0.1; ``domainbed``: the same transforms with the crop taken from the original image
    (DomainBed's ``datasets.py`` augment_transform, DGMamba's ``image_train``); ``none``."""
    if kind == "none":
        return None
    if kind not in AUGMENTS:
        raise MambaBenchError(f"unknown --augment {kind!r}; valid: {', '.join(AUGMENTS)}")
    from torchvision.transforms import v2

    aug = v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                      v2.ColorJitter(0.3, 0.3, 0.3, 0.3), v2.RandomGrayscale(0.1)])
    aug.from_original = kind == "domainbed"
    return aug


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    x = x.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# -- the model -----------------------------------------------------------------------------------------------
def build_dg_model(init: str, weights: str | None, num_classes: int, seed: int, cache_dir: str | None = None
                   ) -> nn.Module:
    """``init`` from the registry; with ``weights`` its backbone loads them strictly, then a new head."""
    from mamba_bench.models.registry import get_spec
    from mamba_bench.models.weights import load_weights_into

    spec = get_spec(init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_hash(seed, "init"))
        if weights is None:
            return spec.build(num_classes)
        model = spec.build()
        load_weights_into(model, weights, spec, cache_dir=cache_dir)
        reset_head(model, num_classes)
    return model


def reset_head(model: nn.Module, num_classes: int) -> None:
    from mamba_bench.models.vmamba import VMamba

    if isinstance(model, VMamba):
        model.classifier.head = nn.Linear(model.num_features, num_classes)
        nn.init.trunc_normal_(model.classifier.head.weight, std=0.02)
        nn.init.zeros_(model.classifier.head.bias)
    elif hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
    else:
        raise MambaBenchError(f"cannot replace the classifier of {type(model).__name__}")


def checkpoint_metadata(cfg: DGTrainConfig, ds: DGDataset, splits: dict, step: int, selection: str,
                        mean, std) -> dict[str, str]:
    return {
        "kind": CHECKPOINT_KIND, "arch": cfg.init, "num_classes": str(len(ds.classes)),
        "classes": json.dumps(ds.classes), "image_size": str(cfg.image_size), "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)), "resize_mode": RESIZE_MODE, "interpolation": INTERPOLATION,
        "algorithm": cfg.algorithm, "dataset": cfg.dataset,
        "test_domain": cfg.test_domain, "seed": str(cfg.seed), "step": str(step), "selection": selection,
        "split": json.dumps(splits), "config": json.dumps(asdict(cfg), default=list),
    }


# -- one cell ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, ds: DGDataset, splits: dict, source: ImageSource, mean, std, device,
             batch: int = 128, augment=None, augment_domains: frozenset[str] = frozenset()) -> list[dict]:
    """Accuracy of every split of every domain; ``augment_domains`` are seen through ``augment``
    (DomainBed evaluates its training domains with their training transform)."""
    model.eval()
    rows = []
    for d in ds.domains:
        for split, keys in splits[d.name].items():
            idx = np.asarray(keys, np.int64)
            correct = 0
            for a in range(0, len(idx), batch):
                part = idx[a:a + batch]
                imgs = (source.augmented(d, part, augment) if augment is not None and d.name in augment_domains
                        else source.batch(d, part))
                x = _normalise(imgs.to(device), mean, std)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    pred = model(x).argmax(1).cpu()
                correct += int((pred == torch.from_numpy(d.labels[part])).sum())
            rows.append({"domain": d.name, "split": split, "n": len(idx),
                         "accuracy": 100.0 * correct / max(1, len(idx))})
    return rows


def _val_score(rows: list[dict], test_domain: str) -> float:
    """Training-domain validation: mean accuracy on the training domains' ``out`` splits (best.pt's rule;
    the oracle never early-stops, it takes last.pt, see :func:`mamba_bench.dg.run.select_step`)."""
    outs = [r["accuracy"] for r in rows if r["domain"] != test_domain and r["split"] == "out"]
    return float(np.mean(outs))


def _checkpoint_step(path: Path) -> int | None:
    from mamba_bench.models.weights import checkpoint_metadata

    try:
        return int(checkpoint_metadata(path).get("step", ""))
    except (OSError, ValueError, MambaBenchError):  # missing, unreadable or damaged: not the best step
        return None


def train_cell(cfg: DGTrainConfig, ds: DGDataset, out: Path, *, device: torch.device, threads: int = 8,
               cache_dir: str | None = None, on_eval=None) -> dict:
    """Train (or resume, or skip when complete) one cell; returns its summary."""
    from mamba_bench.models.registry import get_spec
    from mamba_bench.models.weights import save_checkpoint

    cell = cfg.cell_dir(out)
    conf_path = cell / "config.json"
    conf = {"config": asdict(cfg), "fingerprint": cfg.fingerprint()}
    if conf_path.exists():
        old = json.loads(conf_path.read_text())
        # a cell that never saved a step (refused, say, for a bad hyper-parameter) binds nothing
        started = any((cell / f).exists() for f in ("state.pt", "best.pt", "last.pt", "evals.json"))
        if old.get("fingerprint") != conf["fingerprint"] and started:
            raise RunDirError(f"{cell} holds a run with another configuration; use another --out or delete it")
    if (cell / "last.pt").exists() and (cell / "evals.json").exists():
        return {"cell": str(cell), "skipped": True, **json.loads((cell / "evals.json").read_text())["summary"]}
    atomic_write_json(conf_path, json.loads(json.dumps(conf, default=list)))

    test_i = ds.index(cfg.test_domain)
    splits = cell_splits(ds, cfg.protocol, cfg.seed, cfg.test_domain)
    split_sizes = {k: {name: len(idx) for name, idx in v.items()} for k, v in splits.items()}
    spec = get_spec(cfg.init)
    mean, std = spec.mean, spec.std
    algo = get_algorithm(cfg.algorithm)
    hparams = {**algo.defaults, **cfg.hparams}
    recipe = get_recipe(cfg.recipe)
    model = build_dg_model(cfg.init, cfg.weights, len(ds.classes), cfg.seed, cache_dir).to(device)
    if recipe.drop_path > 0:
        set_drop_path(model, recipe.drop_path)
    handle = algo.attach(model, hparams)
    train_domains = [i for i in range(len(ds.domains)) if i != test_i]
    opt = build_optimizer(model, recipe, cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(recipe, cfg.lr, cfg.steps, cfg.warmup_fraction,
                                                             len(train_domains)))
    gens = {i: torch.Generator().manual_seed(seed_hash(cfg.seed, "sampler", i)) for i in train_domains}
    mix_gen = torch.Generator().manual_seed(seed_hash(cfg.seed, "mixup"))
    mixing = recipe.mixup > 0 or recipe.cutmix > 0
    augment = _augmenter(cfg.augment, cfg.image_size)
    eval_aug = frozenset(ds.domains[i].name for i in train_domains) if recipe.eval_augment_sources else frozenset()
    source = ImageSource(cfg.image_size, threads)
    evals: list[dict] = []
    step = 0
    best = {"score": -1.0, "step": -1}
    state_path = cell / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, evals, best = st["step"], json.loads(st["evals"]), json.loads(st["best"])
        for i in train_domains:
            gens[i].set_state(st["gens"][str(i)])
        mix_gen.set_state(st["mix_gen"])
        torch.set_rng_state(st["rng"])
        if device.type == "cuda" and "cuda_rng" in st:
            torch.cuda.set_rng_state(st["cuda_rng"])
    else:
        torch.manual_seed(seed_hash(cfg.seed, "train"))

    def save_best() -> None:
        save_checkpoint(model, cell / "best.pt",
                        checkpoint_metadata(cfg, ds, split_sizes, step, "training-domain validation", mean, std))

    if step > 0 and best["step"] == step and _checkpoint_step(cell / "best.pt") != step:
        save_best()  # the run stopped between state.pt and best.pt: the state's weights are the best ones
    t0 = time.perf_counter()
    elapsed0 = float(best.get("seconds", 0.0))
    loss_sum, loss_n = 0.0, 0
    while step < cfg.steps:
        model.train()
        xs, ys = [], []
        for i in train_domains:
            d = ds.domains[i]
            pool = np.asarray(splits[d.name]["in"], np.int64)
            pick = pool[torch.randint(len(pool), (cfg.batch_size,), generator=gens[i]).numpy()]
            xs.append(source.batch(d, pick) if augment is None else source.augmented(d, pick, augment))
            ys.append(torch.from_numpy(d.labels[pick]))
        x = _normalise(torch.cat(xs).to(device), mean, std)
        y = torch.cat(ys).to(device)
        if mixing:  # labels become soft targets with the label smoothing folded in (timm's Mixup)
            x, soft = mixup_cutmix(x, y, len(ds.classes), recipe.mixup, recipe.cutmix, cfg.label_smoothing, mix_gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        if mixing:
            loss = soft_cross_entropy(logits.float(), soft)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise MambaBenchError(f"{cell}: the loss became {float(loss)} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        opt.step()
        sched.step()
        step += 1
        loss_sum += float(loss.detach())
        loss_n += 1
        if eval_due(step, cfg.steps, cfg.eval_every, cfg.protocol):
            rows = evaluate(model, ds, splits, source, mean, std, device, augment=augment, augment_domains=eval_aug)
            for r in rows:
                r["step"] = step
            evals += rows
            score = _val_score(rows, cfg.test_domain)
            seconds = elapsed0 + time.perf_counter() - t0
            improved = score > best["score"]
            if improved:
                best = {"score": score, "step": step}
            best["seconds"] = seconds
            mean_loss = loss_sum / max(1, loss_n)
            loss_sum, loss_n = 0.0, 0
            st = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                  "evals": json.dumps(evals), "best": json.dumps(best), "rng": torch.get_rng_state(),
                  "gens": {str(i): g.get_state() for i, g in gens.items()}, "mix_gen": mix_gen.get_state()}
            if device.type == "cuda":
                st["cuda_rng"] = torch.cuda.get_rng_state()
            import io

            buf = io.BytesIO()
            torch.save(st, buf)
            atomic_write_bytes(state_path, buf.getvalue())
            # best.pt after state.pt (both atomic): a crash in between leaves a state whose best step
            # is its own step, and resuming writes best.pt from that state's weights
            if improved:
                save_best()
            if on_eval is not None:  # after the state is on disk: an interruption here loses nothing
                on_eval(cfg, step, mean_loss, rows)
    handle.remove()
    summary = {"best_step": best["step"], "train_val": best["score"], "seconds": best.get("seconds", 0.0),
               "steps": cfg.steps}
    atomic_write_json(cell / "evals.json", {"summary": summary, "splits": split_sizes, "evals": evals})
    save_checkpoint(model, cell / "last.pt",
                    checkpoint_metadata(cfg, ds, split_sizes, step, "last step", mean, std))
    source.pool.shutdown()
    return {"cell": str(cell), "skipped": False, **summary}

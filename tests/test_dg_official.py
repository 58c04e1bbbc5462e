"""The DG protocols of the official code: DomainBed's splits, error bars and evaluation points,
the DGMamba recipe, DSU's official positions and START's two readings of its open choices."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mamba_bench.dg.data import DGDataset, Domain, cell_splits, rotated_digits, seed_hash
from mamba_bench.dg.recipes import (
    build_optimizer,
    dgmamba_lr,
    get_recipe,
    mixup_cutmix,
    recipe_defaults,
    set_drop_path,
)
from mamba_bench.dg.train import DGTrainConfig, eval_due, train_cell


def _domainbed_seed_hash(*args) -> int:
    # DomainBed lib/misc.py: md5 of str(args) modulo 2**31
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def _domainbed_split(n: int, trial_seed: int, env_i: int) -> tuple[list[int], list[int]]:
    """DomainBed scripts/train.py + lib/misc.split_dataset, written from their description:
    keys 0..n-1 shuffled in place by RandomState(seed_hash(trial_seed, env_i)); the first
    int(n * holdout_fraction) keys are the 'out' split, the rest the 'in' split."""
    keys = list(range(n))
    np.random.RandomState(_domainbed_seed_hash(trial_seed, env_i)).shuffle(keys)
    n_out = int(n * 0.2)
    return sorted(keys[n_out:]), sorted(keys[:n_out])


@pytest.mark.parametrize("trial_seed, env_i, n", [
    (0, 0, 2048), (0, 3, 3929), (1, 1, 2344), (2, 2, 1670), (5, 0, 7), (0, 5, 300), (17, 4, 1001),
])
def test_domainbed_split_indices_are_domainbeds(trial_seed, env_i, n):
    d = Domain("d", np.zeros(n, np.int64))
    a, b = d.split(trial_seed, env_i)
    ref_in, ref_out = _domainbed_split(n, trial_seed, env_i)
    assert a.tolist() == ref_in and b.tolist() == ref_out
    assert seed_hash(trial_seed, env_i) == _domainbed_seed_hash(trial_seed, env_i)
    if n > 20:  # the earlier split has the same sizes but other indices (kept as protocol "ours")
        old_in, old_out = d.split(trial_seed, env_i, "ours")
        assert len(old_out) == len(b) and old_out.tolist() != ref_out


def test_dgmamba_split_is_stratified_and_keeps_the_test_domain_whole():
    ds = rotated_digits()
    s = cell_splits(ds, "dgmamba", 0, "75deg")
    assert s["75deg"] == {"all": list(range(len(ds.domains[5])))}
    for d in ds.domains[:5]:
        inn, out = np.asarray(s[d.name]["in"]), np.asarray(s[d.name]["out"])
        assert sorted([*inn, *out]) == list(range(len(d))) and len(out) == round(0.2 * len(d))
        # stratified: every class keeps its share (within one image) in the held-out 20 %
        for c in range(10):
            assert abs((d.labels[out] == c).sum() - 0.2 * (d.labels == c).sum()) <= 1
    # DGMamba seeds every domain's split with the same random_state, not with the domain index
    d0, d1 = ds.domains[0], ds.domains[1]
    assert np.array_equal(d0._stratified_split(0)[1], d0.split(0, 3, "dgmamba")[1])
    assert s[d1.name] != cell_splits(ds, "dgmamba", 1, "75deg")[d1.name]


# -- evaluation points, recipes -----------------------------------------------------------------------------


def _tiny_ds(n: int = 12, size: int = 32, domains: int = 3) -> DGDataset:
    """A few random 32 px images per domain: training and evaluating a cell costs well under a second."""
    rng = np.random.default_rng(0)
    doms = [Domain(f"d{k}", np.arange(n) % 2, arrays=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
            for k in range(domains)]
    return DGDataset("tiny", "memory", doms, ["a", "b"])


TINY = DGTrainConfig(dataset="tiny", algorithm="erm", test_domain="d2", seed=0, init="vmamba-nano", steps=5,
                     batch_size=2, image_size=32, eval_every=2, augment="none")


def test_domainbed_evaluation_points():
    # DomainBed's train.py: for step in range(n_steps): update; evaluate if step % freq == 0 or step == n_steps - 1
    ref = [s + 1 for s in range(5001) if s % 300 == 0 or s == 5000]  # recorded as updates done
    assert [k for k in range(1, 5002) if eval_due(k, 5001, 300, "domainbed")] == ref
    assert ref[:3] == [1, 301, 601] and ref[-1] == 5001
    assert [k for k in range(1, 11) if eval_due(k, 10, 4, "dgmamba")] == [4, 8, 10]  # DGMamba: every epoch


def test_cells_evaluate_after_the_first_update_under_domainbeds_protocol(tmp_path):
    ds = _tiny_ds()
    cfg = replace(TINY, steps=3)
    train_cell(cfg, ds, tmp_path, device=torch.device("cpu"))
    ev = json.loads((cfg.cell_dir(tmp_path) / "evals.json").read_text())
    assert sorted({e["step"] for e in ev["evals"]}) == [1, 3]  # today's code: [2, 3]
    assert {e["split"] for e in ev["evals"] if e["domain"] == "d2"} == {"in", "out"}


def test_recipe_values_are_the_official_ones():
    db = recipe_defaults("domainbed", "pacs")
    assert (db["steps"], db["batch_size"], db["lr"], db["weight_decay"], db["eval_every"]) == (5001, 32, 5e-5, 0, 300)
    assert db["augment"] == "domainbed" and db["label_smoothing"] == 0 and db["protocol"] == "domainbed"
    assert recipe_defaults("domainbed", "domain-net")["eval_every"] == 1000
    small = recipe_defaults("domainbed", "rotated-digits")  # DomainBed's SMALL_IMAGES hyper-parameters
    assert (small["lr"], small["batch_size"], small["augment"], small["eval_every"]) == (1e-3, 64, "none", 100)
    dg = recipe_defaults("dgmamba", "pacs")
    assert (dg["steps"], dg["batch_size"], dg["lr"], dg["eval_every"], dg["protocol"]) == (10000, 16, 3e-4, 200,
                                                                                            "dgmamba")
    r = get_recipe("dgmamba")
    assert (r.drop_path, r.mixup, r.cutmix, r.clip_grad) == (0.2, 0.8, 1.0, 5.0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, r, 3e-4, 0.05)  # DGMamba: no decay on 1-D tensors and biases
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)} and isinstance(opt, torch.optim.AdamW)
    opt = build_optimizer(model, get_recipe("domainbed"), 5e-5, 0.0)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == 0


@pytest.mark.parametrize("n_train", [3, 5])
def test_dgmamba_schedule_is_timms_as_dgmamba_builds_it(n_train):
    """DGMamba builds timm's CosineLRScheduler with n_iter_per_epoch = len(list of train loaders) and steps it
    with epoch * 200 + idx after each update; the first update runs at the scheduler's initial value."""
    from timm.scheduler.cosine_lr import CosineLRScheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=3e-4)
    num, warm = int(50 * n_train), int(3 * n_train)
    sched = CosineLRScheduler(opt, t_initial=num - warm, lr_min=3e-4 * 0.05, warmup_lr_init=3e-7, warmup_t=warm,
                              cycle_limit=1, t_in_epochs=False, warmup_prefix=True)
    ref = []
    for k in range(10000):
        ref.append(opt.param_groups[0]["lr"])
        sched.step_update(k)
    ours = [dgmamba_lr(k, 3e-4, 10000, n_train) for k in range(10000)]
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert ours[0] == 3e-7 and ours[warm + 1] == pytest.approx(3e-4) and ours[-1] == pytest.approx(1.5e-5)
    assert all(v == pytest.approx(1.5e-5) for v in ours[num + 1:])  # the minimum long before the end


def test_mixup_and_cutmix_follow_timm():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    seen = set()
    for _ in range(40):
        xm, t = mixup_cutmix(x, y, 3, 0.8, 1.0, 0.1, g)
        assert torch.allclose(t.sum(1), torch.ones(6))
        changed = (xm != x).flatten(1).any(1)
        pasted = ((xm == x.flip(0)) & (xm != x)).float().mean().item()
        lam = float(t[0, 0] - 0.1 / 3) / 0.9 if y[0] != y[-1] else None  # the weight of sample 0's own label
        if pasted > 0:  # CutMix: a box of the reversed batch, λ = the area left
            seen.add("cutmix")
            area = float(((xm == x.flip(0)) & (xm != x))[0, 0].float().mean())
            assert lam == pytest.approx(1 - area, abs=0.1)
        elif changed.any():  # Mixup: λ x + (1 - λ) x.flip(0) everywhere
            seen.add("mixup")
            assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    assert seen == {"mixup", "cutmix"}
    a = mixup_cutmix(x, y, 3, 0.8, 1.0, 0.1, torch.Generator().manual_seed(3))
    b = mixup_cutmix(x, y, 3, 0.8, 1.0, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded, no global RNG


def test_drop_path_rises_over_the_blocks_and_acts_in_training():
    from mamba_bench.models.registry import get_spec
    from mamba_bench.models.vmamba import VSSBlock

    model = get_spec("vmamba-nano").build(10)
    n = set_drop_path(model, 0.2)
    rates = [b.drop_path.p for b in model.modules() if isinstance(b, VSSBlock)]
    assert n == 5 and rates == pytest.approx(torch.linspace(0, 0.2, 5).tolist())
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


def test_dgmamba_recipe_cell_resumes_exactly(tmp_path):
    """Mixup/CutMix, drop-path and clipping in the loop; the mixing generator is part of the resume state."""
    ds = _tiny_ds()
    cfg = replace(TINY, recipe="dgmamba", protocol="dgmamba", steps=2, eval_every=1)
    train_cell(cfg, ds, tmp_path / "a", device=torch.device("cpu"))
    ev = json.loads((cfg.cell_dir(tmp_path / "a") / "evals.json").read_text())
    assert {e["split"] for e in ev["evals"] if e["domain"] == "d2"} == {"all"}  # the whole test domain

    class Stop(Exception):
        pass

    def stop(c, step, loss, rows):
        if step == 1:
            raise Stop

    with pytest.raises(Stop):
        train_cell(cfg, ds, tmp_path / "b", device=torch.device("cpu"), on_eval=stop)
    train_cell(cfg, ds, tmp_path / "b", device=torch.device("cpu"))
    from safetensors.torch import load_file

    a, b = load_file(cfg.cell_dir(tmp_path / "a") / "last.pt"), load_file(cfg.cell_dir(tmp_path / "b") / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_domainbed_augments_from_the_original_image_and_evaluates_sources_augmented(tmp_path, monkeypatch):
    from mamba_bench.dg import train as train_mod

    calls = []
    real = train_mod.ImageSource.original

    def original(self, domain, i):
        calls.append(domain.name)
        return real(self, domain, i)

    monkeypatch.setattr(train_mod.ImageSource, "original", original)
    ds = _tiny_ds(size=40)  # originals of 40 px, trained at 32
    cfg = replace(TINY, recipe="domainbed", augment="domainbed", steps=1, eval_every=1)
    train_cell(cfg, ds, tmp_path, device=torch.device("cpu"))
    # training draws 2 images per source domain; the evaluation sees all 24 source images augmented,
    # the test domain plainly (DomainBed's datasets.py gives training domains their augment transform)
    assert calls.count("d0") == calls.count("d1") == 2 + 12 and "d2" not in calls
    calls.clear()
    train_cell(replace(cfg, recipe="ours", augment="imagenet"), ds, tmp_path / "o", device=torch.device("cpu"))
    assert calls == []  # ours crops from the stretched image and evaluates without augmentation


def test_dg_train_recipe_options_are_checked(tmp_path, cli):
    from mamba_bench.dg.run import dg_train
    from mamba_bench.errors import UnknownNameError

    r = cli("dg-train", "--dataset", "rotated-digits", "--recipe", "swin", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown --recipe 'swin'; valid: ours, domainbed, dgmamba" in r.stderr
    for change, message in (({"protocol": "random"}, "unknown --protocol 'random'; valid: domainbed, dgmamba, ours"),
                            ({"augment": "autoaugment"}, "unknown --augment 'autoaugment'; valid: imagenet, "
                                                         "domainbed, none")):
        with pytest.raises(UnknownNameError, match=message):
            dg_train(dataset="rotated-digits", data_root=None, algorithms=["erm"], test_domains=None, seeds=[0],
                     base=replace(TINY, **change), out=tmp_path / "o", device=torch.device("cpu"))
    assert not (tmp_path / "o").exists()  # refused before any work


# -- START's open choices ---------------------------------------------------------------------------------
def _nano_op():
    from mamba_bench.models.registry import get_spec

    torch.manual_seed(0)
    model = get_spec("vmamba-nano").build(10)
    return model, model.layers[0].blocks[0].op


def test_start_softmax_axis_is_the_chosen_one(monkeypatch):
    from mamba_bench.dg.algorithms import start_saliency

    _, op = _nano_op()
    x = torch.randn(2, op.d_inner, 4, 4)
    real = torch.softmax
    seen = []

    def spy(t, dim, *a, **k):
        out = real(t, dim, *a, **k)
        seen.append((t.shape, dim % t.dim()))
        return out

    monkeypatch.setattr(torch, "softmax", spy)
    tok = start_saliency(op, x, "m", "tokens")
    chan = start_saliency(op, x, "m", "channels")
    (shape_t, dim_t), (shape_c, dim_c) = seen
    assert shape_t[dim_t] == 16  # over the H·W tokens of each direction and channel
    assert shape_c[dim_c] == op.d_inner  # over token i's own channels
    assert not torch.allclose(tok, chan)  # the readings give different saliencies


@pytest.mark.parametrize("tokens", ["salient", "non-salient"])
def test_start_perturbs_the_salient_tokens_or_the_others(tokens):
    from mamba_bench.dg.algorithms import start_saliency, start_transform

    _, op = _nano_op()
    x = torch.randn(2, op.d_inner, 4, 4)
    top = start_saliency(op, x, "x").topk(8, dim=1).indices  # ratio 0.5 of 16 tokens
    selected = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, top, True)
    torch.manual_seed(0)
    y = start_transform(op, x, "x", ratio=0.5, alpha=0.1, tokens=tokens)
    changed = (y != x).any(1).view(2, 16)
    # default (paper text): the salient tokens are perturbed; the poster's formula read literally:
    # x_aug = M_S * x + (1 - M_S) * x~ keeps them and perturbs the complementary half
    assert torch.equal(changed, selected if tokens == "salient" else ~selected)


def test_start_readings_are_hyper_parameters():
    from mamba_bench.dg.algorithms import get_algorithm
    from mamba_bench.errors import MambaBenchError

    algo = get_algorithm("start-m")
    assert (algo.defaults["start_tokens"], algo.defaults["start_softmax"]) == ("salient", "tokens")
    model, _ = _nano_op()
    for key, bad in (("start_tokens", "all"), ("start_softmax", "batch")):
        with pytest.raises(MambaBenchError, match=f"{key} must be one of"):
            algo.attach(model, {**algo.defaults, key: bad})


# -- DSU -------------------------------------------------------------------------------------------------
def test_dsu_official_statistics_carry_gradients():
    from mamba_bench.dg.algorithms import dsu, dsu_official

    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 5, 5)

    def grad(fn):
        x.grad = None
        torch.manual_seed(0)
        (fn(x) * w).sum().backward()
        return x.grad.clone()

    def reference(t):  # DSU's DistributionUncertainty.forward, written out
        mean, std = t.mean((2, 3)), (t.var((2, 3)) + 1e-6).sqrt()
        beta = mean + torch.randn_like(std) * (mean.var(0, keepdim=True) + 1e-6).sqrt()
        gamma = std + torch.randn_like(std) * (std.var(0, keepdim=True) + 1e-6).sqrt()
        return (t - mean[..., None, None]) / std[..., None, None] * gamma[..., None, None] + beta[..., None, None]

    torch.manual_seed(0)
    y = dsu_official(x)
    torch.manual_seed(0)
    torch.testing.assert_close(y, reference(x))
    torch.testing.assert_close(grad(dsu_official), grad(reference))
    assert not torch.allclose(grad(dsu_official), grad(dsu), atol=1e-4)  # ours detaches the statistics


@pytest.mark.parametrize("name, shapes", [
    ("dsu", [(16, 32), (32, 16), (32, 16), (64, 8), (128, 4), (256, 2)]),  # stem conv, stem, stages 0-3
    ("dsu-ours", [(32, 16), (64, 8), (128, 4)]),                            # after stages 0-2
])
def test_dsu_positions(monkeypatch, name, shapes):
    from mamba_bench.dg import algorithms

    seen = []
    real_official, real_ours = algorithms.dsu_official, algorithms.dsu

    def spy(fn):
        def wrapped(t, *a, **k):
            seen.append((t.shape[1], t.shape[2]))
            return fn(t, *a, **k)
        return wrapped

    monkeypatch.setattr(algorithms, "dsu_official", spy(real_official))
    monkeypatch.setattr(algorithms, "dsu", spy(real_ours))
    model, _ = _nano_op()
    algo = algorithms.get_algorithm(name)
    handle = algo.attach(model, {**algo.defaults, "p": 1.0})
    model.train()
    model(torch.randn(2, 3, 64, 64))
    assert seen == shapes
    seen.clear()
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()  # the 1x1 last stage is left alone
    handle.remove()
    if name == "dsu":
        assert [c for c, _ in seen] == [16, 32, 32, 64, 128]

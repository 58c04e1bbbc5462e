"""U-Mamba road segmentation: model, data layouts, loss/metrics, freezing rule, resumable fine-tuning."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mamba_bench.errors import CheckpointError, DataLayoutError
from mamba_bench.seg.finetune import FinetuneConfig, evaluate, freeze_rule, run_mode, seg_loss
from mamba_bench.seg.roads import RoadSplit, open_roads, synth_tile
from mamba_bench.seg.umamba import Mamba, build_umamba

SMALL = FinetuneConfig(data="synthetic-roads", width=4, iters=4, crop=32, batch_size=2, eval_every=2,
                       freeze_warmup=2)


def _tiny_split(n=2, size=48) -> RoadSplit:
    tiles = [synth_tile(i, "a", size) for i in range(n)]
    return RoadSplit([t[0] for t in tiles], [t[1] for t in tiles], [str(i) for i in range(n)])


@pytest.mark.parametrize("name", ["umamba-bot", "umamba-enc"])
def test_umamba_shapes_and_mamba_placement(name):
    model = build_umamba(name, width=4, arch="ours")  # the earlier architecture, kept by name
    layers = [k for k in model.mamba]
    assert layers == (["4"] if name == "umamba-bot" else ["1", "2", "3", "4"])
    x = torch.randn(2, 3, 48, 64)
    model.train()
    outs = model(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(48, 64), (24, 32), (12, 16), (6, 8)]
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 2, 48, 64)


def test_mamba_block_is_causal_and_uses_the_scan():
    torch.manual_seed(0)
    m = Mamba(8, d_state=16, d_conv=4, expand=2)
    x = torch.randn(1, 20, 8)
    y = m(x)
    x2 = x.clone()
    x2[:, 12:] += 5.0  # changing the future must not change the past
    y2 = m(x2)
    torch.testing.assert_close(y[:, :12], y2[:, :12])
    assert (y[:, 12:] - y2[:, 12:]).abs().max() > 1e-3
    y.sum().backward()
    assert m.A_log.grad is not None and m.A_log.grad.abs().sum() > 0


def test_synthetic_tiles_are_seeded_and_styles_differ():
    a1, m1 = synth_tile(3, "a")
    a2, m2 = synth_tile(3, "a")
    b, mb = synth_tile(3, "b")
    assert np.array_equal(a1, a2) and np.array_equal(m1, m2)
    assert set(np.unique(m1)) == {0, 1} and 0.01 < m1.mean() < 0.4
    assert np.abs(a1.astype(float).mean((0, 1)) - b.astype(float).mean((0, 1))).max() > 10  # another palette
    assert len(open_roads("synthetic-roads", "valid")) == 12


def _layout(root, kind="original", n=2, size=32):
    dirs = {"original": ("train/sat", "train/map", "valid/sat", "valid/map"),
            "kaggle": ("tiff/train", "tiff/train_labels", "tiff/val", "tiff/val_labels")}[kind]
    for i, d in enumerate(dirs):
        (root / d).mkdir(parents=True)
        for k in range(n):
            img, mask = synth_tile(k, "a", size)
            if i % 2 == 0:
                Image.fromarray(img).save(root / d / f"t{k}.tiff")
            else:
                Image.fromarray(mask * 255).save(root / d / f"t{k}.tif")
    return root


@pytest.mark.parametrize("kind", ["original", "kaggle"])
def test_massachusetts_layouts(tmp_path, kind):
    root = _layout(tmp_path / kind, kind)
    split = open_roads(str(root), "train")
    assert len(split) == 2 and split.masks[0].max() == 1 and split.images[0].shape == (32, 32, 3)
    assert np.array_equal(split.masks[1], synth_tile(1, "a", 32)[1])


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "train/map/t1.tif").unlink(), "images without a mask: t1"),
    (lambda r: Image.fromarray(np.zeros((8, 8), np.uint8)).save(r / "train/map/t0.tif"),
     "mask is 8x8, its image 32x32"),
    (lambda r: Image.fromarray(np.full((32, 32), 128, np.uint8)).save(r / "train/map/t0.tif"), "mask values must be"),
    (lambda r: Image.fromarray(np.zeros((32, 32), np.uint8)).save(r / "train/map/extra.tif"),
     "masks without an image: extra"),
])
def test_bad_pairs_are_listed(tmp_path, damage, message):
    root = _layout(tmp_path / "d")
    damage(root)
    with pytest.raises(DataLayoutError, match=message):
        open_roads(str(root), "train")


def test_loss_and_metrics_on_perfect_and_wrong_predictions():
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, 4:8] = 1
    perfect = torch.stack([(1 - mask).float(), mask.float()], 1) * 20 - 10
    assert seg_loss([perfect], mask) < 0.01
    assert seg_loss([-perfect], mask) > 1.5
    split = RoadSplit([np.zeros((32, 32, 3), np.uint8)], [np.ones((32, 32), np.uint8)], ["x"])

    class Const(torch.nn.Module):  # predicts "road" everywhere
        multiple = 16

        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1)

    ev = evaluate(Const(), split, 16, torch.device("cpu"))
    assert ev["dice"] == 1.0 and ev["iou"] == 1.0


def test_freeze_rule():
    g = {"a": 1.0, "b": 0.9, "c": 1e-6, "d": 0.01}
    assert freeze_rule(g, 0.05) == ["c", "d"]
    assert freeze_rule(g, 1e-9) == [] and freeze_rule({}, 0.5) == []


def test_regimes_resume_and_freeze(tmp_path):
    train, valid = _tiny_split(2), _tiny_split(1)
    dev = torch.device("cpu")
    pre = run_mode(SMALL, "scratch", train, valid, tmp_path / "pre", dev)
    assert [r["step"] for r in pre] == [2, 4]
    init = str(tmp_path / "pre" / "scratch" / "last.pt")
    cfg = replace(SMALL, init=init)
    full = run_mode(cfg, "full", train, valid, tmp_path / "a", dev)

    class Stop(Exception):
        pass

    def stop(row):
        if row["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        run_mode(cfg, "full", train, valid, tmp_path / "b", dev, on_eval=stop)
    resumed = run_mode(cfg, "full", train, valid, tmp_path / "b", dev)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a/full/last.pt"), load_file(tmp_path / "b/full/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["dice"] for r in full] == [r["dice"] for r in resumed]

    fcfg = replace(cfg, freeze_threshold=1.0)
    with pytest.raises(Stop):  # stop right after the warm-up (step 2), when the freezing happened
        run_mode(fcfg, "freeze", train, valid, tmp_path / "a", dev, on_eval=stop)
    at_freeze = torch.load(tmp_path / "a/freeze/state.pt", weights_only=True)["model"]
    frz = run_mode(fcfg, "freeze", train, valid, tmp_path / "a", dev)
    info = json.loads((tmp_path / "a/freeze/metrics.json").read_text())
    assert info["frozen"] and frz[-1]["trainable_params"] < full[-1]["trainable_params"]
    start = load_file(init)
    end = load_file(tmp_path / "a/freeze/last.pt")
    for name in info["frozen"]:  # neither momentum nor weight decay moves a frozen tensor
        assert torch.equal(end[name], at_freeze[name]), name
    moved = [k for k in start if k not in info["frozen"] and not torch.equal(start[k], end[k])]
    assert moved  # the rest still trains
    df = pd.read_parquet(tmp_path / "a/metrics.parquet")
    assert {"mode", "step", "dice", "iou", "val_loss", "trainable_params", "sec_per_iter"} <= set(df.columns)
    assert set(df["mode"]) == {"full", "freeze"}
    # on CPU there is no per-regime peak memory (max RSS is the whole process's): not reported
    assert all(r["peak_mem_mb"] is None for r in full + frz)
    assert df["peak_mem_mb"].dtype == float and df["peak_mem_mb"].isna().all()


def test_rebuilt_optimizer_keeps_the_adam_state_of_trainable_tensors():
    from mamba_bench.errors import MambaBenchError
    from mamba_bench.seg.finetune import _optimizer, rebuild_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    cfg = replace(SMALL, iters=10, lr=0.1, optimizer="adamw")
    opt, sched = _optimizer(model, cfg, 0)
    x = torch.randn(8, 3)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        sched.step()
    from copy import deepcopy

    ref = deepcopy(model)
    ref_opt, ref_sched = _optimizer(ref, cfg, 0)  # the old optimiser, continued: the reference
    ref_opt.load_state_dict(deepcopy(opt.state_dict()))  # (load_state_dict would share the moment tensors)
    ref_sched.load_state_dict(sched.state_dict())
    for m in (model, ref):
        m[0].requires_grad_(False)
    new, _ = rebuild_optimizer(model, opt, cfg, 3)
    assert len(new.param_groups[0]["params"]) == 2 and all(p in new.state for p in model[1].parameters())
    assert int(new.state[model[1].weight]["step"]) == 3
    for m, o in ((model, new), (ref, ref_opt)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    # the kept tensors move exactly as with the old optimiser (fresh moments would move them differently)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model[1].requires_grad_(False)
    with pytest.raises(MambaBenchError, match="froze every tensor"):
        rebuild_optimizer(model, new, cfg, 4)


@pytest.mark.parametrize("change, message", [
    ({"freeze_warmup": 0}, "--freeze-warmup must be at least 1 and below --iters (4), got 0"),
    ({"freeze_warmup": 4}, "--freeze-warmup must be at least 1 and below --iters (4), got 4"),
    ({"freeze_threshold": 0.0}, "--freeze-threshold must be in (0, 1]"),
    ({"freeze_threshold": 1.5}, "--freeze-threshold must be in (0, 1]"),
])
def test_freeze_settings_are_checked(tmp_path, change, message):
    from mamba_bench.errors import MambaBenchError

    cfg = replace(SMALL, init="x.pt", **change)
    with pytest.raises(MambaBenchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_mode(cfg, "freeze", _tiny_split(1), _tiny_split(1), tmp_path, torch.device("cpu"))
    assert not (tmp_path / "freeze").exists()  # refused before any work
    run_mode(replace(cfg, init=None, iters=1, eval_every=1), "scratch", _tiny_split(1), _tiny_split(1), tmp_path,
             torch.device("cpu"))  # the other regimes do not use them


def test_init_of_another_architecture_is_refused(tmp_path):
    other = build_umamba("umamba-enc", width=4, input_size=32)
    from mamba_bench.models.weights import save_checkpoint

    save_checkpoint(other, tmp_path / "enc.pt", {"kind": "mamba-bench finetune checkpoint", "model": "umamba-enc",
                                                 "width": "4"})
    with pytest.raises(CheckpointError, match="does not fit this U-Mamba .it is a umamba-enc of width 4"):
        run_mode(replace(SMALL, init=str(tmp_path / "enc.pt")), "full", _tiny_split(1), _tiny_split(1),
                 tmp_path / "o", torch.device("cpu"))


def test_a_mode_refused_before_its_first_step_does_not_bind_its_out(tmp_path):
    from mamba_bench.models.weights import save_checkpoint

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        run_mode(replace(SMALL, init=str(tmp_path / "junk.pt")), "full", _tiny_split(1), _tiny_split(1),
                 tmp_path / "o", torch.device("cpu"))
    assert (tmp_path / "o" / "full" / "config.json").exists()
    good = save_checkpoint(build_umamba(SMALL.model, width=4), tmp_path / "good.pt",
                           {"kind": "mamba-bench finetune checkpoint", "model": SMALL.model, "width": "4"})
    rows = run_mode(replace(SMALL, init=str(good), iters=1, eval_every=1), "full", _tiny_split(1), _tiny_split(1),
                    tmp_path / "o", torch.device("cpu"))
    assert len(rows) == 1 and (tmp_path / "o" / "full" / "last.pt").exists()


def test_finetune_cli(tmp_path, cli):
    out = tmp_path / "ft"
    args = ["finetune", "--data", "synthetic-roads", "--mode", "scratch", "--iters", "2", "--crop", "32",
            "--batch-size", "2", "--width", "4", "--out", str(out), "--device", "cpu"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert (out / "scratch" / "last.pt").exists() and (out / "finetune.png").stat().st_size > 1000
    assert len(pd.read_parquet(out / "metrics.parquet")) == 2
    # a short freeze run works: --freeze-warmup defaults to iters/10 (at least 1), not 50
    r = cli(*args[:args.index("--mode")], "--mode", "freeze", "--iters", "3", "--eval-every", "3", "--init",
            str(out / "scratch/last.pt"), *args[args.index("--crop"):args.index("--out")],
            "--out", str(tmp_path / "fr"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "fr/freeze/config.json").read_text())["config"]["freeze_warmup"] == 1
    for bad, msg in [(["--mode", "full"], "pass --init"), (["--crop", "40"], "multiple of 16"),
                     (["--optimizer", "lion"], "unknown --optimizer 'lion'; valid: sgd, adamw"),
                     (["--arch-variant", "v2"], "unknown --arch-variant 'v2'; valid: official, ours"),
                     (["--mode", "lora"], "unknown --mode 'lora'"), (["--init", "nope.pt", "--mode", "full"],
                                                                     "no such file"),
                     (["--data", str(tmp_path)], "no Massachusetts Roads layout"),
                     (["--mode", "freeze", "--freeze-warmup", "0"], "--freeze-warmup must be at least 1"),
                     (["--mode", "freeze", "--freeze-warmup", "1", "--freeze-threshold", "2"],
                      "--freeze-threshold must be in (0, 1]")]:
        a = list(args)
        for i in range(0, len(bad), 2):
            k = a.index(bad[i]) if bad[i] in a else None
            if k is None:
                a += bad[i:i + 2]
            else:
                a[k + 1] = bad[i + 1]
        a[a.index("--out") + 1] = str(tmp_path / "x")
        r = cli(*a)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)

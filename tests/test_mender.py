"""Vision Mamba Mender: correlations against per-image brute force (both definitions), the official
losses against the official code's batch-mean form, the scores' mechanics, the CLI. The formulas of
each definition on hand-computed tensors: test_mender_definitions.py."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mamba_bench.analysis import mender
from mamba_bench.analysis import mender_seed as seed
from mamba_bench.analysis.definitions import get_definition
from mamba_bench.analysis.explain import difficult_split, repair_blocks, select_blocks
from mamba_bench.errors import MambaBenchError
from mamba_bench.models.vmamba import VMamba, VMambaConfig, capture_internals


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return VMamba(VMambaConfig((1, 1, 2, 1), 32, 1, 1.0), num_classes=10).eval()


BLOCKS = ["layers.0.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]


#: Each definition's states (capture names), objective and maps, written out independently of its module.
BRUTE = {
    "official": ({"x": "in", "c": "x", "s": "ssm_norm", "y": "out"}, lambda logits, k: logits[0, k],
                 lambda s, g: (s.relu() * g.relu().mean((2, 3), keepdim=True)).mean(1),
                 lambda s, g: (s.relu() * g.relu()).mean((2, 3))),
    "seed": ({"x": "in", "c": "conv", "s": "ssm", "y": "out"}, lambda logits, k: logits.softmax(1)[0, k],
             lambda s, g: (g.mean((2, 3), keepdim=True) * s).mean(1), lambda s, g: (g * s).mean((2, 3))),
}


def test_correlations_match_per_image_autograd(nano):
    """The batched computation (one backward of the summed objectives) equals each image's own, for
    the states each definition names (official: c after SiLU, s after out_norm; logit vs probability)."""
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    y = torch.tensor([2, 7, 7])
    corr = {name: get_definition(name).correlations(nano, x, y, BLOCKS, ["x", "c", "s", "y"]) for name in BRUTE}
    for k in range(3):
        with capture_internals(nano, names={"in", "x", "conv", "ssm", "ssm_norm", "out"}, detach=False) as rec:
            logits = nano(x[k:k + 1])
        for name, (captures, objective, external, internal) in BRUTE.items():
            target = objective(logits, y[k])
            for b in BLOCKS:
                for state, capture in captures.items():
                    s = rec[b][capture]
                    (g,) = torch.autograd.grad(target, s, retain_graph=True)
                    torch.testing.assert_close(corr[name].external[(b, state)][k], external(s, g)[0].detach(),
                                               rtol=1e-4, atol=1e-9)
                    torch.testing.assert_close(corr[name].internal[(b, state)][k], internal(s, g)[0].detach(),
                                               rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(corr["seed"].probs[k], logits.softmax(1)[0].detach())
    assert corr["official"].external[(BLOCKS[0], "s")].shape == (3, 16, 16)
    assert corr["official"].external[(BLOCKS[2], "y")].shape == (3, 2, 2)
    assert corr["seed"].internal[(BLOCKS[1], "x")].shape == (3, 128)
    assert (corr["official"].external[(BLOCKS[0], "c")] >= 0).all()  # ReLU'd maps


def test_official_losses_equal_the_official_batch_mean_form(nano):
    """The official code differentiates the batch MEAN of the true-class logits and sums the external
    maps of c and s before its Σ(e ⊙ (1 − m)) / B: our per-image maps with the 1/B factors agree."""
    torch.manual_seed(5)
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([1, 4, 4])
    masks = torch.zeros(3, 64, 64)
    masks[:, 8:40, 20:60] = 1
    ext_b, int_b = "layers.0.blocks.0", "layers.3.blocks.0"
    templates = (torch.arange(10 * 256).reshape(10, 256) % 3 == 0).float()
    with capture_internals(nano, names={"in", "x", "ssm_norm"}, detach=False) as rec:
        logits = nano(x)
    mean_logit = logits.gather(1, y[:, None]).mean()
    e = 0
    for name in ("x", "ssm_norm"):  # official c and s
        a = rec[ext_b][name]
        (g,) = torch.autograd.grad(mean_logit, a, retain_graph=True)
        e = e + (a.relu() * g.relu().mean((2, 3), keepdim=True)).mean(1)
    up = torch.nn.functional.interpolate(e[:, None], size=(64, 64), mode="bilinear")[:, 0]
    want_ext = (up * (1 - masks)).sum() / 3
    a = rec[int_b]["in"]
    (g,) = torch.autograd.grad(mean_logit, a)
    want_int = ((a.relu() * g.relu()).mean((2, 3)) * (1 - templates[y])).mean()
    defn = get_definition("official")
    corr = defn.correlations(nano, x, y, [ext_b, int_b], ["x", "c", "s"], keep_graph=True)
    ext, itn = defn.repair_losses(corr, masks, y, [(ext_b, "c"), (ext_b, "s")], [(int_b, "x")], {int_b: templates})
    torch.testing.assert_close(ext, want_ext.detach(), rtol=1e-4, atol=0)
    torch.testing.assert_close(itn, want_int.detach(), rtol=1e-4, atol=0)


def test_positive_negative_and_iou():
    e = torch.tensor([[[2.0, -1.0], [0.5, -4.0]]])
    pos, neg = seed.positive_negative(e)
    torch.testing.assert_close(pos, torch.tensor([[[1.0, 0.0], [0.25, 0.0]]]))
    torch.testing.assert_close(neg, torch.tensor([[[0.0, 0.25], [0.0, 1.0]]]))
    # top-|m| pixels of e⁺ upsampled to 4x4: the left column block is hot
    e2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[:, :, :2] = True
    iou = seed.segmentation_iou(e2, m)
    assert iou[0] == pytest.approx(1.0) and iou[1] == pytest.approx(0.0)
    # an empty mask has nothing to segment: NaN, never 0 or 1
    assert torch.isnan(seed.segmentation_iou(e2[:1], torch.zeros(1, 4, 4, dtype=torch.bool)))[0]
    assert seed.sample_ecs(np.array([0.5, 0.75]), np.array([0.5, 0.25]), np.array([1.0, 0.5])) == \
        pytest.approx([0.5, 0.375])


def test_ics_simplicity_and_homogeneity():
    same = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    _, s, h = seed.ics(same)
    assert s == pytest.approx(0.5) and h == pytest.approx(1.0)  # identical samples: perfectly homogeneous
    disjoint = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    _, s, h = seed.ics(disjoint)
    assert h == pytest.approx(1 / 3) and s == pytest.approx(0.25)


def test_perturbation_ratio_rewards_the_region_the_model_uses():
    """A model that reads only the left half: keeping the left half beats keeping the right half."""
    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, :, :2].sum((1, 2, 3))
            return torch.stack([s, -s], 1)

    x = torch.ones(1, 3, 4, 4)
    left = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    for name, other_side in (("seed", -left), ("official", 1 - left)):  # official maps are ≥ 0
        defn = get_definition(name)
        keep, drop = defn.perturbation_probs(LeftHalf(), x, torch.tensor([0]), left)
        assert keep[0] > drop[0]
        keep, drop = defn.perturbation_probs(LeftHalf(), x, torch.tensor([0]), other_side)
        assert keep[0] < drop[0]


def test_seed_losses_penalise_outside_the_object_and_template():
    e = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    inside = torch.zeros(1, 4, 4)
    inside[:, :2] = 1
    assert float(seed.external_loss(e, inside)) == pytest.approx(0.0)
    assert float(seed.external_loss(e, 1 - inside)) == pytest.approx(1.0)
    # turning the correlation negative is no escape (the literal "e⁺ outside the mask" form would be 0)
    assert float(seed.external_loss(-e, 1 - inside)) == pytest.approx(1.0)
    assert float(seed.external_loss(torch.zeros(1, 2, 2), inside)) == pytest.approx(1.0)
    i = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    assert float(seed.internal_loss(i, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))) == pytest.approx(0.25)
    assert float(seed.internal_loss(i, torch.zeros(1, 4))) == pytest.approx(1.0)
    assert float(seed.internal_loss(-i.clamp_min(0), torch.ones(1, 4))) == pytest.approx(1.0)


def test_external_loss_trains_the_correlation_onto_the_mask(nano):
    """A few steps on the official Loss_e alone lower it: the gradient reaches the parameters through
    the states."""
    import copy

    model = copy.deepcopy(nano).train()
    torch.manual_seed(2)
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([0, 1, 2, 3])
    masks = torch.zeros(4, 64, 64)
    masks[:, 16:48, 16:48] = 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    blocks = ["layers.2.blocks.1", "layers.3.blocks.0"]
    defn = get_definition("official")
    losses = []
    for _ in range(12):
        corr = defn.correlations(model, x, y, blocks, ["c", "s"], keep_graph=True)
        loss = sum(defn.external_loss(corr.external[(b, s)], masks) for b in blocks for s in ("c", "s"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_block_selection_and_groups():
    blocks = ["layers.0.blocks.0", "layers.1.blocks.0", "layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    assert select_blocks(blocks, ["-1", "layers.0.blocks.0"]) == ["layers.3.blocks.0", "layers.0.blocks.0"]
    assert select_blocks(blocks, None) == blocks
    with pytest.raises(MambaBenchError, match="unknown block"):
        select_blocks(blocks, ["layers.9.blocks.0"])
    deep = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    assert repair_blocks(get_definition("seed"), blocks, None) == (deep, deep)
    assert repair_blocks(get_definition("official"), blocks, None) == (["layers.0.blocks.0"], ["layers.3.blocks.0"])
    assert repair_blocks(get_definition("official"), blocks, ["-1"]) == (["layers.3.blocks.0"], ["layers.3.blocks.0"])
    groups = difficult_split(np.array([0.9, 0.1, 0.5, 0.95, 0.2]), 0.4)
    assert list(groups) == ["simple", "difficult", "simple", "simple", "difficult"]
    with pytest.raises(MambaBenchError, match="no selective-scan"):
        mender.mamba_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), "swin-t")
    with pytest.raises(MambaBenchError, match="unknown state"):
        mender.check_states(["z"])


@pytest.fixture(scope="module")
def nano_weights(tmp_path_factory):
    """A digits-shaped vmamba-nano checkpoint (random weights: these tests check the mechanics)."""
    from mamba_bench.models.weights import save_checkpoint

    torch.manual_seed(3)
    model = VMamba(VMambaConfig((1, 1, 2, 1), 32, 1, 1.0), num_classes=10)
    path = tmp_path_factory.mktemp("w") / "nano.safetensors"
    save_checkpoint(model, path, {"mamba_bench_model": "vmamba-nano", "num_classes": "10"})
    return str(path)


def test_explain_cli_writes_scores_and_flip_views(cli, tmp_path, nano_weights):
    out = tmp_path / "ex"
    r = cli("explain", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits", "--limit", "24",
            "--corruption", "invert", "--severity", "3", "--out", str(out), "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores.state) == {"x", "c", "s", "y"} and set(scores.group) == {"simple", "difficult", "all"}
    assert scores.block.nunique() == 5 and len(scores) == 5 * 4 * 3
    # the official definition by default: ECS = perturbation ratio × IoU (digit strokes are the masks);
    # ICS ≈ channels / channels some sample of the class uses, ≥ 1
    assert scores.iou.between(0, 1).all() and (scores.perturbation > 0).all()
    np.testing.assert_allclose(scores.ecs, scores.perturbation * scores.iou, rtol=1e-9)
    assert (scores.ics.dropna() > 0.99).all() and scores.ics.notna().any()
    assert (scores[scores.group == "simple"].n_samples == 12).all()
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 24 and (samples.group == "difficult").sum() == 12
    # the 12 difficult images are those with the lowest true-class probability
    assert samples[samples.group == "difficult"].p_true.max() <= samples[samples.group == "simple"].p_true.min()
    flips = pd.read_parquet(out / "flips.parquet")
    assert (flips.pred != flips.label).all() and (flips.clean_pred == flips.label).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["masks"] == "digit strokes" and (out / "scores.png").stat().st_size > 10_000
    assert manifest["config"]["definition"] == manifest["definition"]["name"] == "official"
    assert ("flips.png" in manifest["plots"]) == (len(flips) > 0)
    # the report shows the scores table and the plots
    rep = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Mender scores per block and state" in md and "| layers.3.blocks.0 | s |" in md
    assert "(plots/ex-scores.png)" in md and f"flipped right → wrong: `{len(flips)}`" in md
    assert "Mender definition: `official`" in md
    # the same command again is a no-op that prints the same scores (here as JSON; --batch-size is
    # an execution knob, not part of the run); other options are refused, never overwritten
    again = cli("explain", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits", "--limit", "24",
                "--corruption", "invert", "--severity", "3", "--out", str(out), "--workers", "0", "--device", "cpu",
                "--batch-size", "5", "--format", "json")
    assert again.returncode == 0, again.stderr
    assert pd.DataFrame(json.loads(again.stdout)).ecs.tolist() == pytest.approx(scores.ecs.tolist(), nan_ok=True)
    other = cli("explain", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits",
                "--out", str(out), "--device", "cpu")
    assert other.returncode == 2 and "other options" in other.stderr and "Traceback" not in other.stderr


def test_out_directory_rules(tmp_path):
    """Another run's files are never overwritten; an interrupted explain (its own files only) is redone."""
    from mamba_bench.analysis.explain import finished_run
    from mamba_bench.errors import RunDirError

    out = tmp_path / "o"
    assert finished_run(out, "explain", {"a": 1}) is None
    out.mkdir()
    (out / "scores.png").write_bytes(b"x")
    (out / ".scores.parquet.tmp12").write_bytes(b"x")
    (out / "manifest.json").write_text(json.dumps({"command": "explain", "result_config": {"a": 1}}))
    assert finished_run(out, "explain", {"a": 1}) is None  # no marker yet: interrupted, redone
    with pytest.raises(RunDirError, match="holds a explain run"):
        finished_run(out, "explain --repair", {"a": 1})  # a repair never overwrites an explain run
    (out / "scores.parquet").write_bytes(b"x")
    assert finished_run(out, "explain", {"a": 1})["command"] == "explain"
    with pytest.raises(RunDirError, match="other options"):
        finished_run(out, "explain", {"a": 2})
    (out / "scores.parquet").unlink()
    (out / "metrics.parquet").write_bytes(b"x")
    with pytest.raises(RunDirError, match="metrics.parquet"):
        finished_run(out, "explain", {"a": 1})


def test_explain_refuses_models_without_ssm_states(cli, tmp_path):
    r = cli("explain", "--model", "swin-nano", "--data", "digits", "--out", str(tmp_path / "x"), "--device", "cpu")
    assert r.returncode == 2 and "no selective-scan" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_explain_masks_directory(cli, tmp_path):
    """Masks from a directory: a missing one is a clear error; present ones feed the IoU."""
    from PIL import Image

    from mamba_bench.models.weights import save_checkpoint

    torch.manual_seed(4)
    nano_weights = str(save_checkpoint(VMamba(VMambaConfig((1, 1, 2, 1), 32, 1, 1.0), num_classes=2),
                                       tmp_path / "two.safetensors", {"num_classes": "2"}))

    data = tmp_path / "val"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for k in range(2):
            img = np.zeros((80, 80, 3), np.uint8)
            img[20:60, 20:60] = 200
            Image.fromarray(img).save(data / cls / f"{k}.png")
    masks = tmp_path / "masks"
    (masks / "a").mkdir(parents=True)
    m = np.zeros((80, 80), np.uint8)
    m[20:60, 20:60] = 255
    Image.fromarray(m).save(masks / "a" / "0.png")
    args = ["explain", "--model", "vmamba-nano", "--weights", nano_weights, "--data", str(data), "--masks",
            str(masks), "--device", "cpu", "--workers", "0", "--definition", "seed"]
    r = cli(*args, "--out", str(tmp_path / "o1"))
    assert r.returncode == 2 and "no mask for image a/1.png" in r.stderr
    bad = cli(*args, "--out", str(tmp_path / "o0"), "--corruption", "invert,fliplr")
    assert bad.returncode == 2 and "one corruption name" in bad.stderr
    for name in ("a/1.png", "b/0.png", "b/1.png"):
        (masks / name).parent.mkdir(exist_ok=True)
        Image.fromarray(m).save(masks / name)
    r = cli(*args, "--out", str(tmp_path / "o2"))
    assert r.returncode == 0, r.stderr
    samples = pd.read_parquet(tmp_path / "o2" / "samples.parquet")
    assert list(samples.image_id) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    scores = pd.read_parquet(tmp_path / "o2" / "scores.parquet")
    assert scores.iou.between(0, 1).all() and scores.ecs.between(0, 1).all()  # the seed's r/(1+r) × IoU
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["config"]["definition"] == manifest["definition"]["name"] == "seed"
    bad = cli(*args[:-1], "paper", "--out", str(tmp_path / "o3"))
    assert bad.returncode == 2 and "unknown --definition 'paper'" in bad.stderr


def test_repair_cli_runs_every_arm_and_measures_them(cli, tmp_path, nano_weights):
    out = tmp_path / "rep"
    r = cli("explain", "--repair", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits",
            "--per-class", "3", "--repair-steps", "3", "--repair-batch", "8", "--corruptions", "invert,fliplr",
            "--out", str(out), "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    table = pd.read_parquet(out / "repair.parquet")
    assert list(table.arm) == ["base", "ce", "ext", "int", "all"]
    assert table.clean_top1.between(0, 100).all() and table.corrupted_top1.between(0, 100).all()
    assert table.clean_change.iloc[0] == 0
    hist = pd.read_parquet(out / "history.parquet")
    assert (hist[hist.arm == "ce"][["ext", "int"]] == 0).all().all()
    assert (hist[hist.arm == "all"].ext > 0).all() and (hist[hist.arm == "all"]["int"] > 0).all()
    assert (out / "repaired-all.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    official = get_definition("official")
    assert manifest["config"]["definition"] == manifest["definition"]["name"] == "official"
    assert (manifest["config"]["lambda_ext"], manifest["config"]["lambda_int"]) == (official.lambda_ext,
                                                                                    official.lambda_int)
    # the official fixed blocks: block 1 (here 0: one block) of the first stage and of the last stage
    assert manifest["external_blocks"] == ["layers.0.blocks.0"] and manifest["internal_blocks"] == ["layers.3.blocks.0"]
    rep = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Accuracy before and after the repair" in md and "| all |" in md and "Mender definition: `official`" in md
    # the seed's reading by name: its losses, weights and blocks
    out = tmp_path / "rep-seed"
    r = cli("explain", "--repair", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits",
            "--per-class", "1", "--repair-steps", "1", "--repair-batch", "4", "--corruptions", "invert", "--arms",
            "int", "--definition", "seed", "--out", str(out), "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    deep = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    assert manifest["config"]["definition"] == "seed" and manifest["internal_blocks"] == deep
    assert (manifest["config"]["lambda_ext"], manifest["config"]["lambda_int"]) == (1.0, 1.0)
    assert 0 < pd.read_parquet(out / "history.parquet")["int"].iloc[0] <= 1  # the seed's loss is a share
    bad = cli("explain", "--repair", "--model", "vmamba-nano", "--weights", nano_weights, "--data", "digits",
              "--arms", "both", "--out", str(tmp_path / "r2"), "--device", "cpu")
    assert bad.returncode == 2 and "unknown --arms" in bad.stderr


def test_mask_of_an_image_with_dots_in_its_name(tmp_path):
    """img.2.jpg's mask is img.2.png, never img.png (another image's)."""
    from PIL import Image

    from mamba_bench.analysis.explain import foreground_masks, load_images

    data, masks = tmp_path / "val", tmp_path / "masks"
    for d in (data / "a", data / "b", masks / "a"):
        d.mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(data / "a" / "img.2.jpg")
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(data / "b" / "x.png")
    half = np.zeros((40, 40), np.uint8)
    half[:, :20] = 255
    Image.fromarray(half).save(masks / "a" / "img.2.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(masks / "a" / "img.png")  # the decoy
    (masks / "b").mkdir()
    Image.fromarray(half).save(masks / "b" / "x.png")
    ds = open_dataset_for(str(data))
    images, ids, _ = load_images(ds, 0)
    m = foreground_masks(ds, images, ids, str(masks))
    assert ids[0] == "a/img.2.jpg" and 0.4 < m[0].mean() < 0.6  # the half mask, not the full decoy


def open_dataset_for(path: str):
    from mamba_bench.data import open_dataset

    return open_dataset(path, image_size=32)

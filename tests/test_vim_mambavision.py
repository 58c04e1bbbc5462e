"""Vim and MambaVision: official key lists, strict release-format loading, config diagnosis, backends,
internals, timm interop, and predict/corrupt/explain end to end on the nano variants."""

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamba_bench.errors import CheckpointError
from mamba_bench.models import create_model, get_spec, save_checkpoint
from mamba_bench.models.internals import capture_internals, ssm_blocks

DATA = Path(__file__).parent / "data"
OFFICIAL = {**json.loads((DATA / "vim_keys.json").read_text()),
            **json.loads((DATA / "mambavision_keys.json").read_text())}


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_spec(name).build()


@pytest.fixture(scope="module")
def nanos():
    torch.manual_seed(0)
    return {n: create_model(n) for n in ("vim-nano", "mambavision-nano")}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_equals_the_official_key_list(name):
    """tests/data/*_keys.json were written from the official modules (scripts/make_official_key_lists.py)."""
    ours = [[k, list(v.shape)] for k, v in _meta(name).state_dict().items()]
    assert ours == OFFICIAL[name]["keys"]


def test_parameter_counts_are_the_releases():
    # Vim README: 7M / 26M / 98M; MambaVision README (M): 31.8, 35.1, 50.1, 97.7, 227.9, 241.5
    want = {"vim-t": 7.15, "vim-s": 25.8, "vim-b": 97.6, "mambavision-t": 31.8, "mambavision-t2": 35.1,
            "mambavision-s": 50.1, "mambavision-b": 97.7, "mambavision-l": 227.9, "mambavision-l2": 241.5}
    for name, m in want.items():
        assert sum(p.numel() for p in _meta(name).parameters()) / 1e6 == pytest.approx(m, rel=0.005), name


def test_registry_entries_carry_release_and_preprocessing():
    t = get_spec("vim-t")
    assert (t.hf_hub_id, t.hf_hub_filename) == ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth")
    assert (t.input_size, t.crop_pct, t.interpolation, t.family) == (224, 0.875, "bicubic", "vim")
    assert get_spec("vim-t-plus").weights_file == "vim_t_midclstok_ft_78p3acc.pth"
    assert get_spec("vim-b").weights_file == "vim_b_midclstok_81p9acc.pth"
    # MambaVision's own default_cfgs: crop 1.0 (T, B, L, L2), 0.98 (T2), 0.93 (S)
    assert [get_spec(f"mambavision-{s}").crop_pct for s in ("t", "t2", "s", "b", "l", "l2")] == [
        1.0, 0.98, 0.93, 1.0, 1.0, 1.0]
    l2 = get_spec("mambavision-l2")
    assert (l2.hf_hub_id, l2.hf_hub_filename) == ("nvidia/MambaVision-L2-1K", "mambavision_large2_1k.pth.tar")
    assert get_spec("vim-s").timm_name == "vim_small_patch16_224"
    assert get_spec("mambavision-nano").build().pretrained_cfg["first_conv"] == "patch_embed.conv_down.0"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name,container", [("vim-nano", "model"), ("mambavision-nano", "state_dict")])
def test_release_format_checkpoint_loads_strictly_and_runs_no_code(tmp_path, nanos, name, container):
    """Vim's files: {'model', 'optimizer', 'epoch', 'args' (argparse.Namespace), ...}; MambaVision's (timm
    training checkpoints): {'state_dict', 'arch', 'args', ...}. The pickled objects stay inert."""
    marker = tmp_path / "pwned"
    model = nanos[name]
    torch.save({container: model.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=1e-3),
                "hook": _Evil(marker)}, tmp_path / "release.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "release.pth", weights_only=True)
    again = create_model(name, weights=str(tmp_path / "release.pth"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert not marker.exists()


def _vim_signature_state(dim: int, tokens: int, depth: int = 24, patch: int = 16) -> dict:
    """The tensors diagnosis reads from a Vim state_dict (a real one of vim-s is 100 MB)."""
    state = {"patch_embed.proj.weight": torch.zeros(dim, 3, patch, patch), "pos_embed": torch.zeros(1, tokens, dim),
             "layers.0.mixer.conv1d_b.weight": torch.zeros(2 * dim, 1, 4)}
    state.update({f"layers.{i}.mixer.A_log": torch.zeros(2 * dim, 16) for i in range(depth)})
    return state


def _mambavision_signature_state(depths, dim, in_dim) -> dict:
    state = {"patch_embed.conv_down.0.weight": torch.zeros(in_dim, 3, 3, 3),
             "patch_embed.conv_down.3.weight": torch.zeros(dim, in_dim, 3, 3)}
    state.update({f"levels.{i}.blocks.{j}.norm1.weight": torch.zeros(1)
                  for i, d in enumerate(depths) for j in range(d)})
    return state


@pytest.mark.parametrize("state,model,named", [
    (lambda: _vim_signature_state(384, 197), "vim-t", "vim-s"),
    (lambda: _vim_signature_state(192, 730), "vim-t", "vim-t-plus"),  # stride 8: 27² patches + the class token
    (lambda: _mambavision_signature_state((3, 3, 7, 5), 96, 64), "mambavision-t", "mambavision-s"),
    (lambda: create_model("vim-nano").state_dict(), "vmamba-nano", "vim-nano"),  # across families
    (lambda: create_model("mambavision-nano").state_dict(), "vim-nano", "mambavision-nano"),
    (lambda: create_model("vmamba-nano").state_dict(), "mambavision-nano", "vmamba-nano"),
])
def test_checkpoint_of_another_config_is_named(tmp_path, state, model, named):
    torch.save({"model": state()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=f"looks like a {named} checkpoint .*--model {named}$"):
        create_model(model, weights=str(tmp_path / "other.pth"))


@pytest.mark.parametrize("name,head", [("vim-nano", "head.weight"), ("mambavision-nano", "head.weight")])
def test_checkpoint_of_the_right_config_names_its_mis_shaped_keys(tmp_path, name, head):
    torch.save({"model": create_model(name).state_dict()}, tmp_path / "ten.pth")
    with pytest.raises(CheckpointError, match=rf"2 wrong shape: {head} \(10, \d+\) vs model \(2, "):
        create_model(name, weights=str(tmp_path / "ten.pth"), num_classes=2)


@pytest.mark.parametrize("name,size", [("vim-nano", 64), ("mambavision-nano", 64), ("mambavision-nano", 80)])
def test_scan_backends_and_autograd_path_agree(nanos, name, size):
    model = nanos[name]
    x = torch.randn(2, 3, size, size)
    outs = {}
    with torch.no_grad():
        for backend in ("cpu", "torch", "ref"):
            model.set_scan_backend(backend)
            outs[backend] = model(x)
    model.set_scan_backend("auto")
    graph = model(x).detach()  # the differentiable numba scan
    for other in ("torch", "ref"):
        torch.testing.assert_close(outs["cpu"], outs[other], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["cpu"], graph, rtol=1e-5, atol=1e-5)


def test_vim_other_input_sizes_resample_the_patch_position_embeddings(nanos):
    model = nanos["vim-nano"]
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 48, 56))
        pe = model._position_embedding(8, 8)
    assert tokens.shape == (2, 6 * 7 + 1, 32)
    assert pe is model.pos_embed  # the training grid: the parameter itself


def test_capture_internals_vim(nanos):
    model = nanos["vim-nano"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
    with capture_internals(model, detach=False) as rec:
        captured = model(x)
    torch.testing.assert_close(plain, captured, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in ssm_blocks(model)] == rec.blocks() == ["layers.0", "layers.1", "layers.2", "layers.3"]
    r = rec["layers.1"]
    assert set(r) == {"in", "z", "conv", "x", "delta", "B", "C", "scan", "ssm", "out"}
    di, n, length = 64, 8, 65  # d_inner, d_state, 8×8 patches + the class token
    assert r["in"].shape == r["z"].shape == r["ssm"].shape == (2, di, 8, 8)
    assert r["conv"].shape == r["x"].shape == (2, 2 * di, 8, 8)
    assert r["delta"].shape == r["scan"].shape == (2, 2, di, length) and r["B"].shape == (2, 2, n, length)
    assert r["out"].shape == (2, 32, 8, 8) and (r["delta"] > 0).all()
    torch.testing.assert_close(r["x"], F.silu(r["conv"]))
    # ssm: forward scan + the backward one flipped back into token order, on the map without the class token
    merged = r["scan"][:, 0] + r["scan"][:, 1].flip(-1)
    patches = torch.cat([merged[..., :32], merged[..., 33:]], -1).reshape(2, di, 8, 8)
    torch.testing.assert_close(r["ssm"], patches)
    # every recorded map is upstream of the logits: gradients reach each of them
    names = ["in", "z", "conv", "x", "ssm", "out", "delta"]
    grads = torch.autograd.grad(captured.sum(), [r[k] for k in names])
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        model(x)
    assert all(m._recorder is None for m in model.modules() if hasattr(m, "_recorder"))


def test_capture_internals_mambavision_with_window_padding(nanos):
    """80 px: level 2's map is 5×5 in 4×4 windows (padded to 8×8, 4 windows), level 3's 3×3 in 2×2 ones."""
    model = nanos["mambavision-nano"]
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        plain = model(x)
    with capture_internals(model, detach=False) as rec:
        captured = model(x)
    torch.testing.assert_close(plain, captured, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in ssm_blocks(model)] == rec.blocks() == ["levels.2.blocks.0", "levels.3.blocks.0"]
    r = rec["levels.2.blocks.0"]
    assert set(r) == {"in", "conv", "x", "delta", "B", "C", "scan", "ssm", "out"}
    assert r["in"].shape == r["x"].shape == r["ssm"].shape == (2, 32, 5, 5) and r["out"].shape == (2, 64, 5, 5)
    assert r["delta"].shape == r["scan"].shape == (2, 4, 32, 16) and r["B"].shape == (2, 4, 8, 16)
    assert rec["levels.3.blocks.0"]["x"].shape == (2, 64, 3, 3)
    torch.testing.assert_close(r["x"], F.silu(r["conv"]))
    grads = torch.autograd.grad(captured.sum(), [r[k] for k in ("in", "conv", "x", "ssm", "out")])
    assert all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="unknown internals"):  # no gate in MambaVision's mixer
        with capture_internals(model, names={"z"}):
            pass


@pytest.mark.parametrize("name", ["vim-nano", "mambavision-nano"])
def test_mender_state_correlations_run_on_the_new_families(nanos, name):
    from mamba_bench.analysis.definitions import get_definition

    model = nanos[name]
    blocks = [n for n, _ in ssm_blocks(model)]
    x, target = torch.randn(3, 3, 64, 64), torch.tensor([0, 4, 7])
    for definition in ("official", "seed"):
        corr = get_definition(definition).correlations(model, x, target, blocks, ["x", "c", "s", "y"])
        e = corr.external[(blocks[0], "s")]
        assert e.shape == ((3, 8, 8) if name == "vim-nano" else (3, 4, 4)) and torch.isfinite(e).all()
        assert corr.internal[(blocks[-1], "c")].abs().sum() > 0


# -- timm interop (what timm's own model tests check) --------------------------------------------
@pytest.fixture(scope="module")
def timm_registered():
    import timm

    import mamba_bench.models.timm_interop  # noqa: F401  (registers the entry points)

    return timm


@pytest.mark.parametrize("timm_name,features", [("vmamba_nano", (256, 2, 2)), ("vanilla_vmamba_nano", (256, 2, 2)),
                                                ("vim_nano_patch8_64", (65, 32)), ("mambavision_nano", (128, 2, 2))])
def test_timm_model_api(timm_registered, timm_name, features):
    timm = timm_registered
    model = timm.create_model(timm_name, pretrained=False, num_classes=7)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == timm_name
    assert cfg["input_size"] == (3, 64, 64) and cfg["crop_pct"] == 1.0 and len(cfg["mean"]) == len(cfg["std"]) == 3
    first, head = model.get_submodule(cfg["first_conv"]), model.get_submodule(cfg["classifier"])
    assert first.in_channels == 3 and head is model.get_classifier() and head.out_features == 7
    x = torch.randn(2, 3, 64, 64)
    out = model(x)  # forward and backward: every parameter gets a gradient
    assert out.shape == (2, 7)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert tuple(feats.shape[1:]) == features
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features) and model.num_classes == 0
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)


def test_timm_names_of_the_released_configs(timm_registered):
    timm = timm_registered
    assert {"vmamba_tiny_s1l8", "vanilla_vmamba_tiny",
            "vim_tiny_patch16_224", "vim_small_patch16_stride8_224", "mambavision_large2"} <= set(
        timm.list_models(pretrained=True))
    cfg = timm.models.get_pretrained_cfg("mambavision_small")
    assert (cfg.crop_pct, cfg.interpolation, cfg.hf_hub_id) == (0.93, "bicubic", get_spec("mambavision-s").hf_hub_id)
    model = timm.create_model("vmamba_tiny_s1l8", pretrained=False)
    assert type(model).__name__ == "VMamba" and model.num_features == 768 and model.num_classes == 1000
    with pytest.raises(RuntimeError, match="no released weights"):
        timm.create_model("vim_nano_patch8_64", pretrained=True)
    with pytest.raises(TypeError, match="takes num_classes"):
        timm.create_model("vim_nano_patch8_64", img_size=96)


# -- end to end: predict, corrupt, explain ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["vim-nano", "mambavision-nano"])
def test_predict_end_to_end(cli, tmp_path, nanos, name):
    from PIL import Image

    path = save_checkpoint(nanos[name], tmp_path / "w.safetensors", {})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    res = cli("predict", "--model", name, "--weights", str(path), str(tmp_path / "x.png"), "--format", "json",
              "--device", "cpu")
    assert res.returncode == 0, res.stderr
    top = json.loads(res.stdout)[0]["topk"]
    assert len(top) == 5 and top[0]["probability"] >= top[-1]["probability"]


@pytest.mark.slow
def test_corrupt_end_to_end(cli, tmp_path):
    import pandas as pd

    res = cli("corrupt", "--data", "digits", "--per-class", "1", "--model", "vim-nano", "--model", "mambavision-nano",
              "--random-init", "--corruptions", "gaussian_blur", "--severities", "1", "--workers", "0",
              "--no-progress", "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert set(m.model) == {"vim-nano", "mambavision-nano"} and (m.n == 10).all()
    assert set(zip(m.corruption, m.severity, strict=True)) == {("clean", 0), ("gaussian_blur", 1)}


def test_explain_end_to_end_on_vim(tmp_path, nanos):
    import pandas as pd

    from mamba_bench.analysis.explain import ExplainConfig, run_explain

    path = save_checkpoint(nanos["vim-nano"], tmp_path / "w.safetensors", {})
    run_explain(ExplainConfig(model="vim-nano", data="digits", out=str(tmp_path / "e"), weights=str(path), limit=10,
                              device="cpu", workers=0, batch_size=10))
    scores = pd.read_parquet(tmp_path / "e" / "scores.parquet")
    assert set(scores.block) == {"layers.0", "layers.1", "layers.2", "layers.3"}
    assert set(scores.state) == {"x", "c", "s", "y"} and scores.ecs.notna().any()

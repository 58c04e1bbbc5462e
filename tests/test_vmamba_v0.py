"""Vanilla-VMamba (v0): the official layout, the release files' legacy key names, the gate, the merge order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mamba_bench.errors import CheckpointError
from mamba_bench.models import create_model, get_spec
from mamba_bench.models.internals import capture_internals, ssm_blocks
from mamba_bench.models.vmamba_v0 import PatchMerging2D, VMambaV0, checkpoint_filter_fn

OFFICIAL = json.loads((Path(__file__).parent / "data" / "vmamba_v0_keys.json").read_text())


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_spec(name).build()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_state_dict_equals_the_official_key_list(name):
    """tests/data/vmamba_v0_keys.json: written from the official vanilla_vmamba_* (make_official_key_lists.py)."""
    ours = {k: list(v.shape) for k, v in _meta(name).state_dict().items()}
    assert ours == dict(OFFICIAL[name]["keys"])


def test_parameter_counts_and_releases():
    # VMamba's assets/performance.md: Vanilla-VMamba-T/S/B 23M / 44M / 76M, 82.2 / 83.5 / 83.7 top-1
    for name, want in {"vmamba-t-v0": 22.89, "vmamba-s-v0": 44.42, "vmamba-b-v0": 76.25}.items():
        assert sum(p.numel() for p in _meta(name).parameters()) / 1e6 == pytest.approx(want, abs=0.01), name
    t = get_spec("vmamba-t-v0")
    assert t.weights_file == "vssmtiny_dp01_ckpt_epoch_292.pth" and "%23v0cls/" in t.weights_url
    assert (t.input_size, t.crop_pct, t.interpolation, t.family) == (224, 0.875, "bicubic", "vmamba")
    assert "82.2" in t.description
    assert get_spec("vmamba-b-v0").weights_file == "vssmbase_dp06_ckpt_epoch_241.pth"


def _legacy(state: dict) -> dict:
    """The names VMamba's first code base wrote (the v0 release files)."""
    out = {}
    for k, v in state.items():
        k = (k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
             .replace("classifier.norm.", "norm.").replace("classifier.head.", "head."))
        if ".blocks." in k:
            k = k.replace(".op.", ".self_attention.").replace(".norm.", ".ln_1.")
        out[k] = v
    return out


def test_release_key_names_load(tmp_path):
    torch.manual_seed(0)
    src = create_model("vmamba-nano-v0").eval()
    legacy = _legacy(src.state_dict())
    assert {"patch_embed.proj.weight", "layers.0.blocks.0.ln_1.weight", "norm.weight", "head.bias",
            "layers.2.blocks.1.self_attention.in_proj.weight", "layers.0.downsample.reduction.weight"} <= set(legacy)
    assert checkpoint_filter_fn(legacy).keys() == src.state_dict().keys()
    torch.save({"model": legacy}, tmp_path / "v0.pth")
    torch.manual_seed(1)
    loaded = create_model("vmamba-nano-v0", weights=str(tmp_path / "v0.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)


def test_a_v0_file_for_a_v2_model_names_its_entry(tmp_path):
    torch.save({"model": _legacy(create_model("vmamba-nano-v0").state_dict())}, tmp_path / "v0.pth")
    with pytest.raises(CheckpointError, match="looks like a vmamba-nano-v0 checkpoint .*--model vmamba-nano-v0"):
        create_model("vmamba-nano", weights=str(tmp_path / "v0.pth"))
    torch.save({"model": create_model("vmamba-nano").state_dict()}, tmp_path / "v2.pth")
    with pytest.raises(CheckpointError, match="looks like a vmamba-nano checkpoint"):
        create_model("vmamba-nano-v0", weights=str(tmp_path / "v2.pth"))


def test_the_gate_multiplies_the_normed_scan_output():
    """in_proj's second half is the gate z: with it zero, SiLU(z) = 0 and every block passes its input on."""
    torch.manual_seed(0)
    m = create_model("vmamba-nano-v0").eval()
    blk = m.layers[0].blocks[0]
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        assert (blk(x) - x).abs().max() > 1e-3
        blk.op.in_proj.weight[blk.op.d_inner:] = 0
        torch.testing.assert_close(blk(x), x, rtol=0, atol=0)


def test_internals_include_the_gate():
    torch.manual_seed(0)
    m = create_model("vmamba-nano-v0").eval()
    x = torch.randn(1, 3, 64, 64)
    with capture_internals(m, names={"in", "z", "delta", "ssm_norm", "out"}) as rec:
        m(x)
    first = ssm_blocks(m)[0][0]
    got = rec[first]
    d = m.layers[0].blocks[0].op.d_inner
    assert got["in"].shape == got["z"].shape == (1, d, 16, 16)
    assert got["delta"].shape == (1, 4, d, 256) and (got["delta"] > 0).all()


def test_patch_merging_concatenates_in_the_official_order():
    """x0 = (0::2, 0::2), x1 = (1::2, 0::2), x2 = (0::2, 1::2), x3 = (1::2, 1::2) along the channels."""
    pm = PatchMerging2D(1, 2)
    seen = {}
    pm.norm.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.arange(16.0).view(1, 1, 4, 4)  # value = 4·row + col
    pm(x)
    assert seen["x"][0, :, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    seen.clear()
    pm(torch.arange(15.0).view(1, 1, 3, 5))  # odd sides: zero-padded at their end
    assert seen["x"].shape == (1, 4, 2, 3) and seen["x"][0, :, 1, 2].tolist() == [14.0, 0.0, 0.0, 0.0]


def test_any_input_size_and_a_v0_model_is_a_vmamba():
    m = create_model("vmamba-nano-v0").eval()
    assert isinstance(m, VMambaV0)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 61, 47)).shape == (1, 10)
    m.reset_classifier(3)
    assert m.get_classifier().out_features == 3

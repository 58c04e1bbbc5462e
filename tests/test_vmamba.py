"""VMamba: official key layout, strict loading, config diagnosis, internals capture, backends."""

import pytest
import torch

from mamba_bench.errors import CheckpointError
from mamba_bench.models import create_model, get_spec, save_checkpoint
from mamba_bench.models.vmamba import VMamba, VMambaConfig, capture_internals, infer_config


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return create_model("vmamba-nano")


def test_official_tiny_layout_keys_and_shapes():
    sd = VMamba(VMambaConfig()).state_dict()  # vssm1_tiny_0230s: dim 96, d_inner 96, dt_rank 6, d_state 1
    want = {
        "patch_embed.0.weight": (48, 3, 3, 3), "patch_embed.2.weight": (48,), "patch_embed.5.weight": (96, 48, 3, 3),
        "patch_embed.7.bias": (96,),
        "layers.0.blocks.0.op.in_proj.weight": (96, 96), "layers.0.blocks.0.op.conv2d.weight": (96, 1, 3, 3),
        "layers.0.blocks.0.op.x_proj_weight": (4, 8, 96), "layers.0.blocks.0.op.dt_projs_weight": (4, 96, 6),
        "layers.0.blocks.0.op.dt_projs_bias": (4, 96), "layers.0.blocks.0.op.A_logs": (384, 1),
        "layers.0.blocks.0.op.Ds": (384,), "layers.0.blocks.0.op.out_norm.weight": (96,),
        "layers.0.blocks.0.op.out_proj.weight": (96, 96), "layers.0.blocks.0.mlp.fc1.weight": (384, 96),
        "layers.0.downsample.1.weight": (192, 96, 3, 3), "layers.0.downsample.3.weight": (192,),
        "layers.2.blocks.7.norm2.weight": (384,), "classifier.norm.weight": (768,),
        "classifier.head.weight": (1000, 768),
    }
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.0.blocks.0.op.conv2d.bias" not in sd and "layers.0.blocks.0.op.in_proj.bias" not in sd
    assert not any(k.startswith("layers.3.downsample") for k in sd)
    assert "layers.2.blocks.8.norm.weight" not in sd
    assert sum(v.numel() for k, v in sd.items()) == pytest.approx(30.2e6, rel=0.01)  # README: 30M


def test_registry_entries_carry_release_and_preprocessing():
    t = get_spec("vmamba-t")
    assert t.weights_url.endswith("vssm1_tiny_0230s_ckpt_epoch_264.pth")
    assert (t.input_size, t.crop_pct, t.interpolation) == (224, 0.875, "bicubic")
    assert get_spec("vmamba-b").weights_file == "vssm_base_0229_ckpt_epoch_237.pth"
    b = get_spec("vmamba-b").build()
    assert sum(p.numel() for p in b.parameters()) == pytest.approx(88.6e6, rel=0.01)  # README: 89M
    assert infer_config(b.state_dict()) == VMambaConfig((2, 2, 15, 2), 128, 1, 2.0)


def test_official_format_checkpoint_loads_strictly(tmp_path, nano):
    sd = nano.state_dict()
    # the official files may store point-wise linears as 1x1 convs: the one layout change accepted
    official = {k: (v[:, :, None, None] if k.endswith(("in_proj.weight", "out_proj.weight")) else v)
                for k, v in sd.items()}
    torch.save({"model": official, "optimizer": {}, "epoch": 3}, tmp_path / "ckpt.pth")
    again = create_model("vmamba-nano", weights=str(tmp_path / "ckpt.pth"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), nano(x), rtol=0, atol=0)


def test_checkpoint_of_another_config_is_named(tmp_path):
    other = VMamba(VMambaConfig((2, 2, 5, 2), 96, 1, 2.0))  # vssm_tiny_0230 layout
    torch.save({"model": other.state_dict()}, tmp_path / "s2l5.pth")
    with pytest.raises(CheckpointError, match="looks like a vmamba-t-s2l5 checkpoint .*--model vmamba-t-s2l5"):
        create_model("vmamba-t", weights=str(tmp_path / "s2l5.pth"))


def test_checkpoint_of_the_right_config_names_its_mis_shaped_keys(tmp_path):
    """A vmamba-nano checkpoint with a 10-class head, loaded for 2 classes: the head is what differs."""
    torch.save({"model": create_model("vmamba-nano", num_classes=10).state_dict()}, tmp_path / "ten.pth")
    with pytest.raises(CheckpointError, match=r"2 wrong shape: classifier.head.weight \(10, \d+\) vs model \(2, "):
        create_model("vmamba-nano", weights=str(tmp_path / "ten.pth"), num_classes=2)


def test_v0_checkpoint_gets_a_clear_message(tmp_path):
    """A legacy-named v0 file that matches no entry: named as a v0 checkpoint (v0 entries: test_vmamba_v0.py)."""
    v0 = {"patch_embed.proj.weight": torch.zeros(48, 3, 4, 4),
          "layers.0.blocks.0.self_attention.in_proj.weight": torch.zeros(192, 48),
          "layers.0.blocks.0.self_attention.A_logs": torch.zeros(384, 16)}
    torch.save({"model": v0}, tmp_path / "v0.pth")
    with pytest.raises(CheckpointError, match=r"VMamba v0 \('vanilla'\) checkpoint of depths \[1\], dim 48"):
        create_model("vmamba-nano", weights=str(tmp_path / "v0.pth"))


def test_any_input_size_works(nano):
    with torch.no_grad():
        assert nano(torch.randn(1, 3, 61, 47)).shape == (1, 10)


def test_backends_agree_at_model_level(nano):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nano.set_scan_backend("cpu")
        a = nano(x)
        nano.set_scan_backend("torch")
        b = nano(x)
        nano.set_scan_backend("auto")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_inference_path_equals_the_general_path(monkeypatch):
    """The channels-last CPU block (fused SS2D kernel, tiled LayerNorm/linear/MLP, in-place residuals)
    and stem compute the general path's function: odd map sizes, channel counts that are not a
    multiple of 8, several row tiles, non-trivial norms and biases."""
    import mamba_bench.models.vmamba as vm

    torch.manual_seed(1)
    model = VMamba(VMambaConfig((1, 2), 40, 1, 1.5), num_classes=7).eval()  # d_inner 60 and 120
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.3)
    calls = []
    real = vm.VSSBlock._forward_cpu_inference
    monkeypatch.setattr(vm.VSSBlock, "_forward_cpu_inference", lambda self, *a: calls.append(a[1]) or real(self, *a))
    monkeypatch.setattr(vm, "MLP_TILE_FLOATS", 4096)  # 25-27 rows of 160 hidden: several tiles per block
    monkeypatch.setattr(vm, "MLP_TILE_MIN_ROWS", 1)
    x = torch.randn(3, 3, 61, 47)
    with torch.no_grad():
        fast = model(x)
    assert calls == [True] * 3  # every block took the CPU inference path, updating the residual stream in place
    with torch.no_grad():
        model.set_scan_backend("torch")
        general = model(x)
        model.set_scan_backend("auto")
    reference = model(x)  # autograd on: the general path with the differentiable numba scan
    assert len(calls) == 3
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-5, atol=1e-5)
    x_before = x.clone()
    with torch.no_grad():
        model(x)
    assert torch.equal(x, x_before)  # the in-place residuals never touch the caller's tensor


def test_cpu_inference_residual_in_place_only_when_no_hook_can_see_it():
    """The blocks overwrite the residual stream only inside VMamba.forward and without hooks: a hook
    that keeps block outputs sees them unchanged after the forward, and the logits are the same;
    hooks on a block's submodules (which the fast block path does not call) are honoured."""
    torch.manual_seed(2)
    model = VMamba(VMambaConfig((2, 2), 16, 1, 1.0), num_classes=5).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        plain = model(x)
        kept, copies = [], []

        def hook(module, inputs, output):
            kept.append(output)
            copies.append(output.clone())

        handles = [b.register_forward_hook(hook) for layer in model.layers for b in layer.blocks]
        hooked = model(x)
        for h in handles:
            h.remove()
        block = model.layers[0].blocks[0]
        seen = []
        handle = block.op.in_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        sub_hooked = model(x)
        handle.remove()
        h0 = torch.randn(2, 16, 10, 10)
        before = h0.clone()
        block(h0)  # a block called on its own leaves its input alone
    assert len(kept) == 4 and all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    assert seen == [(2, 16, 10, 10)]
    torch.testing.assert_close(sub_hooked, plain, rtol=1e-5, atol=1e-5)  # the general block path
    assert torch.equal(h0, before) and not block._residual_in_place


def test_capture_internals(nano):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = nano(x)
        with capture_internals(nano) as rec:
            captured = nano(x)
    # capturing makes Δ with torch's softplus instead of the kernel's fused one: equal to float rounding
    torch.testing.assert_close(plain, captured, rtol=1e-5, atol=1e-5)
    assert rec.blocks() == ["layers.0.blocks.0", "layers.1.blocks.0", "layers.2.blocks.0", "layers.2.blocks.1",
                            "layers.3.blocks.0"]
    first = rec["layers.0.blocks.0"]
    assert set(first) == {"in", "x", "conv", "delta", "B", "C", "scan", "ssm", "ssm_norm", "out"}
    assert first["x"].shape == (2, 32, 16, 16) and first["delta"].shape == (2, 4, 32, 256)
    assert first["B"].shape == first["C"].shape == (2, 4, 1, 256) and first["scan"].shape == (2, 4, 32, 256)
    assert (first["delta"] > 0).all()  # after softplus
    torch.testing.assert_close(first["x"], torch.nn.functional.silu(first["conv"]))
    op = nano.layers[0].blocks[0].op
    torch.testing.assert_close(first["conv"], op.conv2d(first["in"]))
    # "ssm" is the scan output merged back onto the map: out_proj(out_norm(ssm)) is the SS2D output
    from mamba_bench.ops.cross_scan import cross_merge
    assert first["ssm"].shape == (2, 32, 16, 16)
    torch.testing.assert_close(first["ssm"], cross_merge(first["scan"], 16, 16).view(2, 32, 16, 16))
    torch.testing.assert_close(first["ssm_norm"], op.out_norm(first["ssm"]))  # Mender's official s
    # after the context, nothing is recorded any more
    with torch.no_grad():
        nano(x)
    assert all(m._recorder is None for m in nano.modules() if hasattr(m, "_recorder"))
    with pytest.raises(ValueError, match="unknown internals"):
        with capture_internals(nano, names={"gates"}):
            pass


def test_capture_selected_names_with_gradients(nano):
    x = torch.randn(1, 3, 64, 64)
    with capture_internals(nano, names={"delta"}, detach=False) as rec:
        out = nano(x)
    d = rec["layers.0.blocks.0"]["delta"]
    assert set(rec["layers.0.blocks.0"]) == {"delta"} and d.requires_grad
    (g,) = torch.autograd.grad(out.sum(), d, retain_graph=False, allow_unused=True)
    assert g is not None  # Δ is on the graph of the logits


def test_predict_with_a_vmamba_checkpoint(cli, tmp_path, nano):
    import json

    import numpy as np
    from PIL import Image

    path = save_checkpoint(nano, tmp_path / "v.safetensors", {})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    res = cli("predict", "--model", "vmamba-nano", "--weights", str(path), str(tmp_path / "x.png"), "--format",
              "json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    top = json.loads(res.stdout)[0]["topk"]
    assert len(top) == 5 and top[0]["probability"] >= top[-1]["probability"]

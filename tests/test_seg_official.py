"""U-Mamba as bowang-lab/U-Mamba's nets build it, and nnU-Net's trainer settings."""

import pytest
import torch
import torch.nn.functional as F

from mamba_bench.seg.finetune import (
    FinetuneConfig,
    _optimizer,
    check_freeze_config,
    deep_supervision_weights,
    run_mode,
    seg_loss,
)
from mamba_bench.seg.umamba import OfficialMambaLayer, build_umamba


@pytest.mark.parametrize("stages", [4, 5, 6])
def test_enc_places_mamba_as_official(stages):
    model = build_umamba("umamba-enc", width=4, input_size=64)
    from dataclasses import replace

    from mamba_bench.seg.umamba import UMambaOfficial

    model = UMambaOfficial(replace(model.cfg, stages=stages))
    expected = [s for s in range(stages) if bool(s % 2) ^ bool(stages % 2)]  # UMambaEnc_2d.py
    assert [int(k) for k in model.mamba] == expected and expected[-1] == stages - 1
    if stages == 5:
        assert expected == [0, 2, 4]  # full resolution included


def test_channel_tokens_when_a_map_has_no_more_pixels_than_channels():
    model = build_umamba("umamba-enc", width=16, input_size=64)  # maps 64, 16, 4 px wide at stages 0, 2, 4
    layers = {k: (m.channel_token, m.dim) for k, m in model.mamba.items()}
    assert layers == {"0": (False, 16), "2": (False, 64), "4": (True, 16)}  # 4x4 = 16 pixels <= 256 channels
    big = build_umamba("umamba-enc", width=16, input_size=512)  # 32x32 = 1024 pixels > 256: patch tokens
    assert not big.mamba["4"].channel_token
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, 2, 64, 64)
    from mamba_bench.errors import MambaBenchError

    with pytest.raises(MambaBenchError, match="built for 16-pixel maps"):
        model(torch.randn(1, 3, 128, 128))
    bot = build_umamba("umamba-bot", width=16)
    assert list(bot.mamba) == ["4"] and not bot.mamba["4"].channel_token


def test_plan_blocks_and_decoder_as_official():
    model = build_umamba("umamba-bot", width=16)
    assert model.cfg.channels() == [16, 32, 64, 128, 256]  # min(32-style base * 2**i, 512)
    assert model.blocks_per_stage == [2, 2, 2, 1, 1] and model.decoder_convs == [2, 2, 2, 1]
    assert [len(st) for st in model.stages] == [2, 2, 2, 1, 1] and len(model.stem) == 2
    # the decoder's last (full-resolution) stage gets no skip; the others concatenate one
    assert [d[0].conv1.in_channels for d in model.decoder] == [2 * 128, 2 * 64, 2 * 32, 16]
    assert all(u.kernel_size == (1, 1) for u in model.up) and not any(
        isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    seen = {}
    model.up[0].register_forward_hook(lambda m, i, o: seen.update(input=i[0]))  # hooks return None
    model.mamba["4"].register_forward_hook(lambda m, i, o: seen.update(bottom=o))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(seen["input"], F.interpolate(seen["bottom"], scale_factor=2, mode="nearest"))


def test_mamba_layers_run_in_fp32_under_autocast():
    layer = OfficialMambaLayer(8, channel_token=False)
    dtypes = []
    layer.mamba.in_proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.randn(1, 8, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert dtypes == [torch.float32] and y.dtype == torch.float32


def test_deep_supervision_weights_are_nnunets():
    # nnUNetTrainer._build_loss: 1 / 2**i, the last (coarsest) set to 0, normalised
    torch.testing.assert_close(deep_supervision_weights(4), torch.tensor([1, 0.5, 0.25, 0]) / 1.75)
    torch.testing.assert_close(deep_supervision_weights(4, "ours"), torch.tensor([1, 0.5, 0.25, 0.125]) / 1.875)
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, 4:8] = 1
    outs = [torch.randn(1, 2, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]
    junk = [*outs[:3], torch.randn(1, 2, 2, 2) * 100]
    assert seg_loss(outs, mask) == seg_loss(junk, mask)  # the coarsest output has no weight
    assert seg_loss(outs, mask, "ours") != seg_loss(junk, mask, "ours")


def test_nnunet_optimizer_by_default_adamw_kept():
    cfg = FinetuneConfig(data="synthetic-roads")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.arch) == ("sgd", 1e-2, 3e-5, "official")
    opt, sched = _optimizer(torch.nn.Linear(2, 2), cfg, 0)
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and g["momentum"] == 0.99 and g["nesterov"] and g["weight_decay"] == 3e-5
    for _ in range(3000):
        opt.step()
        sched.step()
    assert g["lr"] == pytest.approx(1e-2 * (1 - 3000 / 6000) ** 0.9)  # nnU-Net's PolyLRScheduler
    adam = FinetuneConfig(data="synthetic-roads", optimizer="adamw")
    assert (adam.lr, adam.weight_decay) == (1e-3, 1e-4)
    assert type(_optimizer(torch.nn.Linear(2, 2), adam, 0)[0]) is torch.optim.AdamW


def test_sgd_clips_gradients_at_12(tmp_path, monkeypatch):
    from tests.test_seg import _tiny_split

    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c, *a, **k: calls.append(c) or real(p, c))
    cfg = FinetuneConfig(data="synthetic-roads", width=4, iters=1, crop=32, batch_size=2, eval_every=1)
    run_mode(cfg, "scratch", _tiny_split(1), _tiny_split(1), tmp_path, torch.device("cpu"))
    assert calls == [12.0]


@pytest.mark.parametrize("iters, warmup", [(3, 1), (60, 6), (6000, 50)])
def test_freeze_warmup_default_follows_the_budget(iters, warmup):
    cfg = FinetuneConfig(data="synthetic-roads", iters=iters)
    assert cfg.freeze_warmup == warmup
    check_freeze_config(cfg)  # a short freeze run is accepted

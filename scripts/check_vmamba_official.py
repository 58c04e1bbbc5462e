"""Cross-check mamba-bench's VMamba against the official implementation (CPU, fp32).

Usage: python scripts/check_vmamba_official.py OFFICIAL_MODELS_DIR [CHECKPOINT.pth]

OFFICIAL_MODELS_DIR is `classification/models` of a checkout of MzeroMiko/VMamba (not shipped here;
its code is imported at run time, never copied). Without a checkpoint, both models get the same
random weights. The official module needs fvcore and einops only for FLOP counting and Mamba-2;
they are stubbed, and its CUDA-only paths are routed to its own pure-torch functions.
"""

from __future__ import annotations

import sys
import types

import torch


def main() -> int:
    official_dir = sys.argv[1]
    ckpt = sys.argv[2] if len(sys.argv) > 2 else None
    sys.path.insert(0, official_dir)
    for name in ("fvcore", "fvcore.nn", "einops"):
        mod = types.ModuleType(name)
        mod.FlopCountAnalysis = mod.flop_count_str = mod.flop_count = mod.parameter_count = None
        mod.rearrange = mod.repeat = None
        sys.modules.setdefault(name, mod)
    import csm_triton
    import csms6s
    import vmamba as official

    official.selective_scan_fn = (lambda u, d, A, B, C, D, db, sp, oflex, backend=None:
                                  csms6s.selective_scan_torch(u, d, A, B, C, D, db, sp, oflex))
    official.cross_scan_fn = (lambda x, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0,
                              force_torch=False: csm_triton.CrossScanF.apply(x, in_channel_first, out_channel_first,
                                                                              one_by_one, scans))
    official.cross_merge_fn = (lambda y, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0,
                               force_torch=False: csm_triton.CrossMergeF.apply(y, in_channel_first, out_channel_first,
                                                                                one_by_one, scans))
    from mamba_bench.models import create_model

    ref = official.VSSM(depths=[2, 2, 8, 2], dims=96, ssm_d_state=1, ssm_ratio=1.0, ssm_dt_rank="auto",
                        ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=4.0,
                        downsample_version="v3", patchembed_version="v2", norm_layer="ln2d").eval()
    torch.manual_seed(0)
    if ckpt is None:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn_like(p) * 0.05 + (p if p.dim() == 1 else 0))
        ckpt = "/tmp/vmamba_t_random_official_format.pth"
        torch.save({"model": ref.state_dict()}, ckpt)
    else:
        ref.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"], strict=True)
    ours = create_model("vmamba-t", weights=ckpt)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    err = float((a - b).abs().max())
    print(f"max |logit difference| = {err:.3e} (max |logit| {float(a.abs().max()):.3f})")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

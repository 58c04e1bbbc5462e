"""Cross-check mamba-bench's VMamba against the official implementation (CPU, fp32).

Usage: python scripts/check_vmamba_official.py OFFICIAL_MODELS_DIR [CHECKPOINT.pth] [--v0]

``--v0``: Vanilla-VMamba-T (the official ``vanilla_vmamba_tiny``, forward type v0) against our
``vmamba-t-v0``, a checkpoint then written in VMamba's first code base's key names (``ln_1``,
``self_attention``, ``patch_embed.proj``, ``head``: what the v0 release files hold), which both
loaders rename. Otherwise VMamba-T s1l8 (v2) against ``vmamba-t``.

OFFICIAL_MODELS_DIR is `classification/models` of a checkout of MzeroMiko/VMamba (not shipped here;
its code is imported at run time, never copied). Without a checkpoint, both models get the same
random weights. The official module needs fvcore and einops only for FLOP counting and Mamba-2;
they are stubbed, and its CUDA-only paths are routed to its own pure-torch functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _official import official_vmamba  # noqa: E402


def legacy_name(key: str) -> str:
    """A key of the official v0 model in the first code base's names."""
    for new, old in (("patch_embed.0.", "patch_embed.proj."), ("patch_embed.2.", "patch_embed.norm."),
                     ("classifier.norm.", "norm."), ("classifier.head.", "head.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key.replace(".norm.", ".ln_1.").replace(".op.", ".self_attention.") if ".blocks." in key else key


def main() -> int:
    v0 = "--v0" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--v0"]
    official_dir = args[0]
    ckpt = args[1] if len(args) > 1 else None
    official = official_vmamba(official_dir)
    import csm_triton
    import csms6s

    official.selective_scan_fn = (lambda u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, oflex=True,
                                  backend=None: csms6s.selective_scan_torch(u, delta, A, B, C, D, delta_bias,
                                                                            delta_softplus, oflex))
    official.cross_scan_fn = (lambda x, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0,
                              force_torch=False: csm_triton.CrossScanF.apply(x, in_channel_first, out_channel_first,
                                                                              one_by_one, scans))
    official.cross_merge_fn = (lambda y, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0,
                               force_torch=False: csm_triton.CrossMergeF.apply(y, in_channel_first, out_channel_first,
                                                                                one_by_one, scans))
    from mamba_bench.models import create_model

    torch.manual_seed(0)  # the official initialisation too: the 1-D parameters keep it, perturbed
    if v0:
        ref = official.vanilla_vmamba_tiny().eval()
    else:
        ref = official.VSSM(depths=[2, 2, 8, 2], dims=96, ssm_d_state=1, ssm_ratio=1.0, ssm_dt_rank="auto",
                            ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=False, forward_type="v05_noz",
                            mlp_ratio=4.0, downsample_version="v3", patchembed_version="v2", norm_layer="ln2d").eval()
    torch.manual_seed(0)
    if ckpt is None:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn_like(p) * 0.05 + (p if p.dim() == 1 else 0))
        state = ref.state_dict()
        if v0:  # the release files' names (the inverse of the official loader's renames)
            state = {legacy_name(k): v for k, v in state.items()}
        ckpt = f"/tmp/vmamba_t{'_v0' if v0 else ''}_random_official_format.pth"
        torch.save({"model": state}, ckpt)
        ref.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"], strict=True)
    else:
        ref.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"], strict=True)
    ours = create_model("vmamba-t-v0" if v0 else "vmamba-t", weights=ckpt)
    print(f"parameters: official {sum(p.numel() for p in ref.parameters()):,}, "
          f"ours {sum(p.numel() for p in ours.parameters()):,}")
    torch.manual_seed(1)  # the same images on every run (building ours draws random numbers)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    err = float((a - b).abs().max())
    print(f"max |logit difference| = {err:.3e} (max |logit| {float(a.abs().max()):.3f})")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""VMamba v0 ("Vanilla-VMamba", forward type ``v0``), state_dict-compatible with the official v0 releases.

The 22.9 M-parameter Vanilla-VMamba-T is the backbone of START's poster (a "22 M VMamba-T"); the v2
models of ``models/vmamba.py`` are 30 M. Facts read from MzeroMiko/VMamba
``classification/models/vmamba.py`` (``SS2Dv0``, ``VSSBlock``, ``PatchMerging2D``, ``VSSM``,
``vanilla_vmamba_tiny/small/base``) and ``classification/configs/vssm/vmambav0_*_224.yaml``:

    patch_embed.{0: conv 4x4/4 → C (bias), 2: LayerNorm}                       (patch-embed v1)
    layers.i.blocks.j.{norm, op (SS2D v0)}        x += op(norm(x))              (mlp_ratio 0: no MLP)
    layers.i.downsample.{norm: LN(4C), reduction: linear 4C → 2C, no bias}      (PatchMerging2D, v1)
    classifier.{norm, head}                                                     LN → average pool → linear

SS2D v0 (``op``): in_proj (no bias) to 2·D channels split into x and the gate z; x → depthwise 3x3
conv *with* bias → SiLU → the same four-direction selective scan as v2 (d_state 16, Δ-rank
ceil(C/16), Δ-bias + softplus, A = −exp(A_logs), skip D) → merge → out_norm (LayerNorm over D) →
× SiLU(z) → out_proj (no bias). The official model runs channels-last (``norm_layer="ln"``); this
one runs NCHW with LayerNorm-2d and 1x1 linears, the same arithmetic, so every hook point, DG
algorithm (START, MixStyle, DSU) and internal of the v2 family works unchanged. PatchMerging2D
concatenates the 2x2 neighbours in the official order (0::2,0::2), (1::2,0::2), (0::2,1::2),
(1::2,1::2), padding an odd side at its end first.

The v0 release files were written by VMamba's first code base, whose keys the official loader
renames (``VSSM._load_from_state_dict``); ``checkpoint_filter_fn`` here makes the same renames:
``patch_embed.proj`` → ``patch_embed.0``, ``patch_embed.norm`` → ``patch_embed.2``,
``….blocks.j.ln_1`` → ``….norm``, ``….self_attention`` → ``….op``, ``norm`` → ``classifier.norm``,
``head`` → ``classifier.head``.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.models.internals import Recorder, SSMBlock
from mamba_bench.models.vmamba import (
    RELEASES,
    SS2D,
    VMAMBA_INTERNALS,
    DropPath,
    LayerNorm2d,
    Linear2d,
    VMamba,
    VMambaConfig,
    name_variant,
    read_config,
    register_variants,
)

#: a v0 block records the gate's in-projection ``z`` too
VMAMBA_V0_INTERNALS = VMAMBA_INTERNALS | {"z"}


class SS2Dv0(SS2D):
    """SS2D of forward type v0: a gated branch (in_proj to x and z) and a depthwise conv with bias."""

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, dt_rank: int | str = "auto", d_conv: int = 3):
        super().__init__(dim, d_state, ssm_ratio, dt_rank, d_conv)
        d = self.d_inner
        self.in_proj = Linear2d(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=True)

    def project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, z = self.in_proj(x).chunk(2, dim=1)
        return x, z


class VSSBlockV0(nn.Module, SSMBlock):
    """``x += op(norm(x))`` (no MLP). Internals as the v2 block's, plus ``z`` (the gate before its SiLU)."""

    internal_names = VMAMBA_V0_INTERNALS

    def __init__(self, dim: int, cfg: VMambaConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2Dv0(dim, cfg.d_state, cfg.ssm_ratio, cfg.dt_rank, cfg.d_conv)
        self.drop_path = DropPath(drop_path)
        self._recorder: Recorder | None = None
        self._record_name = ""

    def recording_modules(self):
        return (self, self.op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        self.record("out", x)
        return x


class PatchMerging2D(nn.Module):
    """2x2 neighbours concatenated (official order) → LayerNorm(4C) → linear 4C → out_dim, no bias."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = Linear2d(4 * dim, out_dim, bias=False)
        self.norm = LayerNorm2d(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], dim=1)
        return self.reduction(self.norm(x))


class VMambaV0(VMamba):
    """The Vanilla-VMamba classifier. ``forward(x)`` takes normalised NCHW images."""

    @staticmethod
    def make_stem(cfg: VMambaConfig) -> nn.Sequential:
        c0 = cfg.dims[0]
        return nn.Sequential(nn.Conv2d(cfg.in_chans, c0, cfg.patch_size, stride=cfg.patch_size, bias=True),
                             nn.Identity(), LayerNorm2d(c0))

    @staticmethod
    def make_block(dim: int, cfg: VMambaConfig, drop_path: float) -> nn.Module:
        return VSSBlockV0(dim, cfg, drop_path)

    @staticmethod
    def make_downsample(dim: int, out_dim: int) -> nn.Module:
        return PatchMerging2D(dim, out_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (the v2 family's fused CPU inference path is v2-specific)
        for layer in self.layers:
            x = layer(x)
        return x


# -- checkpoints ------------------------------------------------------------------------------------
_LEGACY = [  # VMamba's first code base → the official model's names (its VSSM._load_from_state_dict)
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)ln_1\."), r"\1norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)self_attention\."), r"\1op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A v0 state_dict in the official model's key names (legacy names renamed; others kept)."""
    out = {}
    for k, v in state.items():
        for pattern, repl in _LEGACY:
            k2 = pattern.sub(repl, k)
            if k2 != k:
                k = k2
                break
        out[k] = v
    return out


def diagnose_checkpoint(state: dict[str, torch.Tensor], wanted: str) -> str | None:
    """Which v0 entry a non-fitting checkpoint belongs to (a v0 file passed for a v2 model included)."""
    s = checkpoint_filter_fn(state)
    if not ("patch_embed.0.weight" in s and "patch_embed.5.weight" not in s
            and any(k.endswith(".op.in_proj.weight") for k in s) and not any(".mlp." in k for k in s)):
        return None  # not a v0 state_dict
    cfg = read_config(s, embed_key="patch_embed.0.weight", gated=True, mlp_ratio=0.0)
    if cfg is None:
        return "it is a VMamba v0 ('vanilla') checkpoint of a layout that cannot be read, which no registry entry has"
    return name_variant(cfg, VMAMBA_V0_VARIANTS, wanted, "VMamba v0 ('vanilla')")


# -- registry entries -------------------------------------------------------------------------------
def _v0(depths: tuple[int, ...], dim: int) -> VMambaConfig:
    return VMambaConfig(depths, dim, d_state=16, ssm_ratio=2.0, mlp_ratio=0.0)


# name → (official entry point, config, release URL or None, reported ImageNet-1k top-1)
VMAMBA_V0_VARIANTS: dict[str, tuple[str, VMambaConfig, str | None, float | None]] = {
    "vmamba-t-v0": ("vanilla_vmamba_tiny", _v0((2, 2, 9, 2), 96),
                    RELEASES + "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth", 82.2),
    "vmamba-s-v0": ("vanilla_vmamba_small", _v0((2, 2, 27, 2), 96),
                    RELEASES + "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth", 83.5),
    "vmamba-b-v0": ("vanilla_vmamba_base", _v0((2, 2, 27, 2), 128),
                    RELEASES + "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth", 83.7),
    # small variant for the embedded 64 px data (START on the v0 block, in tests and the CPU demo)
    "vmamba-nano-v0": ("vmamba-nano-v0 (mamba-bench)", VMambaConfig((1, 1, 2, 1), 32, 4, 1.0, mlp_ratio=0.0),
                       None, None),
}


register_variants(VMAMBA_V0_VARIANTS, VMambaV0, "Vanilla-VMamba (v0)", diagnose_checkpoint, note=", no MLP")

"""U-Mamba 2D (Ma, Li & Wang, 2024) in our own code: a residual conv U-Net with Mamba layers.

Two architectures on one plan (``width`` = channels of the first stage, ``stages``, input size):

``official`` (default, :class:`UMambaOfficial`), as bowang-lab/U-Mamba's
``umamba/nnunetv2/nets/UMambaEnc_2d.py`` and ``UMambaBot_2d.py`` build it from an nnU-Net plan
(``get_umamba_*_2d_from_plans``: conv bias on, InstanceNorm eps 1e-5 affine, LeakyReLU 0.01, He
init ``InitWeights_He(1e-2)`` of every 2-D conv), with nnU-Net's default 2-D plan values
(``default_experiment_planner.py``: 2 blocks per stage, features ``min(width · 2^i, 512)``, 3x3
kernels, strides 1, 2, 2, ...):

* stem: a residual block (3x3 conv → IN → LeakyReLU → 3x3 conv → IN, plus a 1x1 conv of the input,
  → LeakyReLU) and one ResNet-D block (dynamic_network_architectures' ``BasicBlockD``), at full
  resolution; then stage s: such a residual block (stride 1 for s = 0, else 2) and
  ``blocks[s] - 1`` ``BasicBlockD``; U-Mamba sets ``blocks[s] = 1`` for s >= ceil(n/2)
  ([2, 2, 2, 1, 1] for 5 stages);
* Enc: a Mamba layer after stage s when ``bool(s % 2) ^ bool(n_stages % 2)`` (stages 0, 2, 4 of 5,
  full resolution included; the last stage always has one). It uses *channel tokens* — a sequence
  of C tokens of dimension H·W — when the stage's map has no more pixels than channels
  (``prod(size) <= features``, sizes from the input size), patch tokens (H·W tokens of dimension
  C, raster order) otherwise; so an Enc model is built for one input size. Bot: one Mamba layer on
  the bottleneck (patch tokens);
* Mamba layers run in fp32 with autocast off (``@autocast(enabled=False)``, the input cast to fp32);
* decoder stage s = 1 … n-1: nearest-neighbour ×2 upsampling then a 1x1 conv (``UpsampleLayer``),
  concatenation with the encoder's skip except in the last (full-resolution) stage, which gets no
  skip, then a residual block and ``conv_per_stage[s-1] - 1`` ``BasicBlockD`` (U-Mamba sets 1 from
  index ceil((n-1)/2 + 0.5) on: [2, 2, 2, 1] for 5 stages); a 1x1 head per decoder stage (deep
  supervision, fine to coarse).

``ours`` (:class:`UMamba`, the earlier architecture, kept by name):

* encoder: stages of residual blocks (3x3 conv → InstanceNorm → LeakyReLU, twice, plus a 1x1
  projection when the shape changes), the first at full resolution, each next one halving it;
* Mamba layer (U-Mamba's): the feature map flattened in raster order to (B, H·W, C) → LayerNorm
  → Mamba (in-projection to x and gate z with expand 2, causal depthwise conv1d with d_conv 4, SiLU,
  input-dependent Δ (rank ⌈C/16⌉), B, C with d_state 16, selective scan, y·SiLU(z), out-projection)
  → back to (B, C, H, W). ``umamba-bot`` has one at the bottleneck, ``umamba-enc`` one after every
  encoder stage but the first (full resolution);
* decoder: transposed conv ×2, concatenation with the skip, a residual block; a 1x1 head per
  decoder level (deep supervision: the coarser heads are only used for the training loss).

The selective scan is the project's (``mamba_bench.ops``): numba on CPU, Triton on GPU (mamba-ssm's
kernel with backend ``cuda``), the same ``auto`` choice as VMamba's. Sizes are set by ``width``
(channels of the first stage, doubled per stage up to 8x).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.ops.selective_scan import selective_scan


@dataclass(frozen=True)
class UMambaConfig:
    variant: str = "bot"          # "bot" (bottleneck Mamba) or "enc" (Mamba after encoder stages)
    arch: str = "official"        # "official" (U-Mamba's nets) or "ours" (the earlier architecture)
    input_size: int | None = None  # official Enc: the input size its channel-token layers are built for
    in_chans: int = 3
    num_classes: int = 2
    width: int = 16
    stages: int = 5
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def channels(self) -> list[int]:
        if self.arch == "official":  # nnU-Net: min(UNet_base_num_features * 2**i, unet_max_num_features=512)
            return [min(self.width * 2 ** i, 512) for i in range(self.stages)]
        return [self.width * min(2 ** i, 8) for i in range(self.stages)]

    def as_dict(self) -> dict:
        return asdict(self)


class Mamba(nn.Module):
    """Mamba's selective SSM block on (B, L, C) sequences."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.d_inner = d_inner = expand * dim
        self.dt_rank = dt_rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.scan_backend = "auto"  # the selective-scan backend (mamba_bench.ops.selective_scan)
        with torch.no_grad():  # Mamba's Δ initialisation: softplus⁻¹ of a log-uniform Δ in [1e-3, 0.1]
            nn.init.uniform_(self.dt_proj.weight, -(dt_rank ** -0.5), dt_rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)                                   # (b, 2·d_inner, L)
        xi, z = xz.chunk(2, dim=1)
        xi = F.silu(self.conv1d(xi)[..., :length])                            # causal conv
        dbl = self.x_proj(xi.transpose(1, 2))                                  # (b, L, r + 2n)
        dt, B, C = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)                    # (b, d_inner, L), bias in the scan
        # gated in the scan, y·silu(z), as mamba-ssm's Mamba module calls selective_scan_fn
        y = selective_scan(xi, dt, -torch.exp(self.A_log.float()), B.transpose(1, 2).contiguous(),
                           C.transpose(1, 2).contiguous(), self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                           delta_softplus=True, backend=self.scan_backend)
        return self.out_proj(y.transpose(1, 2))


class MambaLayer(nn.Module):
    """U-Mamba's layer: raster-order flattening, LayerNorm, Mamba, and back to a feature map."""

    def __init__(self, dim: int, d_state: int, d_conv: int, expand: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state, d_conv, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)                                      # (b, H·W, C), raster order
        out = self.mamba(self.norm(seq.float()).to(seq.dtype))
        return out.transpose(1, 2).reshape(b, c, h, w)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(cout, affine=True)
        self.skip = (nn.Identity() if cin == cout and stride == 1
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                        nn.InstanceNorm2d(cout, affine=True)))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


class UMamba(nn.Module):
    """``forward(x)`` → logits (B, num_classes, H, W); in training mode with ``deep_supervision``, a list
    of logits from fine to coarse. H and W must be multiples of 2^(stages-1)."""

    def __init__(self, cfg: UMambaConfig = UMambaConfig(arch="ours"), deep_supervision: bool = True):
        super().__init__()
        cfg = replace(cfg, arch="ours", input_size=None)  # this class is the earlier architecture
        self.cfg = cfg
        self.deep_supervision = deep_supervision
        ch = cfg.channels()
        self.encoder = nn.ModuleList()
        self.mamba = nn.ModuleDict()
        for i, c in enumerate(ch):
            cin = cfg.in_chans if i == 0 else ch[i - 1]
            self.encoder.append(nn.Sequential(ResBlock(cin, c, 1 if i == 0 else 2), ResBlock(c, c)))
            if (cfg.variant == "enc" and i > 0) or (cfg.variant == "bot" and i == len(ch) - 1):
                self.mamba[str(i)] = MambaLayer(c, cfg.d_state, cfg.d_conv, cfg.expand)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2))
            self.decoder.append(ResBlock(2 * ch[i - 1], ch[i - 1]))
            self.heads.append(nn.Conv2d(ch[i - 1], cfg.num_classes, 1))

    @property
    def multiple(self) -> int:
        return 2 ** (self.cfg.stages - 1)

    def forward(self, x: torch.Tensor):
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if str(i) in self.mamba:
                x = self.mamba[str(i)](x)
            skips.append(x)
        outs = []
        for k, (up, dec, head) in enumerate(zip(self.up, self.decoder, self.heads, strict=True)):
            x = dec(torch.cat([up(x), skips[-2 - k]], dim=1))
            outs.append(head(x))
        if self.training and self.deep_supervision:
            return outs[::-1]  # fine to coarse
        return outs[-1]


# -- the official architecture ---------------------------------------------------------------------------------
def _in(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, eps=1e-5, affine=True)


class OfficialResBlock(nn.Module):
    """U-Mamba's ``BasicResBlock`` with ``use_1x1conv=True``: the skip always goes through a 1x1 conv."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm1 = _in(cout)
        self.act1 = nn.LeakyReLU(0.01, inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = _in(cout)
        self.act2 = nn.LeakyReLU(0.01, inplace=True)
        self.conv3 = nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act2(y + self.conv3(x))


class BasicBlockD(nn.Module):
    """dynamic_network_architectures' ``BasicBlockD`` at stride 1, same channels: identity skip."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = _in(c)
        self.act1 = nn.LeakyReLU(0.01, inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = _in(c)
        self.act2 = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + x)


class OfficialMambaLayer(nn.Module):
    """U-Mamba's ``MambaLayer``: LayerNorm + Mamba over patch tokens (H·W tokens of C) or channel tokens
    (C tokens of H·W), in fp32 with autocast off."""

    def __init__(self, dim: int, channel_token: bool, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.dim = dim
        self.channel_token = channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state, d_conv, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mamba_bench.errors import MambaBenchError

        b, c, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.channel_token:
                if h * w != self.dim:
                    raise MambaBenchError(f"this U-Mamba Enc was built for {self.dim}-pixel maps at this stage "
                                          f"(channel tokens), got {h}x{w}: use the input size it was built for")
                return self.mamba(self.norm(x.flatten(2))).reshape(b, c, h, w)
            seq = x.flatten(2).transpose(1, 2)                                  # (b, H·W, C), raster order
            return self.mamba(self.norm(seq)).transpose(1, 2).reshape(b, c, h, w)


class UMambaOfficial(nn.Module):
    """U-Mamba Bot/Enc 2D as the official nets (module docstring). ``forward(x)`` → logits; in training with
    ``deep_supervision``, a list from fine to coarse. H and W must be multiples of 2^(stages-1)."""

    def __init__(self, cfg: UMambaConfig, deep_supervision: bool = True):
        super().__init__()
        self.cfg = cfg
        self.deep_supervision = deep_supervision
        n = cfg.stages
        ch = cfg.channels()
        blocks = [2] * n
        for s in range(math.ceil(n / 2), n):
            blocks[s] = 1
        dec_convs = [2] * (n - 1)
        for s in range(math.ceil((n - 1) / 2 + 0.5), n - 1):
            dec_convs[s] = 1
        self.blocks_per_stage, self.decoder_convs = blocks, dec_convs
        self.stem = nn.Sequential(OfficialResBlock(cfg.in_chans, ch[0]), *[BasicBlockD(ch[0])
                                                                           for _ in range(blocks[0] - 1)])
        self.stages = nn.ModuleList()
        cin = ch[0]
        for s in range(n):
            self.stages.append(nn.Sequential(OfficialResBlock(cin, ch[s], 1 if s == 0 else 2),
                                             *[BasicBlockD(ch[s]) for _ in range(blocks[s] - 1)]))
            cin = ch[s]
        self.mamba = nn.ModuleDict()
        if cfg.variant == "enc":
            if cfg.input_size is None:
                from mamba_bench.errors import MambaBenchError

                raise MambaBenchError("the official U-Mamba Enc is built for one input size (input_size)")
            size = cfg.input_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            for s in range(n):
                pixels = (hw[0] // 2 ** s) * (hw[1] // 2 ** s)
                if bool(s % 2) ^ bool(n % 2):  # U-Mamba: "guarantee the last stage has mamba layer"
                    channel_token = pixels <= ch[s]
                    self.mamba[str(s)] = OfficialMambaLayer(pixels if channel_token else ch[s], channel_token,
                                                            cfg.d_state, cfg.d_conv, cfg.expand)
        else:
            self.mamba[str(n - 1)] = OfficialMambaLayer(ch[-1], False, cfg.d_state, cfg.d_conv, cfg.expand)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for s in range(1, n):
            below, skip = ch[-s], ch[-(s + 1)]
            self.up.append(nn.Conv2d(below, skip, 1))  # after nearest x2 (UpsampleLayer)
            cin = 2 * skip if s < n - 1 else skip
            self.decoder.append(nn.Sequential(OfficialResBlock(cin, skip),
                                              *[BasicBlockD(skip) for _ in range(dec_convs[s - 1] - 1)]))
            self.heads.append(nn.Conv2d(skip, cfg.num_classes, 1))
        for m in self.modules():  # nnU-Net's InitWeights_He(1e-2), applied to every 2-D conv
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def multiple(self) -> int:
        return 2 ** (self.cfg.stages - 1)

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if str(s) in self.mamba:
                x = self.mamba[str(s)](x)
            skips.append(x)
        x = skips[-1]
        outs = []
        last = len(self.decoder) - 1
        for k, (up, dec, head) in enumerate(zip(self.up, self.decoder, self.heads, strict=True)):
            x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
            if k < last:  # the full-resolution decoder stage gets no skip
                x = torch.cat([x, skips[-(k + 2)]], dim=1)
            x = dec(x)
            if (self.deep_supervision and self.training) or k == last:
                outs.append(head(x))
        if self.training and self.deep_supervision:
            return outs[::-1]  # fine to coarse
        return outs[-1]


ARCHES = ("official", "ours")

SEG_MODELS = {
    "umamba-bot": "U-Mamba Bot 2D: residual conv U-Net, one Mamba layer at the bottleneck",
    "umamba-enc": "U-Mamba Enc 2D: residual conv U-Net, Mamba layers in the encoder (official: stages 0, 2, 4 of 5; "
                  "ours: after every stage but the first)",
}


def build_umamba(name: str, width: int = 16, num_classes: int = 2, arch: str = "official",
                 input_size: int | None = None) -> UMamba | UMambaOfficial:
    """``arch`` official (U-Mamba's nets) or ours (the earlier architecture); the official Enc needs the
    ``input_size`` it will see (its channel-token layers depend on it)."""
    from mamba_bench.errors import UnknownNameError

    if name not in SEG_MODELS:
        raise UnknownNameError(f"unknown segmentation model {name!r}; valid: {', '.join(SEG_MODELS)}")
    if arch not in ARCHES:
        raise UnknownNameError(f"unknown --arch-variant {arch!r}; valid: {', '.join(ARCHES)}")
    cfg = UMambaConfig(variant=name.split("-")[1], arch=arch, width=width, num_classes=num_classes,
                       input_size=input_size if arch == "official" and name == "umamba-enc" else None)
    return UMambaOfficial(cfg) if arch == "official" else UMamba(cfg)

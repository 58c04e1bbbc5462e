"""U-Mamba 2D (Ma, Li & Wang, 2024) in our own code: a residual conv U-Net with Mamba layers.

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
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.ops.selective_scan import selective_scan


@dataclass(frozen=True)
class UMambaConfig:
    variant: str = "bot"          # "bot" (bottleneck Mamba) or "enc" (Mamba after encoder stages)
    in_chans: int = 3
    num_classes: int = 2
    width: int = 16
    stages: int = 5
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def channels(self) -> list[int]:
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

    def __init__(self, cfg: UMambaConfig = UMambaConfig(), deep_supervision: bool = True):
        super().__init__()
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


SEG_MODELS = {
    "umamba-bot": "U-Mamba Bot 2D: residual conv U-Net, one Mamba layer at the bottleneck",
    "umamba-enc": "U-Mamba Enc 2D: residual conv U-Net, a Mamba layer after every encoder stage but the first",
}


def build_umamba(name: str, width: int = 16, num_classes: int = 2) -> UMamba:
    from mamba_bench.errors import UnknownNameError

    if name not in SEG_MODELS:
        raise UnknownNameError(f"unknown segmentation model {name!r}; valid: {', '.join(SEG_MODELS)}")
    return UMamba(UMambaConfig(variant=name.split("-")[1], width=width, num_classes=num_classes))

"""MambaVision (NVlabs/MambaVision) in the project's own code, state_dict-compatible with the releases.

Read from ``mambavision/models/mamba_vision.py`` (``MambaVision``, ``MambaVisionLayer``, ``Block``,
``MambaVisionMixer``, ``Attention``, ``ConvBlock``, the ``mamba_vision_{T,T2,S,B,L,L2}`` entry points
and their ``default_cfgs``)::

    patch_embed.conv_down   conv 3x3/2 → in_dim, BN (eps 1e-4), ReLU, conv 3x3/2 → dim, BN, ReLU
    levels.0, levels.1      ConvBlocks: x + BN(conv(GELU-tanh(BN(conv(x)))))
    levels.2, levels.3      on windows of window_size² tokens (the map zero-padded to a multiple):
                            blocks x += γ1·mixer(LN(x)); x += γ2·MLP(LN(x)); the first half of a
                            level's blocks (depth // 2, rounded up for odd depths) MambaVision
                            mixers, the rest multi-head self-attention (qkv bias)
    levels.i.downsample     conv 3x3/2 → 2·dim, no bias (after levels 0-2)
    norm, head              BatchNorm2d → global average pool → linear

The mixer (``MambaVisionMixer``, d_state 8, d_conv 3, expand 1): in_proj (no bias) → x, z of D/2
channels each; x: depthwise conv1d ('same' padding, no bias) + SiLU → x_proj → (Δ-rank, B, C) →
dt_proj → selective scan (softplus, A = −exp(A_log), skip D); z: its own depthwise conv1d + SiLU
(no scan: a symmetric branch, not a gate); out_proj(concat(y, z)). The official code adds dt_proj's
bias twice (``dt_proj(dt)`` with its bias, then ``delta_bias=dt_proj.bias`` in the scan): the
released weights were trained so, and this module does the same.

Official behaviour not copied: the CUDA-only mamba-ssm scan (the project's backends compute the same
scan); the fused attention kernel is torch's ``scaled_dot_product_attention`` on every device, as
in the official module. Layer scale γ exists only where the config has it (B, L, L2); ``1``
elsewhere, as officially.

Internals (``capture_internals``, MambaVision-mixer blocks only; attention blocks are no SSM blocks):
``in`` (the x half of in_proj), ``conv`` (x's conv1d before the SiLU), ``x``, ``ssm`` (the scan output)
as maps (b, D/2, H, W); ``delta``, ``scan`` (b, K, D/2, ws²) and ``B``, ``C`` (b, K, N, ws²) in scan
order, K the windows of the map (1 for the released configs at 224 px); ``out`` (the block output,
(b, C, H, W)). Maps leave out the windows' zero padding and are recorded upstream of the rest of
the block (exact gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.models.family import DropPath, TimmModelAPI, depthwise_conv1d, hub_fields, pretrained_cfg
from mamba_bench.models.internals import SSMBlock
from mamba_bench.models.registry import ModelSpec, get_spec, register
from mamba_bench.ops.selective_scan import selective_scan, set_scan_backend

MAMBAVISION_INTERNALS = frozenset({"in", "conv", "x", "delta", "B", "C", "scan", "ssm", "out"})


@dataclass(frozen=True)
class MambaVisionConfig:
    depths: tuple[int, ...] = (1, 3, 8, 4)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: tuple[int, ...] = (8, 8, 14, 7)
    dim: int = 80
    in_dim: int = 32
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    layer_scale_conv: float | None = None
    drop_path_rate: float = 0.2
    d_state: int = 8
    d_conv: int = 3
    expand: int = 1
    qkv_bias: bool = True
    in_chans: int = 3

    @property
    def dims(self) -> list[int]:
        return [self.dim * 2 ** i for i in range(len(self.depths))]

    def attention_blocks(self, depth: int) -> range:
        """Which blocks of a mixer level are self-attention (the official rule)."""
        return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Identity()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class ConvBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


#: (window size, H, W) of the map whose windows a block's token batch holds
Layout = tuple[int, int, int]


def _windows_to_map(t: torch.Tensor, ws: int, hp: int, wp: int) -> torch.Tensor:
    """(b·nw, C, ws²) channel-first window tokens → (b, C, hp, wp)."""
    bn, c, _ = t.shape
    nh, nw = hp // ws, wp // ws
    return t.reshape(bn // (nh * nw), nh, nw, c, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, hp, wp)


def _map_to_windows(m: torch.Tensor, ws: int) -> torch.Tensor:
    """(b, C, hp, wp) → (b·nw, C, ws²), windows in the official order (rows of windows, row-major inside)."""
    b, c, hp, wp = m.shape
    return m.reshape(b, c, hp // ws, ws, wp // ws, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws * ws)


def _window_count(layout: Layout) -> int:
    ws, h, w = layout
    return math.ceil(h / ws) * math.ceil(w / ws)


class MambaVisionMixer(nn.Module):
    """(b, L, C) → (b, L, C): the SSM branch on half the channels, a conv branch on the other half."""

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 3, expand: int = 1):
        super().__init__()
        self.d_inner = di = expand * d_model
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        half, r = di // 2, self.dt_rank
        # registration order as in the official module, so state_dict() lists keys in its order
        self.in_proj = nn.Linear(d_model, di, bias=False)
        self.x_proj = nn.Linear(half, r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(r, half)
        self.A_log = nn.Parameter(torch.empty(half, d_state))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(di, d_model, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False)  # official: bias=True // 2
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False)
        self.scan_backend = "auto"
        self._recorder = None
        self._record_name = ""
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        half, r = self.d_inner // 2, self.dt_rank
        nn.init.uniform_(self.dt_proj.weight, -(r ** -0.5), r ** -0.5)
        dt = torch.exp(torch.rand(half) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D.fill_(1.0)

    def _route(self, name: str, t: torch.Tensor, layout: Layout | None) -> torch.Tensor:
        """Record (b·nw, C, ws²) window tokens as the (b, C, H, W) map and continue from it."""
        rec = self._recorder
        if rec is None or layout is None or not rec.wants(name):
            return t
        ws, h, w = layout
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        full = _windows_to_map(t, ws, hp, wp)
        m = full[:, :, :h, :w]
        rec.put(self._record_name, name, m)
        if (hp, wp) != (h, w):  # the padding's tokens go on from the unrecorded tensor
            m = torch.cat([torch.cat([m, full[:, :, :h, w:]], 3), full[:, :, h:]], 2)
        return _map_to_windows(m, ws)

    def _per_image(self, t: torch.Tensor, layout: Layout | None) -> torch.Tensor:
        """(b·nw, ...) → (b, nw, ...): the windows of one image on the direction axis."""
        k = _window_count(layout) if layout is not None else 1
        return t.reshape(t.shape[0] // k, k, *t.shape[1:])

    def forward(self, h: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        bn, length, _ = h.shape
        half, n, r = self.d_inner // 2, self.d_state, self.dt_rank
        rec = self._recorder
        xz = self.in_proj(h).transpose(1, 2)                                        # (bn, D, L)
        x, z = self._route("in", xz[:, :half], layout), xz[:, half:]
        k = self.conv1d_x.kernel_size[0] - 1  # 'same' padding, as the official F.conv1d(padding='same')
        x = self._route("conv", depthwise_conv1d(x, self.conv1d_x.weight, self.conv1d_x.bias, k // 2, k - k // 2),
                        layout)
        x = self._route("x", F.silu(x), layout)
        z = F.silu(depthwise_conv1d(z, self.conv1d_z.weight, self.conv1d_z.bias, k // 2, k - k // 2))
        x_dbl = torch.matmul(self.x_proj.weight.to(x.dtype), x)                      # (bn, r + 2n, L)
        dt = F.linear(x_dbl[:, :r].transpose(1, 2), self.dt_proj.weight, self.dt_proj.bias).transpose(1, 2)
        B, C = x_dbl[:, r:r + n].contiguous(), x_dbl[:, r + n:].contiguous()
        A = -torch.exp(self.A_log.float())
        bias = self.dt_proj.bias.float()  # a second time: the official scan call's delta_bias
        if rec is None:
            y = selective_scan(x, dt, A, B, C, self.D.float(), delta_bias=bias, delta_softplus=True,
                               backend=self.scan_backend)
        else:  # Δ made explicitly, so the recorded tensor is the one on the graph
            delta = F.softplus(dt.float() + bias[None, :, None])
            rec.put(self._record_name, "delta", self._per_image(delta, layout))
            rec.put(self._record_name, "B", self._per_image(B, layout))
            rec.put(self._record_name, "C", self._per_image(C, layout))
            y = selective_scan(x, delta, A, B, C, self.D.float(), delta_softplus=False,
                               backend=self.scan_backend)
            rec.put(self._record_name, "scan", self._per_image(y, layout))
        y = self._route("ssm", y, layout)
        return self.out_proj(torch.cat([y, z.to(y.dtype)], 1).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.Identity()  # the official qk_norm=qk_scale=None
        self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """``x += γ1·mixer(norm1(x)); x += γ2·mlp(norm2(x))`` on (b·nw, ws², C) window tokens."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float, layer_scale: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        y = self.mixer(self.norm1(x), layout)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class MambaBlock(Block, SSMBlock):
    """A Block whose mixer is a MambaVisionMixer (what ``capture_internals`` and ``ssm_blocks`` see)."""

    internal_names = MAMBAVISION_INTERNALS

    def recording_modules(self):
        return (self, self.mixer)

    def forward(self, x: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        x = super().forward(x, layout)
        if self.recording("out"):
            x = self.mixer._route("out", x.transpose(1, 2), layout).transpose(1, 2)
        return x


class Level(nn.Module):
    """A stage: ConvBlocks (levels 0-1) or windowed mixer/attention Blocks (levels 2-3), then downsampling."""

    def __init__(self, cfg: MambaVisionConfig, i: int, rates: list[float]):
        super().__init__()
        dim, depth = cfg.dims[i], cfg.depths[i]
        self.conv = i < 2
        self.window_size = cfg.window_size[i]
        if self.conv:
            self.blocks = nn.ModuleList([ConvBlock(dim, rates[j], cfg.layer_scale_conv) for j in range(depth)])
        else:
            attention = set(cfg.attention_blocks(depth))
            self.blocks = nn.ModuleList([
                Block(dim, Attention(dim, cfg.num_heads[i], cfg.qkv_bias), cfg.mlp_ratio, rates[j], cfg.layer_scale)
                if j in attention else
                MambaBlock(dim, MambaVisionMixer(dim, cfg.d_state, cfg.d_conv, cfg.expand), cfg.mlp_ratio, rates[j],
                           cfg.layer_scale)
                for j in range(depth)])
        self.downsample = Downsample(dim) if i < len(cfg.depths) - 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            for blk in self.blocks:
                x = blk(x)
        else:
            b, c, h, w = x.shape
            ws = self.window_size
            pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
            if pad_r or pad_b:
                x = F.pad(x, (0, pad_r, 0, pad_b))
            hp, wp = h + pad_b, w + pad_r
            t = x.view(b, c, hp // ws, ws, wp // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)
            for blk in self.blocks:
                t = blk(t, (ws, h, w))
            x = _windows_to_map(t.transpose(1, 2), ws, hp, wp)
            if pad_r or pad_b:
                x = x[:, :, :h, :w].contiguous()
        return x if self.downsample is None else self.downsample(x)


class MambaVision(nn.Module, TimmModelAPI):
    """The MambaVision classifier. ``forward(x)`` takes normalised NCHW images of any size."""

    def __init__(self, cfg: MambaVisionConfig = MambaVisionConfig(), num_classes: int = 1000):
        super().__init__()
        self.cfg = cfg
        self.num_features = cfg.dims[-1]
        self.num_classes = num_classes
        self.pretrained_cfg: dict = {}
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.in_dim, cfg.dim)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.levels = nn.ModuleList([Level(cfg, i, rates[sum(cfg.depths[:i]):sum(cfg.depths[:i + 1])])
                                     for i in range(len(cfg.depths))])
        self.norm = nn.BatchNorm2d(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_scan_backend(self, backend: str) -> None:
        set_scan_backend(self, backend)  # every scan module of the model, the backend's name checked

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's map after the final BatchNorm, (b, C, H/32, W/32)."""
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    # -- timm's model API (models/family.py)
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- registry entries ------------------------------------------------------------------------------
HF = "nvidia/{repo}/{file}"  # Hugging Face Hub repository / file
_HEADS_S, _HEADS_L = (2, 4, 8, 16), (4, 8, 16, 32)

#: name → (official entry point, config, release URL or None, crop_pct, reported ImageNet-1k top-1, timm name)
MAMBAVISION_VARIANTS: dict[str, tuple[str, MambaVisionConfig, str | None, float, float | None, str]] = {
    "mambavision-t": ("mamba_vision_T", MambaVisionConfig((1, 3, 8, 4), _HEADS_S, dim=80, in_dim=32),
                      HF.format(repo="MambaVision-T-1K", file="mambavision_tiny_1k.pth.tar"), 1.0, 82.3,
                      "mambavision_tiny"),
    "mambavision-t2": ("mamba_vision_T2", MambaVisionConfig((1, 3, 11, 4), _HEADS_S, dim=80, in_dim=32),
                       HF.format(repo="MambaVision-T2-1K", file="mambavision_tiny2_1k.pth.tar"), 0.98, 82.7,
                       "mambavision_tiny2"),
    "mambavision-s": ("mamba_vision_S", MambaVisionConfig((3, 3, 7, 5), _HEADS_S, dim=96, in_dim=64),
                      HF.format(repo="MambaVision-S-1K", file="mambavision_small_1k.pth.tar"), 0.93, 83.3,
                      "mambavision_small"),
    "mambavision-b": ("mamba_vision_B", MambaVisionConfig((3, 3, 10, 5), _HEADS_S, dim=128, in_dim=64,
                                                          layer_scale=1e-5, drop_path_rate=0.3),
                      HF.format(repo="MambaVision-B-1K", file="mambavision_base_1k.pth.tar"), 1.0, 84.2,
                      "mambavision_base"),
    "mambavision-l": ("mamba_vision_L", MambaVisionConfig((3, 3, 10, 5), _HEADS_L, dim=196, in_dim=64,
                                                          layer_scale=1e-5, drop_path_rate=0.3),
                      HF.format(repo="MambaVision-L-1K", file="mambavision_large_1k.pth.tar"), 1.0, 85.0,
                      "mambavision_large"),
    "mambavision-l2": ("mamba_vision_L2", MambaVisionConfig((3, 3, 12, 5), _HEADS_L, dim=196, in_dim=64,
                                                            layer_scale=1e-5, drop_path_rate=0.3),
                       HF.format(repo="MambaVision-L2-1K", file="mambavision_large2_1k.pth.tar"), 1.0, 85.3,
                       "mambavision_large2"),
    # small variant for the embedded 64 px data: maps 16, 8, 4, 2; one mixer and one attention block per level
    "mambavision-nano": ("mambavision-nano (mamba-bench)",
                         MambaVisionConfig((1, 1, 2, 2), (1, 1, 2, 4), (8, 8, 4, 2), dim=16, in_dim=8,
                                           drop_path_rate=0.0),
                         None, 1.0, None, "mambavision_nano"),
}


def _builder(name: str, cfg: MambaVisionConfig):
    def build(num_classes: int) -> nn.Module:
        model = MambaVision(cfg, num_classes=num_classes)
        model.pretrained_cfg = pretrained_cfg(get_spec(name), architecture=MAMBAVISION_VARIANTS[name][5],
                                              first_conv="patch_embed.conv_down.0", classifier="head")
        return model

    return build


def _register() -> None:
    for name, (official, cfg, url, crop, top1, timm_name) in MAMBAVISION_VARIANTS.items():
        nano = name.endswith("-nano")
        desc = (f"MambaVision {official.removeprefix('mamba_vision_')}: depths {list(cfg.depths)}, dim {cfg.dim}"
                + (f"; {top1} % ImageNet-1k top-1 (official)" if top1 else "; for 64 px embedded data"))
        if nano:
            desc = f"MambaVision (mamba-bench nano): depths {list(cfg.depths)}, dim {cfg.dim}; for 64 px embedded data"
        register(ModelSpec(name, _builder(name, cfg), desc, "mambavision", num_classes=10 if nano else 1000,
                           input_size=64 if nano else 224, crop_pct=crop, interpolation="bicubic",
                           **hub_fields(url), timm_name=timm_name,
                           diagnose=diagnose_checkpoint))


def infer_config(state: dict[str, torch.Tensor]) -> tuple | None:
    """(depths, dim, in_dim, layer scale?) of a MambaVision state_dict; None if it is not one."""
    try:
        in_dim = int(state["patch_embed.conv_down.0.weight"].shape[0])
        dim = int(state["patch_embed.conv_down.3.weight"].shape[0])
    except (KeyError, IndexError, AttributeError):
        return None
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("levels.")})
    depths = tuple(len({k.split(".")[3] for k in state if k.startswith(f"levels.{i}.blocks.")}) for i in levels)
    return depths, dim, in_dim, any(k.endswith(".gamma_1") for k in state)


def diagnose_checkpoint(state: dict[str, torch.Tensor], wanted: str) -> str | None:
    """A sentence naming the MambaVision config of a non-fitting checkpoint (None: not one, or the right one)."""
    sig = infer_config(state)
    if sig is None:
        return None
    for name, (official, cfg, *_) in MAMBAVISION_VARIANTS.items():
        if (cfg.depths, cfg.dim, cfg.in_dim, cfg.layer_scale is not None) == sig:
            if name == wanted:
                return None
            return f"it looks like a {name} checkpoint ({official}); use --model {name}"
    depths, dim, in_dim, _ = sig
    return f"it is a MambaVision checkpoint of depths {list(depths)}, dim {dim}, which no registry entry has"


_register()

"""Vision Mamba (Vim) in the project's own code, state_dict-compatible with the released checkpoints.

Read from hustvl/Vim (``vim/models_mamba.py``: ``VisionMamba``, ``Block``, the configs
``vim_{tiny,small}_patch16[_stride8]_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``
and ``vim_base_patch16_224_..._with_middle_cls_token_div2``) and its mamba-ssm fork
(``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``: ``Mamba`` with ``bimamba_type="v2"``)::

    patch_embed.proj        conv patch×patch, stride s → D; tokens (b, M, D)
    cls_token, pos_embed    the class token inserted at position M // 2, then + pos_embed (1, M + 1, D)
    layers.i.{norm, mixer}  residual = residual + hidden (fp32); hidden = mixer(RMSNorm(residual))
    norm_f, head            RMSNorm(residual + hidden) → the middle (class) token → linear

The mixer (bidirectional Mamba, "v2"): in_proj (no bias) → x, z; forward branch: causal depthwise
conv1d (d_conv 4, bias) + SiLU → x_proj → (Δ-rank, B, C) → dt_proj → selective scan (Δ-bias +
softplus, A = −exp(A_log), skip D); backward branch: the same on the flipped sequence with its own
conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b; each output gated by SiLU(z) (z flipped for the
backward one), the backward one flipped back, the two added and divided by 2 (``if_divide_out``),
then out_proj (no bias). Both branches run in one selective-scan call (2·D_inner channels, B/C as
two groups) on any of the project's backends; the gate is applied here.

Official behaviour not copied: the fused Triton add+RMSNorm and the CUDA-only kernels (replaced by
the same arithmetic in torch); ``final_pool_type='mean'`` in the config names is never used by the
released configs (with a class token the official forward returns the class token); inputs whose
token grid differs from the config's get their patch position embeddings resampled bicubically
(the official code asserts the training size); rope, random class-token positions and sequence
flipping (training options, off in the releases) are not implemented.

Internals (``capture_internals``): ``in``, ``z`` (b, D_inner, h, w); ``conv``, ``x`` (b, 2·D_inner, h, w:
forward-branch channels, then the backward branch's, both in token order); ``delta``, ``scan``
(b, 2, D_inner, L) and ``B``, ``C`` (b, 2, N, L) in each branch's scan order (L = M + 1, the class
token included); ``ssm`` (forward + backward scan outputs in token order, before the gate,
(b, D_inner, h, w)); ``out`` (the mixer's output, (b, D, h, w)). Map-shaped names leave out the class
token; they are recorded upstream of the rest of the block, so gradients with respect to them are exact.
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

VIM_INTERNALS = frozenset({"in", "z", "conv", "x", "delta", "B", "C", "scan", "ssm", "out"})


@dataclass(frozen=True)
class VimConfig:
    embed_dim: int = 192
    depth: int = 24
    patch_size: int = 16
    stride: int = 16
    img_size: int = 224
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    in_chans: int = 3
    norm_eps: float = 1e-5
    divide_out: bool = True
    drop_path_rate: float = 0.0  # the official training scripts pass --drop-path 0.0 (model default 0.1)

    @property
    def grid(self) -> int:
        return (self.img_size - self.patch_size) // self.stride + 1

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16)


class RMSNorm(nn.Module):
    """x / rms(x) · weight over the last axis, computed in fp32 (mamba-ssm's RMSNorm; no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


#: (class-token position, (h, w) of the patch grid): how a token sequence maps onto the image
Layout = tuple[int, tuple[int, int]]


def _seq_to_map(t: torch.Tensor, layout: Layout | None) -> torch.Tensor:
    """(b, C, L) tokens → (b, C, h, w) without the class token."""
    if layout is None:
        return t[:, :, None, :]
    pos, (h, w) = layout
    return torch.cat([t[..., :pos], t[..., pos + 1:]], -1).reshape(t.shape[0], t.shape[1], h, w)


def _map_to_seq(m: torch.Tensor, t: torch.Tensor, layout: Layout | None) -> torch.Tensor:
    """The map put back into the sequence t, around t's class token."""
    if layout is None:
        return m.reshape(t.shape)
    pos = layout[0]
    flat = m.flatten(2)
    return torch.cat([flat[..., :pos], t[..., pos:pos + 1], flat[..., pos:]], -1)


class BiMamba(nn.Module):
    """Vim's bidirectional Mamba mixer (mamba-ssm fork, ``bimamba_type="v2"``), (b, L, D) → (b, L, D)."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        d, di, n, r, k = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.d_inner, self.d_state, self.dt_rank, self.divide_out = di, n, r, cfg.divide_out
        # registration order as in the official module, so state_dict() lists keys in its order
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, k, groups=di, padding=k - 1)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di)
        self.A_log = nn.Parameter(torch.empty(di, n))
        self.D = nn.Parameter(torch.ones(di))
        self.A_b_log = nn.Parameter(torch.empty(di, n))
        self.conv1d_b = nn.Conv1d(di, di, k, groups=di, padding=k - 1)
        self.x_proj_b = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj_b = nn.Linear(r, di)
        self.D_b = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=False)
        self.scan_backend = "auto"
        self._recorder = None
        self._record_name = ""
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, Δ-bias = softplus⁻¹ of a log-uniform Δ in [dt_min, dt_max]."""
        n, r = self.d_state, self.dt_rank
        a = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
        for dt_proj, a_log, d in ((self.dt_proj, self.A_log, self.D), (self.dt_proj_b, self.A_b_log, self.D_b)):
            nn.init.uniform_(dt_proj.weight, -(r ** -0.5), r ** -0.5)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            a_log.copy_(a)
            d.fill_(1.0)

    def _route(self, name: str, t: torch.Tensor, layout: Layout | None) -> torch.Tensor:
        """Record (b, C, L) tokens as a map and continue from the recorded tensor (exact gradients)."""
        rec = self._recorder
        if rec is None or not rec.wants(name):
            return t
        m = _seq_to_map(t, layout)
        rec.put(self._record_name, name, m)
        return _map_to_seq(m, t, layout)

    def forward(self, h: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        b, length, _ = h.shape
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        rec = self._recorder
        xz = F.linear(h, self.in_proj.weight).transpose(1, 2)                       # (b, 2·di, L)
        x, z = self._route("in", xz[:, :di], layout), self._route("z", xz[:, di:], layout)
        k = self.conv1d.kernel_size[0] - 1  # causal: the official conv pads k - 1 on both sides and keeps the first L
        cf = depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, k, 0)
        cb = depthwise_conv1d(x.flip(-1), self.conv1d_b.weight, self.conv1d_b.bias, k, 0)  # backward scan order
        if rec is not None and (rec.wants("conv") or rec.wants("x")):  # both branches in token order
            c = self._route("conv", torch.cat([cf, cb.flip(-1)], 1), layout)
            u = self._route("x", F.silu(c), layout)
            u = torch.stack([u[:, :di], u[:, di:].flip(-1)], 1)                      # (b, 2, di, L)
        else:
            u = F.silu(torch.stack([cf, cb], 1))
        w = torch.stack([self.x_proj.weight, self.x_proj_b.weight]).to(u.dtype)      # (2, r + 2n, di)
        x_dbl = torch.matmul(w, u)                                                  # (b, 2, r + 2n, L)
        dt_w = torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]).to(u.dtype)
        dts = torch.matmul(dt_w, x_dbl[:, :, :r])                                   # (b, 2, di, L)
        Bs, Cs = x_dbl[:, :, r:r + n].contiguous(), x_dbl[:, :, r + n:].contiguous()  # (b, 2, n, L)
        A = -torch.exp(torch.cat([self.A_log, self.A_b_log]).float())
        D = torch.cat([self.D, self.D_b]).float()
        bias = torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]).float()
        us = u.reshape(b, 2 * di, length)
        if rec is None:
            ys = selective_scan(us, dts.reshape(b, 2 * di, length), A, Bs, Cs, D, delta_bias=bias,
                                delta_softplus=True,
                                backend=self.scan_backend)
        else:  # Δ made explicitly, so the recorded tensor is the one on the graph
            delta = F.softplus(dts.float() + bias.view(1, 2, di, 1))
            rec.put(self._record_name, "delta", delta)
            rec.put(self._record_name, "B", Bs)
            rec.put(self._record_name, "C", Cs)
            ys = selective_scan(us, delta.reshape(b, 2 * di, length), A, Bs, Cs, D, delta_softplus=False,
                                backend=self.scan_backend)
        ys = ys.view(b, 2, di, length)
        if rec is not None:
            rec.put(self._record_name, "scan", ys)
        s = self._route("ssm", ys[:, 0] + ys[:, 1].flip(-1), layout)                # (b, di, L), token order
        y = s * F.silu(z.float()).to(s.dtype)
        if self.divide_out:
            y = y / 2
        return F.linear(y.transpose(1, 2).to(h.dtype), self.out_proj.weight)


class Block(nn.Module, SSMBlock):
    """``residual += hidden`` (fp32), ``hidden = mixer(norm(residual))``; returns (hidden, residual)."""

    internal_names = VIM_INTERNALS

    def __init__(self, cfg: VimConfig, drop_path: float = 0.0):
        super().__init__()
        self.mixer = BiMamba(cfg)
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.drop_path = DropPath(drop_path)

    def recording_modules(self):
        return (self, self.mixer)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None,
                layout: Layout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden.float() if residual is None else residual + self.drop_path(hidden)
        hidden = self.mixer(self.norm(residual).to(hidden.dtype), layout)
        if self.recording("out"):
            hidden = self.mixer._route("out", hidden.transpose(1, 2), layout).transpose(1, 2)
        return hidden, residual


class VisionMamba(nn.Module, TimmModelAPI):
    """Vim classifier: ``forward(x)`` takes normalised NCHW images (the config's size; other sizes
    get resampled position embeddings)."""

    def __init__(self, cfg: VimConfig = VimConfig(), num_classes: int = 1000):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.num_features = self.embed_dim = d
        self.num_classes = num_classes
        self.pretrained_cfg: dict = {}
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid ** 2 + 1, d))
        self.head = nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity()
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        inter = [0.0] + rates  # the official layer i gets rate i - 1 (its first gets none)
        self.layers = nn.ModuleList([Block(cfg, inter[i]) for i in range(cfg.depth)])
        self.drop_path = DropPath(cfg.drop_path_rate)
        self.norm_f = RMSNorm(d, cfg.norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """The official initialisation's distributions (weights only matter for training from scratch)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for blk in self.layers:  # GPT-2's residual rescaling of the out-projections
            nn.init.kaiming_uniform_(blk.mixer.out_proj.weight, a=math.sqrt(5))
            blk.mixer.out_proj.weight /= math.sqrt(self.cfg.depth)

    def set_scan_backend(self, backend: str) -> None:
        set_scan_backend(self, backend)  # every scan module of the model, the backend's name checked

    def _position_embedding(self, h: int, w: int) -> torch.Tensor:
        pe = self.pos_embed
        g = self.cfg.grid
        if (h, w) == (g, g):
            return pe
        mid = g * g // 2  # the class token's slot in pos_embed
        grid = torch.cat([pe[:, :mid], pe[:, mid + 1:]], 1).reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pe.dtype)
        pos = h * w // 2
        return torch.cat([grid[:, :pos], pe[:, mid:mid + 1], grid[:, pos:]], 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm, (b, M + 1, D); the class token sits at M // 2."""
        x, (h, w) = self.patch_embed(x)
        b, m, _ = x.shape
        pos = m // 2
        x = torch.cat([x[:, :pos], self.cls_token.expand(b, -1, -1).to(x.dtype), x[:, pos:]], 1)
        x = x + self._position_embedding(h, w).to(x.dtype)
        layout = (pos, (h, w))
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, layout)
        return self.norm_f(residual + self.drop_path(hidden)).to(x.dtype)

    # -- timm's model API (models/family.py; reset_classifier(0): the class token's features)
    global_pools = ("token",)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, (x.shape[1] - 1) // 2]  # the middle class token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- registry entries ------------------------------------------------------------------------------
HF = "hustvl/{repo}/{file}"  # Hugging Face Hub repository / file

#: name → (official config / release, config, release URL or None, reported ImageNet-1k top-1, timm name)
VIM_VARIANTS: dict[str, tuple[str, VimConfig, str | None, float | None, str]] = {
    "vim-t": ("Vim-tiny (vim_tiny_patch16_224_bimambav2_..._midclstok_div2)", VimConfig(192),
              HF.format(repo="Vim-tiny-midclstok", file="vim_t_midclstok_76p1acc.pth"), 76.1,
              "vim_tiny_patch16_224"),
    "vim-t-plus": ("Vim-tiny+ (vim_tiny_patch16_stride8_224_..., fine-tuned at stride 8)", VimConfig(192, stride=8),
                   HF.format(repo="Vim-tiny-midclstok", file="vim_t_midclstok_ft_78p3acc.pth"), 78.3,
                   "vim_tiny_patch16_stride8_224"),
    "vim-s": ("Vim-small (vim_small_patch16_224_bimambav2_..._midclstok_div2)", VimConfig(384),
              HF.format(repo="Vim-small-midclstok", file="vim_s_midclstok_80p5acc.pth"), 80.5,
              "vim_small_patch16_224"),
    "vim-s-plus": ("Vim-small+ (vim_small_patch16_stride8_224_..., fine-tuned at stride 8)",
                   VimConfig(384, stride=8),
                   HF.format(repo="Vim-small-midclstok", file="vim_s_midclstok_ft_81p6acc.pth"), 81.6,
                   "vim_small_patch16_stride8_224"),
    "vim-b": ("Vim-base (vim_base_patch16_224_bimambav2_..._middle_cls_token_div2)", VimConfig(768),
              HF.format(repo="Vim-base-midclstok", file="vim_b_midclstok_81p9acc.pth"), 81.9,
              "vim_base_patch16_224"),
    # small variant for the embedded 64 px data: the same blocks, ~100k parameters
    "vim-nano": ("vim-nano (mamba-bench)", VimConfig(32, depth=4, patch_size=8, stride=8, img_size=64, d_state=8),
                 None, None, "vim_nano_patch8_64"),
}


def _builder(name: str, cfg: VimConfig):
    def build(num_classes: int) -> nn.Module:
        model = VisionMamba(cfg, num_classes=num_classes)
        model.pretrained_cfg = pretrained_cfg(get_spec(name), architecture=VIM_VARIANTS[name][4],
                                              first_conv="patch_embed.proj", classifier="head")
        return model

    return build


def _register() -> None:
    for name, (official, cfg, url, top1, timm_name) in VIM_VARIANTS.items():
        nano = name.endswith("-nano")
        desc = (f"{official.split(' (')[0]}: dim {cfg.embed_dim}, depth {cfg.depth}, patch {cfg.patch_size}, "
                f"stride {cfg.stride}, d_state {cfg.d_state}" + (f"; {top1} % ImageNet-1k top-1 (official)" if top1
                                                                  else "; for 64 px embedded data"))
        register(ModelSpec(name, _builder(name, cfg), desc, "vim", num_classes=10 if nano else 1000,
                           input_size=cfg.img_size, crop_pct=1.0 if nano else 0.875, interpolation="bicubic",
                           **hub_fields(url), timm_name=timm_name, diagnose=diagnose_checkpoint))


def infer_config(state: dict[str, torch.Tensor]) -> tuple | None:
    """(dim, depth, patch, tokens, d_state, bidirectional v2) of a Vim state_dict; None if it is not one."""
    try:
        w = state["patch_embed.proj.weight"]
        tokens = int(state["pos_embed"].shape[1])
        depth = len({k.split(".")[1] for k in state if k.startswith("layers.") and k.endswith(".mixer.A_log")})
        d_state = int(state["layers.0.mixer.A_log"].shape[1])
    except (KeyError, IndexError, AttributeError):
        return None
    return int(w.shape[0]), depth, int(w.shape[-1]), tokens, d_state, "layers.0.mixer.conv1d_b.weight" in state


def _signature(cfg: VimConfig) -> tuple:
    return cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.grid ** 2 + 1, cfg.d_state, True


def diagnose_checkpoint(state: dict[str, torch.Tensor], wanted: str) -> str | None:
    """A sentence naming the Vim config a non-fitting checkpoint belongs to (None: not Vim, or the right one)."""
    sig = infer_config(state)
    if sig is None:
        return None
    for name, (official, cfg, _, _, _) in VIM_VARIANTS.items():
        if _signature(cfg) == sig:
            if name == wanted:
                return None
            return f"it looks like a {name} checkpoint ({official.split(' (')[0]}); use --model {name}"
    dim, depth, patch, tokens, d_state, v2 = sig
    return (f"it is a Vim checkpoint of dim {dim}, depth {depth}, patch {patch}, {tokens} tokens, d_state {d_state}"
            + ("" if v2 else ", not bidirectional v2") + ", which no registry entry has")


_register()

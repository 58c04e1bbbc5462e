"""VMamba (VSSM) in the project's own code, state_dict-compatible with the official v2 releases.

Layout of the v2 family (forward type ``v05_noz``, downsample v3, patch-embed v2, LayerNorm-2d,
channel-first throughout), read from the official configs and checkpoints of MzeroMiko/VMamba:

    patch_embed.{0: conv 3x3/2 → C/2, 2: LN2d, 4: GELU, 5: conv 3x3/2 → C, 7: LN2d}
    layers.i.blocks.j.{norm, op (SS2D), norm2, mlp.{fc1, fc2}}    x += op(norm(x)); x += mlp(norm2(x))
    layers.i.downsample.{1: conv 3x3/2 → 2C, 3: LN2d}              (not after the last stage)
    classifier.{norm, head}                                         LN2d → global average pool → linear

SS2D (``op``): in_proj (1x1, no bias) → depthwise 3x3 conv (no bias) → SiLU → cross-scan into 4
directions → per direction x_proj to (Δ-rank, B, C) → dt_proj → selective scan with Δ-bias and
softplus, A = −exp(A_logs), skip D → cross-merge (sum of directions) → out_norm (LN2d) → out_proj.
Point-wise linears ("Linear2d") store 2-D weights; the official loader also accepts their 4-D 1x1
conv form, and so does this one (the only layout conversion made at load time).

Any input size works: convolutions with padding shrink odd sizes the way the official code does.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# Recorder, capture_internals, INTERNALS and ssm_blocks are re-exported from here for older imports
from mamba_bench.models.family import TimmModelAPI
from mamba_bench.models.internals import INTERNALS, Recorder, SSMBlock, capture_internals, ssm_blocks  # noqa: F401
from mamba_bench.ops.cross_scan import cross_merge, cross_scan
from mamba_bench.ops.selective_scan import (
    fused_ss2d_available,
    fused_ss2d_triton_available,
    selective_scan,
    set_scan_backend,
    ss2d_scan_cpu,
    ss2d_scan_triton,
)


def cpu_inference(x: torch.Tensor, backend: str = "cpu") -> bool:
    """Whether the channels-last CPU inference path applies: fp32 CPU tensors, no autograd, the
    numba kernels available for the scan backend (``cpu``/``auto``; the default asks only for numba)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and fused_ss2d_available(x.device, backend))


@dataclass(frozen=True)
class VMambaConfig:
    depths: tuple[int, ...] = (2, 2, 8, 2)
    embed_dim: int = 96
    d_state: int = 1
    ssm_ratio: float = 1.0
    dt_rank: int | str = "auto"
    mlp_ratio: float = 4.0
    d_conv: int = 3
    patch_size: int = 4
    in_chans: int = 3
    drop_path_rate: float = 0.0

    @property
    def dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_last(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The same normalisation of a tensor whose last axis is the channels ((b, H, W, C) or rows).
        Contiguous fp32 CPU tensors without autograd (channels-last maps in inference) go through
        the numba kernel, into ``out`` when given (torch's LayerNorm is 2-6x slower on short rows)."""
        if x.is_contiguous() and cpu_inference(x):
            from mamba_bench.ops._numba_norm import layer_norm_last

            return layer_norm_last(x, self, out)
        y = super().forward(x)
        return y if out is None else out.copy_(y)


class Linear2d(nn.Linear):
    """A 1x1 convolution with a Linear's 2-D weight (what the official checkpoints store)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = x.permute(0, 2, 3, 1)
        if nhwc.is_contiguous():  # channels-last memory (LayerNorm2d's output): a plain GEMM, no copies
            return F.linear(nhwc, self.weight, self.bias).permute(0, 3, 1, 2)
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.dim() == 4 and w.shape[2:] == (1, 1):
            state_dict[prefix + "weight"] = w.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


#: what a VMamba block records (see ``mamba_bench.models.internals``; v05_noz has no gate ``z``)
VMAMBA_INTERNALS = frozenset({"in", "x", "conv", "delta", "B", "C", "scan", "ssm", "ssm_norm", "out"})


class SS2D(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float, dt_rank: int | str = "auto", d_conv: int = 3):
        super().__init__()
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        k = 4
        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self.scan_backend = "auto"
        self.token_transform = None  # set by a DG algorithm (START) for training only
        self._recorder: Recorder | None = None
        self._record_name = ""
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: S4D-real A, Δ-bias = softplus⁻¹ of a log-uniform Δ in [dt_min, dt_max]."""
        d, n, r = self.d_inner, self.d_state, self.dt_rank
        nn.init.uniform_(self.x_proj_weight, -(d ** -0.5), d ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -(r ** -0.5), r ** -0.5)
        dt = torch.exp(torch.rand(4, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(4 * d, 1))
        self.Ds.fill_(1.0)

    def project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The in-projection: the SSM branch's input and the gate (None: v05_noz has no gate z)."""
        return self.in_proj(x), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec = self._recorder
        x, z = self.project_in(x)
        if rec is not None:
            rec.put(self._record_name, "in", x)
            if z is not None:
                rec.put(self._record_name, "z", z)
        if z is not None:
            z = self.act(z)
        x = self.conv2d(x)
        if rec is not None:
            rec.put(self._record_name, "conv", x)
        x = self.act(x)
        if self.token_transform is not None and self.training:  # a DG algorithm's training-time perturbation
            x = self.token_transform(self, x)
        if rec is not None:
            rec.put(self._record_name, "x", x)
        elif not torch.is_grad_enabled() and fused_ss2d_triton_available(x.device, self.scan_backend):
            return self._forward_triton_inference(x, z)
        b, d, h, w = x.shape
        k, length = 4, h * w
        xs = cross_scan(x)                                                     # (b, 4, d, L)
        dts, Bs, Cs = self.project(xs)
        dts = dts.reshape(b, k * d, length)
        As = -torch.exp(self.A_logs.float())
        delta_bias = self.dt_projs_bias.reshape(-1).float()
        u = xs.reshape(b, k * d, length)
        if rec is None:  # Δ-bias and softplus fused into the scan
            ys = selective_scan(u, dts, As, Bs.contiguous(), Cs.contiguous(), self.Ds.float(), delta_bias=delta_bias,
                                delta_softplus=True, backend=self.scan_backend)
        else:  # Δ made explicitly, so the recorded tensor is the one on the graph
            delta = F.softplus(dts.float() + delta_bias[None, :, None]).view(b, k, d, length)
            rec.put(self._record_name, "delta", delta)  # recorded upstream of the scan: gradients reach it
            rec.put(self._record_name, "B", Bs)
            rec.put(self._record_name, "C", Cs)
            ys = selective_scan(u, delta.reshape(b, k * d, length), As, Bs.contiguous(), Cs.contiguous(),
                                self.Ds.float(), delta_softplus=False, backend=self.scan_backend)
        ys = ys.float().view(b, k, d, length)
        if rec is not None:
            rec.put(self._record_name, "scan", ys)
        y = cross_merge(ys, h, w).view(b, d, h, w)
        if rec is not None:
            rec.put(self._record_name, "ssm", y)
        y = self.out_norm(y).to(x.dtype)
        if rec is not None:
            rec.put(self._record_name, "ssm_norm", y)
        return self.out_proj(y if z is None else y * z)

    def _forward_triton_inference(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The rest of ``forward`` from the activated map x (b, d, H, W) on, without autograd, through the
        fused Triton SS2D kernel (CUDA; the counterpart of the CPU path's ``ss2d_scan_cpu``): every
        direction's x_proj in one GEMM on the channels-last map, then dt_proj, softplus, the four scans
        and the merge in the kernel, with no cross-scanned copy, flip or Δ materialised."""
        t = x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last memory (the GPU benches' layout)
        b, h, w, d = t.shape
        k, c, _ = self.x_proj_weight.shape
        xdbl = F.linear(t, self.x_proj_weight.to(t.dtype).reshape(k * c, d)).view(b, h, w, k, c)
        y = ss2d_scan_triton(t, xdbl, self.dt_projs_weight, self.dt_projs_bias, -torch.exp(self.A_logs.float()),
                             self.Ds)                                                    # (b, H, W, d) fp32
        y = self.out_norm(y.permute(0, 3, 1, 2)).to(x.dtype)  # module calls, as in forward: hooks see them
        return self.out_proj(y if z is None else y * z)


    def project(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-direction projections of the scanned sequences xs (b, 4, d, L): Δ before its bias and
        softplus (b, 4, d, L), B and C (b, 4, N, L). Batched matrix products (a grouped conv1d is ~5x
        slower on CPU)."""
        x_dbl = torch.matmul(self.x_proj_weight.to(xs.dtype), xs)              # (b, 4, r + 2n, L)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        return torch.matmul(self.dt_projs_weight.to(xs.dtype), dts), Bs, Cs


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class VSSBlock(nn.Module, SSMBlock):
    """``x += op(norm(x)); x += mlp(norm2(x))``. Internals (``capture_internals``): ``in``, ``conv``, ``x``
    (b, D, H, W); ``delta``, ``scan`` (b, 4, D, H·W) and ``B``, ``C`` (b, 4, N, H·W) in each of the four
    scan orders; ``ssm`` (the directions merged back onto the map, before the out-norm); ``out``."""

    internal_names = VMAMBA_INTERNALS

    def __init__(self, dim: int, cfg: VMambaConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, cfg.d_state, cfg.ssm_ratio, cfg.dt_rank, cfg.d_conv)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self._recorder: Recorder | None = None
        self._record_name = ""
        self._residual_in_place = False  # set by VMamba.forward_features while it owns the residual stream

    def recording_modules(self):
        return (self, self.op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training and self._recorder is None and self.op._recorder is None
                and cpu_inference(x, self.op.scan_backend) and not _hooked(self, itself=False)):
            return self._forward_cpu_inference(x, self._residual_in_place)
        x = x + self.drop_path(self.op(self.norm(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self._recorder is not None:
            self._recorder.put(self._record_name, "out", x)
        return x

    def _forward_cpu_inference(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """The same block on CPU without autograd (VMamba-T's CPU throughput: README, "bench models"),
        channels-last throughout: LayerNorm (numba) → in-projection → depthwise conv + SiLU → every
        direction's x_proj in one GEMM → the fused SS2D kernel (no Δ, flips or transposes
        materialised) → out-norm (numba, in place); then, in row tiles whose intermediates stay in
        cache, out-projection + residual → LayerNorm → MLP + residual, into the block's output.
        The numba calls are grouped: each switch between torch's and numba's thread pools costs
        time (the idle pool's threads spin for a while). ``in_place``: the residual stream x is the
        caller's to overwrite, and the output is written over it (no copy, no fresh map). Returns
        an NCHW view of channels-last memory (what the next block and the convs take)."""
        op, mlp = self.op, self.mlp
        t = x.permute(0, 2, 3, 1)
        if not t.is_contiguous():
            t = t.contiguous()
        b, h, w, c = t.shape
        rows = t.reshape(b * h * w, c)
        u = torch.mm(self.norm.forward_last(rows), op.in_proj.weight.t())
        u = F.silu(op.conv2d(u.view(b, h, w, -1).permute(0, 3, 1, 2)), inplace=True)  # channels-last in and out
        y = ss2d_scan_cpu(u.permute(0, 2, 3, 1), op.x_proj_weight, op.dt_projs_weight, op.dt_projs_bias,
                          -torch.exp(op.A_logs.float()), op.Ds).view(rows.shape[0], -1)
        y = op.out_norm.forward_last(y, out=y)
        tiles = _row_tiles(rows.shape[0], mlp.fc1.out_features)
        hidden = rows.new_empty(tiles[0][1], mlp.fc1.out_features)  # reused: fresh pages fault
        out = rows if in_place else torch.empty_like(rows)  # each tile reads its residual rows before writing them
        norm2 = self.norm2
        for s, e in tiles:
            o = out[s:e]
            torch.addmm(rows[s:e], y[s:e], op.out_proj.weight.t(), out=o)
            ln = F.layer_norm(o, norm2.normalized_shape, norm2.weight, norm2.bias, norm2.eps)  # torch's: no switch
            hid = torch.ops.aten.gelu_(torch.addmm(mlp.fc1.bias, ln, mlp.fc1.weight.t(), out=hidden[:e - s]))
            o.addmm_(hid, mlp.fc2.weight.t())
            o += mlp.fc2.bias
        return out.view(b, h, w, c).permute(0, 3, 1, 2)


MLP_TILE_FLOATS = 1 << 20  # hidden activations per row tile in CPU inference (4 MB) ...
MLP_TILE_MIN_ROWS = 1024   # ... but no fewer rows: GEMMs of 200-500 rows ran 10-20 % below peak (README)


def _row_tiles(n: int, hidden: int) -> list[tuple[int, int]]:
    """Equal row ranges covering n rows, each with at most MLP_TILE_FLOATS hidden activations unless
    that would leave fewer than MLP_TILE_MIN_ROWS rows per tile."""
    tiles = max(1, min(-(-n * hidden // MLP_TILE_FLOATS), n // MLP_TILE_MIN_ROWS))
    size = -(-n // tiles)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _hooked(module: nn.Module, itself: bool = True) -> bool:
    """Whether a forward (pre-)hook would see a tensor inside ``module``: on it (unless ``itself`` is
    False), on any submodule, or for every module (``register_module_forward_hook``). The CPU
    inference paths skip submodule calls and overwrite tensors in place, so they stand aside then."""
    import torch.nn.modules.module as mm

    if getattr(mm, "_global_forward_hooks", None) or getattr(mm, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules() if itself or m is not module)


def _norm_in_place(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` written over x, a fresh channels-last NCHW map (no autograd); out of place otherwise."""
    t = x.permute(0, 2, 3, 1)
    if not t.is_contiguous():
        return norm(x)
    norm.forward_last(t, out=t)
    return x


def _downsample(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1), nn.Identity(),
                         LayerNorm2d(out_dim))


class VMamba(nn.Module, TimmModelAPI):
    """The VSSM classifier (v2 family). ``forward(x)`` takes normalised NCHW images."""

    def __init__(self, cfg: VMambaConfig = VMambaConfig(), num_classes: int = 1000):
        super().__init__()
        self.cfg = cfg
        dims = cfg.dims
        self.patch_embed = self.make_stem(cfg)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            blocks = nn.Sequential(*[self.make_block(dims[i], cfg, rates[start + j]) for j in range(depth)])
            down = self.make_downsample(dims[i], dims[i + 1]) if i < len(cfg.depths) - 1 else nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.num_features = dims[-1]
        self.num_classes = num_classes
        self.pretrained_cfg: dict = {}  # timm's fields; filled by the timm entry points (models/timm_interop.py)
        self.classifier = nn.Sequential(OrderedDict(
            norm=LayerNorm2d(self.num_features), permute=nn.Identity(), avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1), head=nn.Linear(self.num_features, num_classes)))
        self.apply(self._init_weights)

    # the parts a VMamba version differs in (v0: models/vmamba_v0.py)
    @staticmethod
    def make_stem(cfg: VMambaConfig) -> nn.Sequential:
        """Patch-embed v2: two 3x3/2 convs, LayerNorm-2d after each, GELU between."""
        c0, stride = cfg.dims[0], cfg.patch_size // 2
        return nn.Sequential(
            nn.Conv2d(cfg.in_chans, c0 // 2, stride + 1, stride=stride, padding=1), nn.Identity(),
            LayerNorm2d(c0 // 2), nn.Identity(), nn.GELU(),
            nn.Conv2d(c0 // 2, c0, stride + 1, stride=stride, padding=1), nn.Identity(), LayerNorm2d(c0),
        )

    @staticmethod
    def make_block(dim: int, cfg: VMambaConfig, drop_path: float) -> nn.Module:
        return VSSBlock(dim, cfg, drop_path)

    @staticmethod
    def make_downsample(dim: int, out_dim: int) -> nn.Module:
        return _downsample(dim, out_dim)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_scan_backend(self, backend: str) -> None:
        set_scan_backend(self, backend)  # every scan module of the model, the backend's name checked

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inference without hooks (a hook could keep a tensor that is then overwritten, or be
        # skipped): the stem's output and every downsampling's are fresh tensors of this call, so the
        # stem normalises in place and the blocks update the residual stream in place
        owned = cpu_inference(x) and not _hooked(self)
        x = self._stem_cpu_inference(x) if owned else self.patch_embed(x)
        blocks = [m for m in self.modules() if isinstance(m, VSSBlock)] if owned else []
        try:
            for m in blocks:
                m._residual_in_place = True
            for layer in self.layers:
                x = layer(x)
        finally:
            for m in blocks:
                m._residual_in_place = False
        return x

    def _stem_cpu_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``patch_embed`` with its LayerNorms and GELU in place on the convolutions' channels-last
        outputs: at 224 px the first conv's output is 19 MB per 8 images, and every fresh tensor of
        that size costs its page faults."""
        pe = self.patch_embed
        x = _norm_in_place(pe[2], pe[0](x))
        return _norm_in_place(pe[7], pe[5](torch.ops.aten.gelu_(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            x = x.contiguous(memory_format=torch.channels_last)  # CPU convs are 1.1-8x faster on it
        return self.classifier(self.forward_features(x))

    # -- timm's model API (models/family.py; forward_features above: the last stage's map, before the
    # classifier's norm)
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        c = self.classifier
        return c.flatten(c.avgpool(c.norm(x)))

    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def set_classifier(self, head: nn.Module) -> None:
        self.classifier.head = head


# -- registry entries -----------------------------------------------------------------------------
RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"

# name → (official config name, config, release URL or None, reported ImageNet-1k top-1)
VMAMBA_VARIANTS: dict[str, tuple[str, VMambaConfig, str | None, float | None]] = {
    "vmamba-t": ("vssm1_tiny_0230s", VMambaConfig((2, 2, 8, 2), 96, 1, 1.0),
                 RELEASES + "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth", 82.6),
    "vmamba-t-s2l5": ("vssm_tiny_0230", VMambaConfig((2, 2, 5, 2), 96, 1, 2.0),
                      RELEASES + "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth", 82.5),
    "vmamba-s": ("vssm_small_0229", VMambaConfig((2, 2, 15, 2), 96, 1, 2.0),
                 RELEASES + "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth", 83.6),
    "vmamba-b": ("vssm_base_0229", VMambaConfig((2, 2, 15, 2), 128, 1, 2.0),
                 RELEASES + "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth", 83.9),
    "vmamba-s-s1l20": ("vssm1_small_0229s", VMambaConfig((2, 2, 20, 2), 96, 1, 1.0),
                       RELEASES + "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth", 83.3),
    "vmamba-b-s1l20": ("vssm1_base_0229s", VMambaConfig((2, 2, 20, 2), 128, 1, 1.0),
                       RELEASES + "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth", 83.8),
    # small variant for the embedded 64 px data: same blocks, a few hundred k parameters
    "vmamba-nano": ("vmamba-nano (mamba-bench)", VMambaConfig((1, 1, 2, 1), 32, 1, 1.0), None, None),
}


def read_config(state: dict[str, torch.Tensor], *, embed_key: str = "patch_embed.5.weight", gated: bool = False,
                mlp_ratio: float = 4.0) -> VMambaConfig | None:
    """The config a VMamba state_dict was saved from (None if it has not the keys to tell): the stem's last
    conv ``embed_key`` gives the width, the in-projection (twice D wide when ``gated``, as v0's) the
    ssm_ratio, ``A_logs`` d_state, the block keys the depths."""
    try:
        embed = int(state[embed_key].shape[0])
        stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
        depths = tuple(len({int(k.split(".")[3]) for k in state if k.startswith(f"layers.{i}.blocks.")})
                       for i in stages)
        d_inner = int(state["layers.0.blocks.0.op.in_proj.weight"].shape[0]) // (2 if gated else 1)
        d_state = int(state["layers.0.blocks.0.op.A_logs"].shape[1])
    except (KeyError, IndexError, ValueError):
        return None
    return VMambaConfig(depths, embed, d_state, d_inner / embed, mlp_ratio=mlp_ratio)


def infer_config(state: dict[str, torch.Tensor]) -> VMambaConfig | None:
    """The v2 config a state_dict was saved from (None if it is not a v2 VMamba state_dict)."""
    return read_config(state)


def name_variant(cfg: VMambaConfig, variants: dict, wanted: str, what: str) -> str | None:
    """The entry of ``variants`` with ``cfg``'s architecture, as a hint (None when it is ``wanted``: the
    keys or shapes that differ say more); that none has it, otherwise."""
    for name, (official, known, _, _) in variants.items():
        if (known.depths, known.embed_dim, known.d_state, known.ssm_ratio) == (
                cfg.depths, cfg.embed_dim, cfg.d_state, cfg.ssm_ratio):
            return None if name == wanted else f"it looks like a {name} checkpoint ({official}); use --model {name}"
    return (f"it is a {what} checkpoint of depths {list(cfg.depths)}, dim {cfg.embed_dim}, "
            f"ssm_ratio {cfg.ssm_ratio:g}, d_state {cfg.d_state}, which no registry entry has")


def diagnose_checkpoint(state: dict[str, torch.Tensor], wanted: str) -> str | None:
    """A sentence saying which VMamba config a non-fitting checkpoint belongs to, if one can tell."""
    cfg = infer_config(state)  # (a v0 checkpoint is named by models/vmamba_v0.py)
    return None if cfg is None else name_variant(cfg, VMAMBA_VARIANTS, wanted, "VMamba")


def register_variants(variants: dict, cls: type[VMamba], label: str, diagnose, note: str = "") -> None:
    """One registry entry per ``variants`` row (name → official name, config, release URL, top-1), built
    as ``cls``; ``label`` and ``note`` frame the description."""
    from mamba_bench.models.registry import ModelSpec, register

    for name, (official, cfg, url, top1) in variants.items():
        nano = "-nano" in name

        def build(num_classes: int, cfg: VMambaConfig = cfg) -> nn.Module:
            return cls(cfg, num_classes=num_classes)

        desc = (f"{label} {official}: depths {list(cfg.depths)}, dim {cfg.embed_dim}, ssm_ratio {cfg.ssm_ratio:g}, "
                f"d_state {cfg.d_state}{note}" + (f"; {top1} % ImageNet-1k top-1 (official)" if top1 else "")
                + ("; for 64 px embedded data" if nano else "") + ("" if url or nano else "; no public release"))
        register(ModelSpec(name, build, desc, "vmamba", num_classes=10 if nano else 1000,
                           input_size=64 if nano else 224, crop_pct=1.0 if nano else 0.875, weights_url=url,
                           weights_file=url.rsplit("/", 1)[-1] if url else None, diagnose=diagnose))


register_variants(VMAMBA_VARIANTS, VMamba, "VMamba", diagnose_checkpoint)

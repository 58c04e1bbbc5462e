"""DG algorithms as training-time feature perturbations (a registry): ERM, START-M, START-X, MixStyle, DSU.

All of them change training only: ``attach(model, hparams)`` installs the perturbation and returns
a handle whose ``remove()`` takes it away; the perturbations act only while ``model.training``,
and a saved checkpoint is a plain model (zero cost at inference, loadable by ``corrupt``/``predict``).

**START** (Guo et al., NeurIPS 2024, "Saliency-driven Token-AwaRe Transformation"). The official
code is not public; what follows is our reading of the poster, each choice a hyper-parameter:

* *where*: the SSM input x of SS2D (after the depthwise conv and SiLU, before Δ, B, C are
  projected from it) in every block of the stages ``start_stages`` (default the first three: style
  lives in shallow and middle features, MixStyle's reasoning; the last stage is left alone);
* *saliency of token i*: START-M uses the input-dependent matrices,
  ``S_C(x_i) · softmax(S_Δ(x_i)) · S_B(x_i) · x_i`` read as: for each direction and channel, the
  token's self-contribution ⟨C_i, B_i⟩ times softmax(Δ), times x_i; its absolute value is averaged
  over channels and the four scan directions (mapped back to pixel positions). The poster leaves the
  softmax's axis open: ``start_softmax="tokens"`` (default) normalises each channel's Δ over the
  tokens of the sequence, so that the weight says how much the scan dwells on token i relative to
  the others (the reading in which a saliency compares tokens, and the one our earlier results
  used); ``start_softmax="channels"`` normalises token i's own Δ vector over its channels, the
  literal reading of softmax(S_Δ(x_i)) as a function of one token. START-X uses the token itself,
  the mean |x_i| over channels (no softmax);
* *which tokens*: per sample, the ``start_ratio`` (default 0.5) most salient tokens are selected.
  ``start_tokens="salient"`` (default) perturbs them, as the paper's text, abstract and rationale
  say (domain-specific features accumulate in the tokens the input-dependent matrices focus on, so
  those are the ones to perturb); ``start_tokens="non-salient"`` follows the poster's formula
  ``x_aug = M_S ⊙ x + (1 − M_S) ⊙ x̃`` literally, with M_S the selection mask: the selected tokens are
  kept and the others perturbed (with ratio 0.5 the two readings perturb complementary halves);
* *how*: their style statistics are mixed with another sample's of the batch, MixStyle-like:
  per-channel mean/std over the tokens (detached), λ ~ Beta(α, α) with α = 0.1,
  x̃ = (x − μ)/σ · σ_mix + μ_mix with μ_mix = λμ + (1 − λ)μ', σ_mix likewise; x̃ replaces x at the
  salient tokens only, the rest are left alone;
* *how often*: with probability ``start_p`` (default 0.5) per block and step.

**MixStyle** (Zhou et al., ICLR 2021): the same mixing on whole feature maps, after each of the
stages ``mix_stages`` (default the first three), p = 0.5, α = 0.1, random shuffle of the batch.
**DSU** (Li et al., ICLR 2022), as the official code (lixiaotong97/DSU, ``dsu.py`` and
``multi-domain-generalization/dassl/modeling/backbone/uresnet.py``) runs it: per channel, the
spatial mean μ and std σ = sqrt(var + 1e-6) (unbiased var) — *not detached*, so gradients flow
through them — are resampled as μ + ε·sqrt(var_batch(μ) + 1e-6) and σ + ε'·sqrt(var_batch(σ) + 1e-6)
(unbiased variance over the batch, ε, ε' ~ N(0, 1)), and x is re-normalised with them; p = 0.5
independently at each of six positions. In ResNet those are: after ``conv1`` (before ``bn1``),
after the stem's max-pool, and after ``layer1`` … ``layer4``. On a VMamba (``dsu_positions``
indices): 0 after the stem's first conv ``patch_embed.0`` (before its LayerNorm), 1 after the
stem ``patch_embed``, 2-5 after the blocks of stages 0-3 (before each downsampling; the last one
feeds the classifier's norm and pooling); on a ConvNeXt: after ``stem.0``, after ``stem``, after
``stages.0``-``stages.3``. A position whose map is a single pixel (vmamba-nano's last stage at
32 px) has no spatial std and is left alone (the official code would return NaN there).
``dsu-ours`` keeps this project's earlier variant: detached statistics, after the blocks of
stages 0-2 only (``mix_stages``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.errors import MambaBenchError, UnknownNameError

EPS = 1e-6


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    attach: Callable[[nn.Module, dict], Handle] = field(repr=False)
    defaults: dict = field(default_factory=dict)


class Handle:
    def __init__(self, undo: list[Callable[[], None]] | None = None) -> None:
        self._undo = undo or []

    def remove(self) -> None:
        for f in self._undo:
            f()
        self._undo = []


def _style_stats(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(dims, keepdim=True)
    sig = (x.var(dims, keepdim=True) + EPS).sqrt()
    return mu.detach(), sig.detach()


def mix_style(x: torch.Tensor, alpha: float, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """MixStyle's transformation of the whole tensor: stats over ``dims`` mixed with a shuffled sample's."""
    b = x.shape[0]
    mu, sig = _style_stats(x, dims)
    lam = torch.distributions.Beta(alpha, alpha).sample((b,) + (1,) * (x.dim() - 1)).to(x.device, x.dtype)
    perm = torch.randperm(b, device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


def dsu_official(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """DSU's ``DistributionUncertainty.forward`` (training branch): statistics on the autograd graph."""
    mean = x.mean((2, 3), keepdim=True)
    std = (x.var((2, 3), keepdim=True) + eps).sqrt()
    sqrtvar_mu = (mean.var(0, keepdim=True) + eps).sqrt()
    sqrtvar_std = (std.var(0, keepdim=True) + eps).sqrt()
    beta = mean + torch.randn_like(std) * sqrtvar_mu
    gamma = std + torch.randn_like(std) * sqrtvar_std
    return (x - mean) / std * gamma + beta


def dsu(x: torch.Tensor, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """``dsu-ours``: mean and std (detached) resampled with the batch's uncertainty of each (per channel)."""
    mu, sig = _style_stats(x, dims)
    sd_mu = (mu.var(0, keepdim=True) + EPS).sqrt()
    sd_sig = (sig.var(0, keepdim=True) + EPS).sqrt()
    new_mu = mu + torch.randn_like(mu) * sd_mu
    new_sig = sig + torch.randn_like(sig) * sd_sig
    return (x - mu) / sig * new_sig + new_mu


# -- where the perturbations go ------------------------------------------------------------------------
def _stage_modules(model: nn.Module, algorithm: str) -> list[nn.Module]:
    """The modules whose outputs are each stage's feature maps (NCHW)."""
    from mamba_bench.models.vmamba import VMamba

    if isinstance(model, VMamba):
        return [layer.blocks for layer in model.layers]
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential | nn.ModuleList) and type(model).__name__ == "ConvNeXt":
        return list(stages)
    raise MambaBenchError(f"{algorithm} is implemented for VMamba and ConvNeXt models, not {type(model).__name__}")


def _dsu_positions(model: nn.Module) -> list[nn.Module]:
    """DSU's six official positions mapped onto the model (see the module docstring)."""
    from mamba_bench.models.vmamba import VMamba

    if isinstance(model, VMamba):
        return [model.patch_embed[0], model.patch_embed, *[layer.blocks for layer in model.layers]]
    stem = getattr(model, "stem", None)
    if isinstance(stem, nn.Sequential) and type(model).__name__ == "ConvNeXt":
        return [stem[0], stem, *list(model.stages)]
    raise MambaBenchError(f"dsu is implemented for VMamba and ConvNeXt models, not {type(model).__name__}")


def _attach_dsu(model: nn.Module, hp: dict) -> Handle:
    modules = _dsu_positions(model)
    positions = tuple(hp["dsu_positions"])
    bad = [s for s in positions if not 0 <= s < len(modules)]
    if bad:
        raise MambaBenchError(f"dsu: position(s) {bad} do not exist (the model has positions 0-{len(modules) - 1})")
    p = float(hp["p"])

    def hook(module, inputs, output):
        # a 1x1 map has no spatial std (the official code would turn it into NaN): left alone
        if module.training and torch.rand(()) < p and output.shape[2] * output.shape[3] > 1:
            return dsu_official(output)
        return None

    return Handle([modules[i].register_forward_hook(hook).remove for i in positions])


def _check_stages(stages: tuple[int, ...], n: int, algorithm: str) -> None:
    bad = [s for s in stages if not 0 <= s < n]
    if bad:
        raise MambaBenchError(f"{algorithm}: stage(s) {bad} do not exist (the model has stages 0-{n - 1})")


def _attach_feature_hooks(fn: Callable[[torch.Tensor], torch.Tensor], key: str, name: str):
    def attach(model: nn.Module, hp: dict) -> Handle:
        modules = _stage_modules(model, name)
        stages = tuple(hp[key])
        _check_stages(stages, len(modules), name)
        p = float(hp["p"])

        def hook(module, inputs, output):
            if module.training and torch.rand(()) < p:
                return fn(output, hp)
            return None

        handles = [modules[s].register_forward_hook(hook) for s in stages]
        return Handle([h.remove for h in handles])

    return attach


def _attach_erm(model: nn.Module, hp: dict) -> Handle:
    return Handle()


# -- START ---------------------------------------------------------------------------------------------
START_SOFTMAX = ("tokens", "channels")
START_TOKENS = ("salient", "non-salient")


def start_saliency(op, x: torch.Tensor, variant: str, softmax: str = "tokens") -> torch.Tensor:
    """Token saliency (B, H·W) for the SSM input x (B, D, H, W) of the SS2D module ``op``; ``softmax``:
    the axis of softmax(Δ) for START-M (``tokens`` or ``channels``, see the module docstring)."""
    from mamba_bench.ops.cross_scan import cross_merge, cross_scan

    b, d, h, w = x.shape
    if variant == "x":
        return x.abs().mean(1).reshape(b, h * w)
    with torch.no_grad():
        xs = cross_scan(x)                                                       # (b, 4, d, L)
        dts, Bs, Cs = op.project(xs)
        delta = F.softplus(dts.float() + op.dt_projs_bias.float()[None, :, :, None])   # (b, 4, d, L)
        cb = (Cs.float() * Bs.float()).sum(2, keepdim=True)                      # ⟨C_i, B_i⟩, (b, 4, 1, L)
        weight = torch.softmax(delta, dim=-1 if softmax == "tokens" else 2)      # over L or over d
        s = (cb * weight * xs.float()).abs().mean(2, keepdim=True)               # (b, 4, 1, L)
        return cross_merge(s, h, w).reshape(b, h * w)


def start_transform(op, x: torch.Tensor, variant: str, ratio: float, alpha: float, tokens: str = "salient",
                    softmax: str = "tokens") -> torch.Tensor:
    """x with the style of the selected tokens (the ``ratio`` most salient ones, or all the others for
    ``tokens="non-salient"``) replaced by MixStyle-mixed statistics; the rest left bit-identical."""
    b, d, h, w = x.shape
    sal = start_saliency(op, x, variant, softmax)
    k = max(1, round(ratio * h * w))
    top = sal.topk(k, dim=1).indices
    mask = torch.zeros(b, h * w, device=x.device, dtype=x.dtype).scatter_(1, top, 1.0).view(b, 1, h, w)
    if tokens == "non-salient":
        mask = 1 - mask
    return torch.where(mask.bool(), mix_style(x, alpha), x)


def _attach_start(variant: str):
    def attach(model: nn.Module, hp: dict) -> Handle:
        from mamba_bench.models.vmamba import VMamba

        name = f"start-{variant}"
        if not isinstance(model, VMamba):
            raise MambaBenchError(f"{name} needs a Mamba model with SS2D blocks (VMamba); "
                                  f"{type(model).__name__} has none")
        stages = tuple(hp["start_stages"])
        _check_stages(stages, len(model.layers), name)
        ratio, p, alpha = float(hp["start_ratio"]), float(hp["start_p"]), float(hp["alpha"])
        tokens, softmax = hp["start_tokens"], hp["start_softmax"]
        if not 0 < ratio <= 1:
            raise MambaBenchError(f"{name}: start_ratio must be in (0, 1], not {ratio}")
        if tokens not in START_TOKENS:
            raise MambaBenchError(f"{name}: start_tokens must be one of {', '.join(START_TOKENS)}, not {tokens!r}")
        if softmax not in START_SOFTMAX:
            raise MambaBenchError(f"{name}: start_softmax must be one of {', '.join(START_SOFTMAX)}, not {softmax!r}")

        def transform(op, x):
            if torch.rand(()) >= p:
                return x
            return start_transform(op, x, variant, ratio, alpha, tokens, softmax)

        ops = [blk.op for s in stages for blk in model.layers[s].blocks]
        for op in ops:
            op.token_transform = transform

        def undo():
            for op in ops:
                op.token_transform = None

        return Handle([undo])

    return attach


_ALGORITHMS: dict[str, Algorithm] = {}


def _register(a: Algorithm) -> None:
    _ALGORITHMS[a.name] = a


_register(Algorithm("erm", "empirical risk minimisation: plain training on the pooled source domains", _attach_erm))
_START = {"start_stages": (0, 1, 2), "start_ratio": 0.5, "start_p": 0.5, "alpha": 0.1, "start_tokens": "salient",
          "start_softmax": "tokens"}
_register(Algorithm("start-m", "START with saliency from the input-dependent matrices Δ, B, C (token-aware)",
                    _attach_start("m"), dict(_START)))
_register(Algorithm("start-x", "START with saliency from the input tokens themselves",
                    _attach_start("x"), dict(_START)))
_register(Algorithm("mixstyle", "MixStyle: feature statistics mixed between samples after stages 1-3",
                    _attach_feature_hooks(lambda t, hp: mix_style(t, float(hp["alpha"])), "mix_stages", "mixstyle"),
                    {"mix_stages": (0, 1, 2), "p": 0.5, "alpha": 0.1}))
_register(Algorithm("dsu", "DSU as its official code: statistics resampled with their batch uncertainty, not "
                           "detached, at the 6 official positions (stem conv, stem, stages 1-4)",
                    _attach_dsu, {"dsu_positions": (0, 1, 2, 3, 4, 5), "p": 0.5}))
_register(Algorithm("dsu-ours", "DSU, our earlier variant: detached statistics, after stages 1-3",
                    _attach_feature_hooks(lambda t, hp: dsu(t), "mix_stages", "dsu-ours"),
                    {"mix_stages": (0, 1, 2), "p": 0.5}))

ALGORITHMS = tuple(_ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    if name not in _ALGORITHMS:
        raise UnknownNameError(f"unknown DG algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")
    return _ALGORITHMS[name]

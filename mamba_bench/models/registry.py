"""One registry of model names → factories, each entry carrying its own preprocessing and weights.

Like timm's ``default_cfgs``: a name resolves to a :class:`ModelSpec` that knows how to build the
network, which normalisation and input size it expects, and where its released weights live. The
short aliases (``swin-b``, ``convnext-b``, ...) pin the ImageNet-1k-only weight tags, so that models
are compared on equal training data (timm's defaults for some names are ImageNet-22k fine-tunes).
Any other timm model name works too. VMamba, START and U-Mamba register here as they land.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch.nn as nn

from mamba_bench.errors import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_TIMM = "https://huggingface.co/{hub_id}/resolve/main/model.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and feed it: factory, preprocessing, weights."""

    name: str
    builder: Callable[[int], nn.Module] = field(repr=False, compare=False)
    description: str
    family: str
    num_classes: int = 1000
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    #: "crop": shorter side to input_size / crop_pct, then a center crop (ImageNet eval);
    #: "stretch": the whole image squeezed to input_size squared (what dg-train trains on)
    resize_mode: str = "crop"
    weights_url: str | None = None
    weights_file: str | None = None
    timm_name: str | None = None
    #: ``diagnose(state_dict, wanted_name) -> str | None``: a sentence naming the config of a checkpoint
    #: of this family that does not fit ``wanted_name`` (None: not this family's, or the right config)
    diagnose: Callable[[dict, str], str | None] | None = field(default=None, repr=False, compare=False)

    def build(self, num_classes: int | None = None) -> nn.Module:
        return self.builder(self.num_classes if num_classes is None else num_classes)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def registered_models() -> dict[str, ModelSpec]:
    """The project's own names (aliases and own architectures); timm names are not listed here."""
    return dict(_REGISTRY)


def _timm_builder(timm_name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)

    return build


def _timm_spec(name: str, timm_name: str, description: str) -> ModelSpec:
    """A spec for a timm model, with preprocessing and weights read from timm's pretrained cfg."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name) if "." in timm_name else None
        if cfg is None:
            cfg = timm.create_model(timm_name, pretrained=False).pretrained_cfg
            cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
        else:
            cfg = cfg.to_dict()
    except Exception as exc:  # timm raises a zoo of types for odd names
        raise UnknownNameError(f"timm cannot build {timm_name!r}: {exc}") from None
    hub = cfg.get("hf_hub_id")
    url = HF_TIMM.format(hub_id=hub) if hub else (cfg.get("url") or None)
    file = f"{hub.rsplit('/', 1)[-1]}.safetensors" if hub else (url.rsplit("/", 1)[-1] if url else None)
    return ModelSpec(
        name=name,
        builder=_timm_builder(timm_name),
        description=description,
        family="timm",
        num_classes=int(cfg.get("num_classes") or 1000),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        weights_url=url,
        weights_file=file,
        timm_name=timm_name,
    )


# ImageNet-1k-only tags, so the peers of VMamba see the same training data it did.
_TIMM_ALIASES = {
    "swin-t": ("swin_tiny_patch4_window7_224.ms_in1k", "Swin-T (28M), ImageNet-1k"),
    "swin-s": ("swin_small_patch4_window7_224.ms_in1k", "Swin-S (50M), ImageNet-1k"),
    "swin-b": ("swin_base_patch4_window7_224.ms_in1k", "Swin-B (88M), ImageNet-1k"),
    "convnext-t": ("convnext_tiny.fb_in1k", "ConvNeXt-T (29M), ImageNet-1k"),
    "convnext-s": ("convnext_small.fb_in1k", "ConvNeXt-S (50M), ImageNet-1k"),
    "convnext-b": ("convnext_base.fb_in1k", "ConvNeXt-B (89M), ImageNet-1k"),
    "deit-s": ("deit_small_patch16_224.fb_in1k", "DeiT-S (22M), ImageNet-1k"),
}


def _lazy_timm_alias(name: str, timm_name: str, description: str) -> ModelSpec:
    # Resolving timm's cfg needs timm imported; defer it to lookup time by registering a thin spec
    # whose fields are filled by get_spec().
    return ModelSpec(name=name, builder=_timm_builder(timm_name), description=description, family="timm",
                     timm_name=timm_name)


for _alias, (_tname, _desc) in _TIMM_ALIASES.items():
    register(_lazy_timm_alias(_alias, _tname, _desc))


# Small variants for the embedded 64 px data sets: same architectures, a few hundred k parameters,
# trainable on a laptop CPU in seconds. No released weights: `mamba-bench demo` trains them.
def _convnext_nano(num_classes: int) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(num_classes=num_classes, depths=(1, 1, 2, 1), dims=(24, 48, 96, 192), drop_path_rate=0.0)


def _swin_nano(num_classes: int) -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2, 2),
                           num_heads=(2, 4, 8), num_classes=num_classes)


register(ModelSpec("convnext-nano", _convnext_nano, "ConvNeXt, 4 stages (24-192 ch), for 64 px embedded data",
                   "timm-arch", num_classes=10, input_size=64, crop_pct=1.0))
register(ModelSpec("swin-nano", _swin_nano, "Swin, 3 stages (32-128 ch), window 4, for 64 px embedded data",
                   "timm-arch", num_classes=10, input_size=64, crop_pct=1.0))


def _vmamba_builder(cfg) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from mamba_bench.models.vmamba import VMamba

        return VMamba(cfg, num_classes=num_classes)

    return build


def _vmamba_diagnose(state: dict, wanted: str) -> str | None:
    from mamba_bench.models.vmamba import diagnose_checkpoint

    return diagnose_checkpoint(state, wanted)


def _register_vmamba() -> None:
    from mamba_bench.models.vmamba import VMAMBA_VARIANTS

    for name, (official, cfg, url, top1) in VMAMBA_VARIANTS.items():
        nano = name.endswith("-nano")
        desc = (f"VMamba {official}: depths {list(cfg.depths)}, dim {cfg.embed_dim}, ssm_ratio {cfg.ssm_ratio:g}, "
                f"d_state {cfg.d_state}" + (f"; {top1} % ImageNet-1k top-1 (official)" if top1 else "")
                + ("; for 64 px embedded data" if nano else "") + ("" if url or nano else "; no public release"))
        register(ModelSpec(name, _vmamba_builder(cfg), desc, "vmamba", num_classes=10 if nano else 1000,
                           input_size=64 if nano else 224, crop_pct=1.0 if nano else 0.875, weights_url=url,
                           weights_file=url.rsplit("/", 1)[-1] if url else None, diagnose=_vmamba_diagnose))


_register_vmamba()


# Models trained by `dg-train`: the architecture, classes and input size come from the checkpoint.
DG_KIND = "mamba-bench dg-train checkpoint"


def _from_checkpoint_only(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from mamba_bench.errors import CheckpointError

        raise CheckpointError(f"{name} has no architecture of its own: it is a model trained by dg-train, built "
                              f"from its checkpoint (--model {name} --weights RUN/{name}/<test domain>/seed<k>/"
                              "best.pt); to train or time one, use its architecture (e.g. vmamba-t)")

    return build


for _name, _what in (("start-m", "START-M"), ("start-x", "START-X")):
    register(ModelSpec(_name, _from_checkpoint_only(_name),
                       f"VMamba trained with {_what} by dg-train (pass --weights RUN/.../best.pt)", "dg"))


def spec_for_weights(spec: ModelSpec, ref: str | None) -> ModelSpec:
    """The spec a checkpoint implies: a dg-train checkpoint names its architecture, classes, size and
    the resize it was trained with (so evaluation feeds it the pixels training did)."""
    from mamba_bench.errors import CheckpointError
    from mamba_bench.models.weights import checkpoint_metadata

    md = checkpoint_metadata(ref) if ref else {}
    if md.get("kind") != DG_KIND:
        if spec.family == "dg":
            raise CheckpointError(f"--model {spec.name} needs a dg-train checkpoint: "
                                  "--weights RUN/<algorithm>/<test domain>/seed<k>/best.pt")
        return spec
    import json

    arch = get_spec(md["arch"])
    algorithm = md.get("algorithm", "?")
    if spec.family == "dg" and spec.name != algorithm:
        raise CheckpointError(f"{ref} was trained with {algorithm}, not {spec.name}; use --model {arch.name}"
                              + (f" or --model {algorithm}" if algorithm in _REGISTRY else ""))
    if spec.family != "dg" and spec.name != arch.name:
        raise CheckpointError(f"{ref} is a {arch.name} checkpoint (dg-train, {algorithm}); use --model {arch.name}")
    # the checkpoint's training resize; dg-train always stretched bilinearly, also before it recorded so
    resize_mode, interpolation = md.get("resize_mode", "stretch"), md.get("interpolation", "bilinear")
    if resize_mode not in ("stretch", "crop") or interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise CheckpointError(f"{ref}: unknown preprocessing in its metadata (resize_mode {resize_mode!r}, "
                              f"interpolation {interpolation!r})")
    return replace(arch, name=spec.name, family=arch.family, num_classes=int(md["num_classes"]),
                   input_size=int(md["image_size"]), crop_pct=1.0, mean=tuple(json.loads(md["mean"])),
                   std=tuple(json.loads(md["std"])), resize_mode=resize_mode, interpolation=interpolation,
                   weights_url=None, weights_file=None,
                   description=f"{arch.name} trained by dg-train ({algorithm}, {md.get('dataset')}, "
                               f"test domain {md.get('test_domain')}, seed {md.get('seed')})")


def get_spec(name: str) -> ModelSpec:
    """Resolve a registry name, an alias or any timm model name; unknown → one clear error."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        if spec.family == "timm":
            full = _timm_spec(name, spec.timm_name, spec.description)
            return replace(full, description=spec.description)
        return spec
    import timm

    base = name.split(".", 1)[0]
    if timm.is_model(base):
        return _timm_spec(name, name, f"timm model {name}")
    close = difflib.get_close_matches(name, list(_REGISTRY) + timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(
        f"unknown model {name!r}.{hint} Valid: {', '.join(sorted(_REGISTRY))}, or any timm model name "
        "(see `mamba-bench models --timm`)"
    )


def create_model(name: str, weights: str | None = None, num_classes: int | None = None,
                 cache_dir: str | None = None) -> nn.Module:
    """Build ``name`` in eval mode; with ``weights`` (path or URL) load them strictly.

    ``weights=None`` gives a randomly initialised network: the CLI never does that silently, it
    resolves a model's released weights or asks for ``--weights``.
    """
    from mamba_bench.models.weights import load_weights_into

    spec = spec_for_weights(get_spec(name), weights)
    model = spec.build(num_classes)
    if weights is not None:
        load_weights_into(model, weights, spec, cache_dir=cache_dir)
    return model.eval()

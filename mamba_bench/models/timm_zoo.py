"""The timm family: the ImageNet-1k-only aliases (``swin-b``, ``convnext-b``, ...), the small ``*-nano``
variants for the embedded data, and every other timm model by name (the registry's fallback).

The aliases pin the ImageNet-1k-only weight tags, so that models are compared on equal training
data (timm's defaults for some names are ImageNet-22k fine-tunes). Preprocessing and the weights'
Hugging Face Hub repository are read from timm's pretrained cfg when the name is looked up (importing
timm is slow, so registering an alias does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch.nn as nn

from mamba_bench.errors import UnknownNameError
from mamba_bench.models.registry import IMAGENET_MEAN, IMAGENET_STD, Fallback, ModelSpec, register, register_fallback


def _timm_builder(timm_name: str, **kwargs) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)

    return build


def timm_spec(name: str, timm_name: str, description: str) -> ModelSpec:
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
    url = None if hub else (cfg.get("url") or None)
    hub_file = (cfg.get("hf_hub_filename") or "model.safetensors") if hub else None
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
        weights_file=hub_file if hub else (url.rsplit("/", 1)[-1] if url else None),
        hf_hub_id=hub,
        hf_hub_filename=hub_file,
        timm_name=timm_name,
    )


def _resolve_alias(spec: ModelSpec) -> ModelSpec:
    return replace(timm_spec(spec.name, spec.timm_name, spec.description), description=spec.description)


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

for _alias, (_tname, _desc) in _TIMM_ALIASES.items():
    register(ModelSpec(name=_alias, builder=_timm_builder(_tname), description=_desc, family="timm",
                       timm_name=_tname, resolve=_resolve_alias))


# Small variants for the embedded 64 px data sets: same architectures, a few hundred k parameters,
# trainable on a laptop CPU in seconds. No released weights: `mamba-bench demo` trains them.
def convnext_nano(num_classes: int) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(num_classes=num_classes, depths=(1, 1, 2, 1), dims=(24, 48, 96, 192), drop_path_rate=0.0)


def swin_nano(num_classes: int) -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2, 2),
                           num_heads=(2, 4, 8), num_classes=num_classes)


register(ModelSpec("convnext-nano", convnext_nano, "ConvNeXt, 4 stages (24-192 ch), for 64 px embedded data",
                   "timm-arch", num_classes=10, input_size=64, crop_pct=1.0))
register(ModelSpec("swin-nano", swin_nano, "Swin, 3 stages (32-128 ch), window 4, for 64 px embedded data",
                   "timm-arch", num_classes=10, input_size=64, crop_pct=1.0))


def _any_timm_name(name: str) -> ModelSpec | None:
    import timm

    return timm_spec(name, name, f"timm model {name}") if timm.is_model(name.split(".", 1)[0]) else None


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


register_fallback(Fallback("timm", _any_timm_name, _timm_names,
                           "any timm model name (see `mamba-bench models --timm`)"))

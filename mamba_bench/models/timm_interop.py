"""Our VMamba, Vim and MambaVision in timm's model registry: ``import mamba_bench.models.timm_interop``.

After that import, ``timm.create_model("vmamba_tiny_s1l8", pretrained=False)`` (and every name of
:data:`TIMM_NAMES`) builds our model, ``timm.list_models("vim_*")`` lists them, and
``timm.models.get_pretrained_cfg(name)`` has the release's preprocessing and URL.
``pretrained=True`` loads the release file through mamba-bench's loader (download cache, or
``cache_dir``; strict keys; pickle-safe; a head of another size is replaced after loading). The
models follow timm's model API: ``pretrained_cfg``/``default_cfg``, ``forward_features``
(unpooled: VMamba's and MambaVision's last map, Vim's tokens), ``forward_head(x, pre_logits=False)``,
``reset_classifier(n)``, ``get_classifier()``, ``num_features``, ``num_classes``.

This module imports timm (a few seconds), so ``mamba_bench.models`` does not import it by itself.
"""

from __future__ import annotations

from dataclasses import fields, replace

from timm.models import generate_default_cfgs, register_model
from timm.models._pretrained import PretrainedCfg

from mamba_bench.models.family import pretrained_cfg
from mamba_bench.models.mambavision import MAMBAVISION_VARIANTS, MambaVision
from mamba_bench.models.registry import get_spec
from mamba_bench.models.vim import VIM_VARIANTS, VimConfig, VisionMamba
from mamba_bench.models.vmamba import VMAMBA_VARIANTS, VMamba
from mamba_bench.models.vmamba_v0 import VMAMBA_V0_VARIANTS, VMambaV0

#: timm name → our registry name. VMamba's follow the official repository's own names (s1l8: ssm_ratio
#: 1, 8 blocks in stage 3; v0: its vanilla_vmamba_* names); Vim's its config names; MambaVision's its
#: sizes (the official timm names, ``mamba_vision_T`` ..., are left to the official package, which
#: registers them itself).
TIMM_NAMES: dict[str, str] = {
    "vmamba_tiny_s1l8": "vmamba-t", "vmamba_tiny_s2l5": "vmamba-t-s2l5", "vmamba_small_s2l15": "vmamba-s",
    "vmamba_base_s2l15": "vmamba-b", "vmamba_small_s1l20": "vmamba-s-s1l20", "vmamba_base_s1l20": "vmamba-b-s1l20",
    "vmamba_nano": "vmamba-nano",
    **{v[0]: name for name, v in VMAMBA_V0_VARIANTS.items() if not name.startswith("vmamba-nano")},
    "vanilla_vmamba_nano": "vmamba-nano-v0",
    **{v[4]: name for name, v in VIM_VARIANTS.items()},
    **{v[5]: name for name, v in MAMBAVISION_VARIANTS.items()},
}

# (model class, config, first conv, classifier) per registry name
_FAMILY = {
    **{n: (VMamba, v[1], "patch_embed.0", "classifier.head") for n, v in VMAMBA_VARIANTS.items()},
    **{n: (VMambaV0, v[1], "patch_embed.0", "classifier.head") for n, v in VMAMBA_V0_VARIANTS.items()},
    **{n: (VisionMamba, v[1], "patch_embed.proj", "head") for n, v in VIM_VARIANTS.items()},
    **{n: (MambaVision, v[1], "patch_embed.conv_down.0", "head") for n, v in MAMBAVISION_VARIANTS.items()},
}
_CFG_FIELDS = {f.name for f in fields(PretrainedCfg)}


def _cfg(timm_name: str) -> dict:
    name = TIMM_NAMES[timm_name]
    _, cfg, first_conv, classifier = _FAMILY[name]
    spec = get_spec(name)
    out = pretrained_cfg(spec, architecture=timm_name, first_conv=first_conv, classifier=classifier,
                         fixed_input_size=isinstance(cfg, VimConfig),
                         license="apache-2.0" if name.startswith("vim") else None,
                         notes=(f"mamba-bench's {name}",))
    return {k: v for k, v in out.items() if k in _CFG_FIELDS}


default_cfgs = generate_default_cfgs({n: _cfg(n) for n in TIMM_NAMES})  # read by register_model


def _entry_point(timm_name: str):
    name = TIMM_NAMES[timm_name]

    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        cls, cfg, _, _ = _FAMILY[name]
        spec = get_spec(name)
        num_classes = kwargs.pop("num_classes", spec.num_classes)
        if kwargs.pop("in_chans", 3) != 3:
            raise TypeError(f"{timm_name}: only 3 input channels (the releases' stem)")
        overrides = {k: kwargs.pop(k) for k in ("drop_path_rate",) if k in kwargs}
        if kwargs:
            raise TypeError(f"{timm_name} takes num_classes, drop_path_rate, in_chans=3; not {', '.join(kwargs)}")
        model = cls(replace(cfg, **overrides), num_classes=spec.num_classes if pretrained else num_classes)
        if pretrained:
            from mamba_bench.models.weights import load_weights_into, release_ref

            if release_ref(spec) is None:
                raise RuntimeError(f"{timm_name} ({name}) has no released weights")
            load_weights_into(model, release_ref(spec), spec, cache_dir=None if cache_dir is None else str(cache_dir))
            if num_classes != spec.num_classes:
                model.reset_classifier(num_classes)
        cfg_dict = default_cfgs[timm_name].default.to_dict()
        cfg_dict.update(pretrained_cfg_overlay or {})
        model.pretrained_cfg = cfg_dict
        return model.eval() if pretrained else model

    create.__name__ = create.__qualname__ = timm_name
    create.__module__ = __name__
    create.__doc__ = f"mamba-bench's {name}: {get_spec(name).description}"
    return create


for _timm_name in TIMM_NAMES:
    globals()[_timm_name] = register_model(_entry_point(_timm_name))

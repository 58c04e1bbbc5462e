"""Import the official VMamba, Vim and MambaVision code on a CPU machine (helper of the scripts beside it).

Neither repository is shipped here: pass the path of a checkout; its code is imported at run time,
never copied. Both need ``einops`` (``pip install --target DIR einops`` and PYTHONPATH=DIR will do).
Only CUDA-only calls are replaced, each by the reference function the official code itself ships:

* Vim (hustvl/Vim): ``selective_scan_cuda``/``causal_conv1d_cuda`` (compiled extensions) are empty
  modules never called; ``mamba_inner_fn_no_out_proj`` (the fused kernel of the bimamba-v2 branches)
  → the fork's ``mamba_inner_ref`` with an identity out-projection, whose ``selective_scan_fn`` and
  ``causal_conv1d_fn`` → ``selective_scan_ref`` and ``causal_conv1d_ref``; the Triton add+RMSNorm
  ``rms_norm_fn`` → its ``rms_norm_ref`` in fp32. ``mamba_ssm/__init__`` (which imports the language
  model and ``transformers``) is skipped, and the two ``mamba_ssm.utils`` modules that need
  ``transformers`` are stubs (nothing of them is used by ``VisionMamba``).
* VMamba (MzeroMiko/VMamba ``classification/models``): ``fvcore`` and ``einops`` (FLOP counting and
  Mamba-2 only) are stubs.
* MambaVision (NVlabs/MambaVision): ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
  → mamba-ssm's ``selective_scan_ref``, read from a mamba-ssm source tree (``--mamba-ssm DIR``, the
  directory holding ``mamba_ssm/``; Vim's checkout carries one in ``mamba-1p1p1``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _empty(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def official_vmamba(models_dir: str | Path):
    """The official ``classification/models/vmamba.py`` module (its CUDA kernels stay unused on CPU)."""
    sys.path.insert(0, str(models_dir))
    for name in ("fvcore", "fvcore.nn", "einops"):
        mod = types.ModuleType(name)
        mod.FlopCountAnalysis = mod.flop_count_str = mod.flop_count = mod.parameter_count = None
        mod.rearrange = mod.repeat = None
        sys.modules.setdefault(name, mod)
    import vmamba

    return vmamba


def official_vim(root: str | Path):
    """The official ``vim/models_mamba.py`` module, CPU-runnable."""
    import torch

    root = Path(root)
    sys.path[:0] = [str(root / "vim"), str(root / "causal-conv1d")]
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        _empty(name)
    pkg = _empty("mamba_ssm")
    pkg.__path__ = [str(root / "mamba-1p1p1" / "mamba_ssm")]
    _empty("mamba_ssm.utils.generation", GenerationMixin=object)
    _empty("mamba_ssm.utils.hf", load_config_hf=None, load_state_dict_hf=None)
    import causal_conv1d.causal_conv1d_interface as cci
    import mamba_ssm.ops.selective_scan_interface as ssi
    import mamba_ssm.ops.triton.layer_norm as ln

    ssi.selective_scan_fn = ssi.selective_scan_ref
    ssi.causal_conv1d_fn = cci.causal_conv1d_ref
    import mamba_ssm.modules.mamba_simple as ms

    def no_out_proj_ref(xz, conv_w, conv_b, x_proj_w, delta_proj_w, A, B=None, C=None, D=None, delta_bias=None,
                        B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
        eye = torch.eye(xz.shape[1] // 2, dtype=xz.dtype)
        return ssi.mamba_inner_ref(xz, conv_w, conv_b, x_proj_w, delta_proj_w, eye, None, A, B, C, D, delta_bias,
                                   B_proj_bias, C_proj_bias, delta_softplus).transpose(1, 2)

    ms.mamba_inner_fn_no_out_proj = no_out_proj_ref

    def rms_norm_fn(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False, **_):
        return ln.rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)

    import models_mamba

    models_mamba.rms_norm_fn = rms_norm_fn
    return models_mamba


def official_mambavision(root: str | Path, mamba_ssm_dir: str | Path):
    """The official ``mambavision/models/mamba_vision.py`` module, CPU-runnable."""
    _empty("selective_scan_cuda")
    spec = importlib.util.spec_from_file_location(
        "_mamba_ssm_reference", Path(mamba_ssm_dir) / "mamba_ssm" / "ops" / "selective_scan_interface.py")
    reference = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("causal_conv1d_cuda", types.ModuleType("causal_conv1d_cuda"))
    spec.loader.exec_module(reference)
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        _empty(name)
    _empty("mamba_ssm.ops.selective_scan_interface", selective_scan_fn=reference.selective_scan_ref)
    sys.path.insert(0, str(Path(root)))
    from mambavision.models import mamba_vision

    return mamba_vision

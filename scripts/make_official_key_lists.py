"""Write the key → shape lists of every released Vim and MambaVision config, from the official code.

Usage: PYTHONPATH=EINOPS_DIR python scripts/make_official_key_lists.py VIM_CHECKOUT MAMBAVISION_CHECKOUT
       python scripts/make_official_key_lists.py --vmamba-v0 VMAMBA_CHECKOUT/classification/models

The second form writes ``tests/data/vmamba_v0_keys.json`` from the official
``vanilla_vmamba_tiny/small/base`` (MzeroMiko/VMamba ``classification/models/vmamba.py``, imported
as ``scripts/check_vmamba_official.py`` does: FLOP-counting and Mamba-2 imports stubbed).

Builds each official model (hustvl/Vim ``vim/models_mamba.py`` entry points, NVlabs/MambaVision
``mamba_vision_*`` entry points) on CPU (the official constructors call ``.item()``, so the meta
device will not do; ~1 GB and a minute for all eleven) with the CUDA-only imports stubbed
(``scripts/_official.py``), and writes ``tests/data/vim_keys.json`` and
``tests/data/mambavision_keys.json``: {our registry name: {"official": entry point, "keys": [[key,
shape], ...] in the official state_dict's order}}. ``tests/test_vim_mambavision.py`` checks our
modules against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _official import official_mambavision, official_vim, official_vmamba  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"

VIM = {  # our name → the official entry point the release was trained with
    "vim-t": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim-t-plus": "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim-s": "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim-s-plus": "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "vim-b": "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
}
MAMBAVISION = {"mambavision-t": "mamba_vision_T", "mambavision-t2": "mamba_vision_T2",
               "mambavision-s": "mamba_vision_S", "mambavision-b": "mamba_vision_B",
               "mambavision-l": "mamba_vision_L", "mambavision-l2": "mamba_vision_L2"}


def keys(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


VMAMBA_V0 = {"vmamba-t-v0": "vanilla_vmamba_tiny", "vmamba-s-v0": "vanilla_vmamba_small",
             "vmamba-b-v0": "vanilla_vmamba_base"}


def vmamba_v0(models_dir: str) -> int:
    official = official_vmamba(models_dir)
    out = {ours: {"official": fn, "keys": keys(getattr(official, fn)())} for ours, fn in VMAMBA_V0.items()}
    (OUT / "vmamba_v0_keys.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print("vmamba_v0_keys.json", {k: len(v["keys"]) for k, v in out.items()})
    return 0


def main() -> int:
    if sys.argv[1] == "--vmamba-v0":
        return vmamba_v0(sys.argv[2])
    vim_root, mv_root = sys.argv[1], sys.argv[2]
    vim_mod = official_vim(vim_root)
    out = {}
    for ours, fn in VIM.items():
        out[ours] = {"official": fn, "keys": keys(getattr(vim_mod, fn)())}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vim_keys.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    mv_mod = official_mambavision(mv_root, Path(vim_root) / "mamba-1p1p1")
    out = {}
    for ours, fn in MAMBAVISION.items():
        out[ours] = {"official": fn, "keys": keys(getattr(mv_mod, fn)(pretrained=False))}
    (OUT / "mambavision_keys.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    for f in ("vim_keys.json", "mambavision_keys.json"):
        data = json.loads((OUT / f).read_text())
        print(f, {k: len(v["keys"]) for k, v in data.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

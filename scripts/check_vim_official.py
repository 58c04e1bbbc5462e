"""Cross-check mamba-bench's Vim against the official implementation (CPU, fp32).

Usage: PYTHONPATH=EINOPS_DIR python scripts/check_vim_official.py VIM_CHECKOUT [NAME] [CHECKPOINT.pth]

VIM_CHECKOUT is a checkout of hustvl/Vim (not shipped here; its code is imported at run time, never
copied; its CUDA-only calls are routed to the reference functions it ships, see scripts/_official.py).
NAME is one of vim-t (default), vim-t-plus, vim-s, vim-s-plus, vim-b. Without a checkpoint, the
official model gets random weights (every tensor perturbed, so no parameter keeps its
initialisation) and is saved in the release's format ({'model': state_dict, 'args': Namespace, ...});
mamba-bench's model loads that file through its own strict, pickle-safe loader; both get the same
images. Prints the max |logit difference| and exits 1 above 1e-4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _official import official_vim  # noqa: E402
from make_official_key_lists import VIM  # noqa: E402


def main() -> int:
    root = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "vim-t"
    ckpt = sys.argv[3] if len(sys.argv) > 3 else None
    official = official_vim(root)
    ref = getattr(official, VIM[name])().eval()
    torch.manual_seed(0)
    if ckpt is None:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p + torch.randn_like(p) * 0.02)
        ckpt = f"/tmp/{name}_random_official_format.pth"
        torch.save({"model": ref.state_dict(), "epoch": 0, "args": argparse.Namespace(model=VIM[name])}, ckpt)
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]  # a trusted release file
        ref.load_state_dict(state, strict=True)
    from mamba_bench.models import create_model

    ours = create_model(name, weights=ckpt)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref(x)
        worst = 0.0
        for backend in ("cpu", "torch"):
            ours.set_scan_backend(backend)
            b = ours(x)
            err = float((a - b).abs().max())
            worst = max(worst, err)
            print(f"{name} ({VIM[name]}), scan backend {backend}: max |logit difference| = {err:.3e} "
                  f"(max |logit| {float(a.abs().max()):.3f}, top-1 agree {bool((a.argmax(1) == b.argmax(1)).all())})")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

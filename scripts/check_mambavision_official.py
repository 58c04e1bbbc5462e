"""Cross-check mamba-bench's MambaVision against the official implementation (CPU, fp32).

Usage: PYTHONPATH=EINOPS_DIR python scripts/check_mambavision_official.py MAMBAVISION_CHECKOUT MAMBA_SSM_DIR
       [NAME] [CHECKPOINT.pth.tar]

MAMBAVISION_CHECKOUT is a checkout of NVlabs/MambaVision, MAMBA_SSM_DIR a directory holding mamba-ssm's
``mamba_ssm/`` sources (e.g. ``mamba-1p1p1`` of a hustvl/Vim checkout) for its reference selective
scan (neither is shipped here; their code is imported at run time, never copied; see
scripts/_official.py). NAME: mambavision-t (default), -t2, -s, -b, -l, -l2. Without a checkpoint the
official model (its ``mamba_vision_*`` entry point) gets random weights (every tensor perturbed;
BatchNorm statistics too) and is saved as a timm training checkpoint ({'state_dict': ..., 'args':
Namespace, ...}, as the release files); mamba-bench's model loads it through its own strict,
pickle-safe loader. Also checks an input size that needs the windows' zero padding (256 px: maps
16 and 8 vs windows 14 and 7). Prints the max |logit difference| and exits 1 above 1e-4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _official import official_mambavision  # noqa: E402
from make_official_key_lists import MAMBAVISION  # noqa: E402


def main() -> int:
    root, mamba_ssm_dir = sys.argv[1], sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else "mambavision-t"
    ckpt = sys.argv[4] if len(sys.argv) > 4 else None
    official = official_mambavision(root, mamba_ssm_dir)
    ref = getattr(official, MAMBAVISION[name])(pretrained=False).eval()
    torch.manual_seed(0)
    if ckpt is None:
        with torch.no_grad():
            for k, t in ref.state_dict().items():
                if t.is_floating_point():
                    noise = torch.randn_like(t) * 0.02
                    t.copy_(t.abs() + 0.5 + noise if k.endswith("running_var") else t + noise)
        ckpt = f"/tmp/{name}_random_official_format.pth.tar"
        torch.save({"epoch": 0, "arch": MAMBAVISION[name], "state_dict": ref.state_dict(),
                    "args": argparse.Namespace(model=MAMBAVISION[name])}, ckpt)
    else:
        ref._load_state_dict(ckpt, strict=True)
    from mamba_bench.models import create_model

    ours = create_model(name, weights=ckpt)
    worst = 0.0
    for size in (224, 256):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            a = ref(x)
            for backend in ("cpu", "torch"):
                ours.set_scan_backend(backend)
                b = ours(x)
                err = float((a - b).abs().max())
                worst = max(worst, err)
                print(f"{name} ({MAMBAVISION[name]}), {size} px, scan backend {backend}: max |logit difference| = "
                      f"{err:.3e} (max |logit| {float(a.abs().max()):.3f}, "
                      f"top-1 agree {bool((a.argmax(1) == b.argmax(1)).all())})")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())

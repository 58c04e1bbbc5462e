"""The scale of Mender's repair losses on the demo's digit-trained vmamba-nano (README, "Vision Mamba Mender").

Usage: python scripts/mender_loss_scale.py [SEED]

For each definition: the unweighted cross-entropy, external and internal loss of one training batch
(32 digits, drawn with SEED) on the definition's default blocks, and the norm of each one's gradient
with respect to the parameters. The official definition's default weights are the powers of ten
nearest |∇CE| / |∇L| here (the official α = 1e7, β = 1e8 are tuned for ImageNet at 224 px with
batches of 256 and overwhelm the cross-entropy here).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from mamba_bench.analysis import explain
from mamba_bench.analysis.definitions import DEFINITIONS, get_definition
from mamba_bench.data import digits_split
from mamba_bench.demo import demo_weights
from mamba_bench.eval.corrupt import load_models
from mamba_bench.models.preprocess import to_model_input


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))


def main() -> int:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    cpu = torch.device("cpu")
    (loaded,) = load_models(["vmamba-nano"], [str(demo_weights("vmamba-nano"))], 10, random_init=False,
                            cache_dir=None, dataset="digits", seed=0)
    model, spec = loaded.module, loaded.spec
    x, y, _ = digits_split("train")
    masks = x[..., 0] > explain.DIGIT_STROKE
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:32].numpy()
    xb, yb = to_model_input(torch.from_numpy(x[idx]), spec, cpu), torch.from_numpy(y[idx])
    for name in DEFINITIONS:
        defn = get_definition(name)
        ext_blocks, int_blocks = defn.repair_blocks(explain.mender.mamba_blocks(model))
        templates = explain.class_templates(defn, model.eval(), spec, x, y, int_blocks, 10, batch_size=64, device=cpu)
        model.train()
        losses = explain.repair_step_losses(defn, model, xb, yb, torch.from_numpy(masks[idx]), ext_blocks, int_blocks,
                                            templates, True, True)
        params = [p for p in model.parameters() if p.requires_grad]
        norms = [grad_norm(loss, params) for loss in losses]
        ratios = [norms[0] / n if n > 0 else float("nan") for n in norms[1:]]
        print(f"{name}: blocks ext {ext_blocks} int {int_blocks}")
        print("  loss   ce {:.4g}  ext {:.4g}  int {:.4g}".format(*(float(v.detach()) for v in losses)))
        print("  |grad| ce {:.4g}  ext {:.4g}  int {:.4g}".format(*norms))
        powers = [round(float(np.log10(r))) for r in ratios]
        print(f"  |grad ce| / |grad L|: ext {ratios[0]:.3g} (nearest power of ten 1e{powers[0]}), "
              f"int {ratios[1]:.3g} (1e{powers[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

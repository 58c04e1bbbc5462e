"""Domain gap inside a VMamba: MMD between source and target domains of Δ, B, C and the final features.

The START poster's table ("Δ, B, C, Feat.", lower is better) measures how far apart the source and
target domains lie in the input-dependent matrices. Here, for a checkpoint and its split:

* each image is summarised per block by the token average of Δ (after bias and softplus,
  4 directions × D channels), of B and of C (4 × N each), and by the classifier's pooled
  final features (after the last stage and its norm);
* source = the training domains' ``out`` images pooled, target = the test domain's ``out`` images
  (its whole set under the ``dgmamba`` protocol),
  at most ``samples`` of each, drawn with a fixed seed;
* MMD with a Gaussian kernel whose bandwidth is the median pairwise distance of the pooled
  vectors (the usual median heuristic), biased estimate, reported as sqrt(max(MMD², 0));
  Δ, B and C are averaged over all blocks of the model.

Absolute values depend on these choices (the poster does not state its own), so compare
algorithms measured with the same command, not with the poster's numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from mamba_bench.dg.data import DGDataset, cell_splits, seed_hash


def mmd_rbf(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt of the biased MMD² between samples a (n, d) and b (m, d), Gaussian kernel, median bandwidth."""
    x = torch.cat([a, b]).double()
    d2 = torch.cdist(x, x).pow(2)
    off = d2[~torch.eye(len(x), dtype=torch.bool)]
    sigma2 = off.median().clamp(min=1e-12)
    k = torch.exp(-d2 / (2 * sigma2))
    n = len(a)
    mmd2 = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    return float(mmd2.clamp(min=0).sqrt())


@torch.no_grad()
def summaries(model, images: torch.Tensor, batch: int = 64) -> dict[str, list[torch.Tensor]]:
    """Per-image vectors: Δ, B, C per block (lists over blocks) and the final pooled features."""
    from mamba_bench.models.vmamba import capture_internals

    out: dict[str, list] = {"delta": [], "B": [], "C": [], "feat": []}
    model.eval()
    for a in range(0, len(images), batch):
        x = images[a:a + batch]
        with capture_internals(model, names={"delta", "B", "C"}) as rec:
            feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        per_block = {k: [rec[blk][k].float().mean(-1).flatten(1) for blk in rec.blocks()] for k in ("delta", "B", "C")}
        for k, v in per_block.items():
            out[k].append(v)
        out["feat"].append(pooled.float())
    res = {k: [torch.cat([chunk[i] for chunk in out[k]]) for i in range(len(out[k][0]))] for k in ("delta", "B", "C")}
    res["feat"] = [torch.cat(out["feat"])]
    return res


def domain_gap(model, ds: DGDataset, test_domain: str, seed: int, load_batch, samples: int = 100,
               protocol: str = "domainbed") -> dict[str, float]:
    """MMD source vs target for Δ, B, C (mean over blocks) and Feat.; ``load_batch(domain, idx)`` → model input.

    The images are the ``out`` splits of the cell's protocol (the test domain's whole set under
    ``dgmamba``, which has no ``out`` split for it)."""
    test_i = ds.index(test_domain)
    splits = cell_splits(ds, protocol, seed, test_domain)
    src, tgt = [], []
    rng = np.random.default_rng(seed_hash(seed, "gap"))
    sources = [i for i in range(len(ds.domains)) if i != test_i]
    per_source = max(1, samples // len(sources))
    for i, d in enumerate(ds.domains):
        part = splits[d.name]
        out_idx = np.asarray(part["out"] if "out" in part else part["all"], np.int64)
        take = samples if i == test_i else per_source
        pick = np.sort(rng.choice(out_idx, size=min(take, len(out_idx)), replace=False))
        (tgt if i == test_i else src).append(load_batch(d, pick))
    s = summaries(model, torch.cat(src))
    t = summaries(model, torch.cat(tgt))
    res = {}
    for k in ("delta", "B", "C", "feat"):
        res[k] = float(np.mean([mmd_rbf(a, b) for a, b in zip(s[k], t[k], strict=True)]))
    return res

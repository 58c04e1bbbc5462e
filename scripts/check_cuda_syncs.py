"""Where does the evaluation loop make the host wait for the GPU? Runs ``iterate_cells`` (the corrupt
command's loop) over a few cells with ``torch.cuda.set_sync_debug_mode("warn")`` and counts the
synchronising calls by the line that made them. The loop is meant to wait once per cell (the copy of
the per-image results); anything else, inside a model or between batches, starves the GPU.

    python scripts/check_cuda_syncs.py [--model vmamba-t --model swin-t ...] [--cells 3]
"""
import argparse
import collections
import warnings

import torch

from mamba_bench.corruptions import load_suite
from mamba_bench.eval.bench import bench_photos
from mamba_bench.eval.corrupt import LoadedModel, iterate_cells
from mamba_bench.models.registry import get_spec

ap = argparse.ArgumentParser()
ap.add_argument("--model", action="append")
ap.add_argument("--cells", type=int, default=3)
ap.add_argument("--batch-size", type=int, default=64)
ap.add_argument("--images", type=int, default=128)
args = ap.parse_args()
dev = torch.device("cuda")
names = args.model or ["vmamba-t", "swin-t", "convnext-t"]
models = []
for name in names:
    spec = get_spec(name)
    module = spec.build().eval().to(dev).to(memory_format=torch.channels_last)
    models.append(LoadedModel(name, spec, module, None, None))
photos, ids = bench_photos(args.images)
labels = torch.zeros(len(ids), dtype=torch.long)
suite = load_suite()
cells = [(c, c.severities[0]) for c in list(suite.corruptions.values())[:args.cells]]


def run() -> None:
    for _ in iterate_cells(photos, ids, labels, cells, list(range(len(cells))), models, seed=0,
                           batch_size=args.batch_size, workers=2, device=dev):
        pass


run()  # warm-up: kernel selection, lazy initialisation
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run()
torch.cuda.set_sync_debug_mode("default")
sites = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
batches = len(cells) * -(-len(ids) // args.batch_size)
print(f"{len(cells)} cells × {batches // len(cells)} batches × {len(models)} models ({', '.join(names)}): "
      f"{sum(sites.values())} synchronising calls")
for site, n in sites.most_common():
    print(f"  {n:5d}  {site}")

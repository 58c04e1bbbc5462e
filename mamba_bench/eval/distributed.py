"""``torchrun`` support: one process per rank, deterministic shards, rank 0 merges and writes.

Under ``torchrun --nproc-per-node N -m mamba_bench corrupt ...`` (or multi-node), every rank builds
the same cell list and image list, takes every N-th batch of each pending cell (the batches a single
process would make, so per-image outputs are the same), and writes its per-image results of a cell
atomically to ``parts/shard-<cell>-r<rank>of<N>.npz``. After a barrier, rank 0 reassembles each cell
in image order and commits it through the same code as a single process, then writes the tables.
A rank that dies leaves the other ranks' shard files behind: the rerun recomputes only the shards
that are missing. Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mamba_bench.results.store import atomic_write_bytes


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank (also a barrier)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def stop_on_main_error(self, error: str | None) -> None:
        """Raise rank 0's error (a message, or None) on every rank, so that none waits for the others."""
        from mamba_bench.errors import MambaBenchError

        error = self.broadcast(error)
        if error is not None:
            raise MambaBenchError(error)

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local), device


def shard_path(parts: Path, key: str, rank: int, world: int) -> Path:
    return parts / f"shard-{key}-r{rank}of{world}.npz"


def write_shard(path: Path, positions: np.ndarray, per_model: dict[str, dict[str, np.ndarray]]) -> None:
    arrays = {"positions": positions}
    for name, per in per_model.items():
        for k, v in per.items():
            arrays[f"{name}::{k}"] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def merge_shards(paths: list[Path], n: int, models: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per-model per-image arrays in image order, from every rank's shard of one cell."""
    loaded = [np.load(p) for p in paths]
    pos = np.concatenate([z["positions"] for z in loaded])
    if sorted(pos.tolist()) != list(range(n)):
        raise RuntimeError(f"shards {', '.join(p.name for p in paths)} do not cover the cell's {n} images")
    order = np.argsort(pos, kind="stable")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in models:
        keys = {k.split("::", 1)[1] for z in loaded for k in z.files if k.startswith(f"{name}::")}
        out[name] = {k: np.concatenate([z[f"{name}::{k}"] for z in loaded if f"{name}::{k}" in z.files])[order]
                     for k in sorted(keys)}
    return out

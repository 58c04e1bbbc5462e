"""Per-block internals of selective-scan models, for every family: ``capture_internals`` and ``ssm_blocks``.

A block opts in by deriving from :class:`SSMBlock` and naming what it can report in
``internal_names``; it calls ``self.record(name, tensor)`` (or records through the modules that
``recording_modules()`` returns, which share its recorder and name). Nothing is recorded, and no
extra work is done, outside a ``capture_internals`` context.

Names every family uses alike (shapes: b batch, D the block's SSM channels, K scan directions or
windows, N d_state, L scan length, (h, w) the block's token map):

=========  =============================================================================  ==============
name       what                                                                           shape
=========  =============================================================================  ==============
``in``     in-projection output that feeds the SSM branch                                 (b, D, h, w)
``conv``   depthwise-conv output, before its SiLU                                         (b, D', h, w)
``x``      the SSM input (conv + SiLU)                                                    (b, D', h, w)
``delta``  Δ after its bias and softplus, per direction, in scan order                    (b, K, D, L)
``B``/``C``  the input-dependent B and C, per direction, in scan order                    (b, K, N, L)
``scan``   selective-scan output per direction, in scan order                             (b, K, D, L)
``ssm``    the directions' scan outputs merged back onto the map (summed)                 (b, D, h, w)
``z``      the gate's in-projection output (Vim; VMamba v05_noz has no gate)               (b, D, h, w)
``out``    the block's output                                                             (b, C, h, w)
=========  =============================================================================  ==============

Map-shaped tensors are recorded *upstream* of the rest of the forward pass (the block continues
from the recorded tensor), so gradients with respect to them are exact: what Mender's state
correlations and START's saliency need. Family specifics (which D', K and L) are in each family's
module docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


class Recorder:
    """What ``capture_internals`` collects: ``rec[block_name][tensor_name] → tensor``."""

    def __init__(self, names: frozenset[str], detach: bool):
        self.names, self.detach, self.data = names, detach, {}

    def wants(self, name: str) -> bool:
        return name in self.names

    def put(self, block: str, name: str, value: torch.Tensor) -> None:
        if name in self.names:
            self.data.setdefault(block, {})[name] = value.detach() if self.detach else value

    def __getitem__(self, block: str) -> dict[str, torch.Tensor]:
        return self.data[block]

    def blocks(self) -> list[str]:
        return list(self.data)


class SSMBlock:
    """Mixin of an ``nn.Module`` block whose selective-scan internals ``capture_internals`` can record."""

    #: the names this block can record
    internal_names: frozenset[str] = frozenset()
    _recorder: Recorder | None = None
    _record_name: str = ""

    def recording_modules(self) -> Iterable[nn.Module]:
        """The modules that record under this block's name (the block itself and, e.g., its mixer)."""
        return (self,)

    def record(self, name: str, value: torch.Tensor) -> None:
        if self._recorder is not None:
            self._recorder.put(self._record_name, name, value)

    def recording(self, name: str) -> bool:
        return self._recorder is not None and self._recorder.wants(name)


#: every name some family records
INTERNALS = frozenset({"in", "x", "conv", "delta", "B", "C", "scan", "ssm", "ssm_norm", "z", "out"})


def ssm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's selective-scan blocks, ``(module name, module)`` in forward (registration) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SSMBlock)]


@contextmanager
def capture_internals(model: nn.Module, names: Iterable[str] | None = None,
                      detach: bool = True) -> Iterator[Recorder]:
    """Record per-block internals during forward passes inside the ``with`` block.

    ``names``: what to record (default: everything the model's blocks report); a name that no
    block of this model reports is a ValueError listing the valid ones. Keys of the recorder are
    the blocks' module names (``layers.0.blocks.1``, ``layers.3``, ``levels.2.blocks.0``). Only the
    model passed in is touched, and nothing is recorded (or computed) outside the context.
    """
    blocks = ssm_blocks(model)
    valid = frozenset().union(*(m.internal_names for _, m in blocks)) if blocks else INTERNALS
    wanted = valid if names is None else frozenset(names)
    unknown = wanted - valid
    if unknown:
        raise ValueError(f"unknown internals {sorted(unknown)}; valid: {sorted(valid)}")
    rec = Recorder(wanted, detach)
    touched = []
    for n, m in blocks:
        for sub in m.recording_modules():
            sub._recorder, sub._record_name = rec, n
            touched.append(sub)
    try:
        yield rec
    finally:
        for sub in touched:
            sub._recorder = None

"""START-M / START-X: VMamba trained with START's token-aware style perturbation by ``dg-train``.

The perturbation is training-time only, so these entries have no architecture of their own: the
checkpoint names it (see ``registry.spec_for_weights``), and building one without ``--weights`` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from mamba_bench.errors import CheckpointError
from mamba_bench.models.registry import ModelSpec, register


def _from_checkpoint_only(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        raise CheckpointError(f"{name} has no architecture of its own: it is a model trained by dg-train, built "
                              f"from its checkpoint (--model {name} --weights RUN/{name}/<test domain>/seed<k>/"
                              "best.pt); to train or time one, use its architecture (e.g. vmamba-t)")

    return build


for _name, _what in (("start-m", "START-M"), ("start-x", "START-X")):
    register(ModelSpec(_name, _from_checkpoint_only(_name),
                       f"VMamba trained with {_what} by dg-train (pass --weights RUN/.../best.pt)", "dg"))

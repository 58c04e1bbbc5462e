"""The definitions of Vision Mamba Mender, by name (``explain --definition NAME``)."""

from __future__ import annotations

from mamba_bench.analysis.mender import Definition
from mamba_bench.analysis.mender_official import Official
from mamba_bench.analysis.mender_seed import Seed
from mamba_bench.errors import MambaBenchError

DEFINITIONS: dict[str, type[Definition]] = {"official": Official, "seed": Seed}
DEFAULT = "official"


def get_definition(name: str = DEFAULT) -> Definition:
    """The definition called ``name``; a clear error naming the valid ones otherwise."""
    try:
        return DEFINITIONS[name]()
    except KeyError:
        raise MambaBenchError(f"unknown --definition {name!r}; valid: {', '.join(DEFINITIONS)} (official: as "
                              "jiaconghu/Vision-Mamba-Mender computes it; seed: the seed's literal reading)") from None

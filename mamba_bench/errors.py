"""Errors a user can cause.

Every one of them carries a message that says what to do; the CLI prints it as one line on
stderr and exits with code 2. Anything else escaping is a bug in mamba-bench.
"""


class MambaBenchError(Exception):
    """Base class: bad input from the user (exit code 2)."""


class UnknownNameError(MambaBenchError):
    """A model, corruption, severity or data-set name that the registries do not know."""


class DataLayoutError(MambaBenchError):
    """A data directory that is empty or not laid out as expected."""


class CheckpointError(MambaBenchError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class RunDirError(MambaBenchError):
    """An --out directory that holds a different run."""

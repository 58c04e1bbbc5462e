"""A pickle module for ``torch.load`` that can read real-world checkpoints without running their code.

Official releases often pickle more than tensors (e.g. VMamba's files carry a yacs ``config``
object), which ``weights_only=True`` refuses. This unpickler resolves only the globals that torch's
own weights-only loader allows (tensor rebuild functions, dtypes, plain containers); every other
global becomes an inert placeholder class: constructing it, setting its state or filling it does
nothing, so no function named in the file (``os.system``, ``eval``, a class's ``__reduce__``...) is
ever called. The tensors come out intact; the placeholders are dropped when the state_dict is
unwrapped, and their names are reported.
"""

from __future__ import annotations

import pickle

from torch._weights_only_unpickler import _get_allowed_globals


class Inert:
    """Stands in for a non-allowlisted global; holds and runs nothing."""

    _mb_global = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __call__(self, *args, **kwargs):
        return self


replaced: list[str] = []  # names replaced during the last load (read right after torch.load)


def _placeholder(qualname: str) -> type:
    return type("Inert", (Inert,), {"_mb_global": qualname})


class Unpickler(pickle.Unpickler):
    _allowed = None

    def find_class(self, module: str, name: str):
        if Unpickler._allowed is None:
            Unpickler._allowed = _get_allowed_globals()
        qualname = f"{module}.{name}"
        obj = Unpickler._allowed.get(qualname)
        if obj is not None:
            return obj
        replaced.append(qualname)
        return _placeholder(qualname)


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


Pickler = pickle.Pickler
UnpicklingError = pickle.UnpicklingError

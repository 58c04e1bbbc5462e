"""Model registry: ``create_model(name, weights=None, num_classes=None)`` and friends.

Importing this package imports every model family, each of which registers its own entries (the one
place to add a new family: one module, one name in the import below).
"""

# families register themselves, in the order `mamba-bench models` lists them
from mamba_bench.models import timm_zoo, vmamba, vmamba_v0, vim, mambavision  # noqa: F401, I001
from mamba_bench.models import start  # noqa: F401
from mamba_bench.models.registry import ModelSpec, create_model, get_spec, register, registered_models
from mamba_bench.models.weights import load_weights_into, read_state_dict, resolve_weights, save_checkpoint

__all__ = [
    "ModelSpec", "create_model", "get_spec", "register", "registered_models",
    "load_weights_into", "read_state_dict", "resolve_weights", "save_checkpoint",
]

"""Model registry: ``create_model(name, weights=None, num_classes=None)`` and friends."""

from mamba_bench.models import mambavision, vim  # noqa: F401  (families register themselves)
from mamba_bench.models.registry import ModelSpec, create_model, get_spec, register, registered_models
from mamba_bench.models.weights import load_weights_into, read_state_dict, resolve_weights, save_checkpoint

__all__ = [
    "ModelSpec", "create_model", "get_spec", "register", "registered_models",
    "load_weights_into", "read_state_dict", "resolve_weights", "save_checkpoint",
]

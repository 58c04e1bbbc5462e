"""Vision Mamba Mender (Hu et al., NeurIPS 2024): what its definitions share.

Mender explains a Mamba block through the correlation of its hidden states with the prediction
(gradient × state): spatially (Grad-ESC, a map over tokens, scored by ECS against the object) and
per channel (Grad-ISC, a vector, scored by ICS across the samples of a class); its repair adds a
loss on each. The formulas come in two definitions, one module each, looked up by name in
``mamba_bench.analysis.definitions``:

* ``official`` (default, ``mender_official.py``): as the official code jiaconghu/Vision-Mamba-Mender
  computes them;
* ``seed`` (``mender_seed.py``): the project seed's literal reading of the paper, kept by name.

This module holds the parts both use, written once: the states, the one model-specific question
"which blocks does this model have" (``mamba_blocks``), the one forward + backward per batch that
yields every (block, state)'s state and gradient (``Definition.correlations``), the perturbation
test's forward pass, and the per-block aggregation of the repair losses.

Mender's states in an SS2D block (v05_noz VMamba has no gate ``z``); where each definition takes
them is its ``captures`` table (names of ``capture_internals``):

========  ======================================  ================  ===============
state     meaning                                 official          seed
========  ======================================  ================  ===============
``x``     in-projection output                    ``in``            ``in``
``c``     depthwise conv                          ``x`` (+ SiLU)    ``conv``
``s``     selective scan, 4 directions merged     ``ssm_norm``      ``ssm``
          (official: after ``out_norm``)
``y``     block output (after the MLP residual)   ``out``           ``out``
========  ======================================  ================  ===============
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bench.errors import MambaBenchError
from mamba_bench.models.internals import capture_internals, ssm_blocks

#: Mender's states, in the order they are computed in a block.
STATES = ("x", "c", "s", "y")


def mamba_blocks(model: nn.Module, name: str = "model") -> list[str]:
    """Module names of the model's Mamba (SS2D) blocks, in forward order; a clear error if none.

    The one place in ``analysis`` that knows how to find a model's SSM blocks (and, in
    ``Definition.correlations``, how to capture their states)."""
    blocks = [n for n, _ in ssm_blocks(model)]
    if not blocks:
        raise MambaBenchError(f"{name} has no selective-scan (Mamba) blocks: Mender's state correlations need a "
                              "Mamba model (vmamba-*, start-m, start-x); Swin and ConvNeXt have no SSM states")
    return blocks


def block_stage(block: str) -> int:
    """Stage of ``layers.<stage>.blocks.<j>``; -1 for a name without one (a flat ``layers.<i>``)."""
    parts = block.split(".")
    return int(parts[1]) if len(parts) > 3 and parts[1].isdigit() and parts[2] == "blocks" else -1


def check_states(states: Sequence[str]) -> list[str]:
    bad = [s for s in states if s not in STATES]
    if bad:
        raise MambaBenchError(f"unknown state {bad[0]!r}; valid: {', '.join(STATES)} (x in-projection, "
                              "c conv, s scan, y block output; v05_noz VMamba has no gate z)")
    if not states:
        raise MambaBenchError("no --states given")
    return list(dict.fromkeys(states))


@dataclass
class Correlations:
    """One batch's correlations: ``external[(block, state)]`` (B, h, w), ``internal[...]`` (B, D)."""

    logits: torch.Tensor
    probs: torch.Tensor
    external: dict[tuple[str, str], torch.Tensor]
    internal: dict[tuple[str, str], torch.Tensor]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps → (B, 1, H, W), bilinear (``align_corners=False``, as the official code's)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)


class Definition:
    """One definition of Mender's maps, scores and repair losses; subclasses fill in the formulas.

    A subclass sets ``name``, ``follows`` (the file or text it follows), ``captures`` (state →
    ``capture_internals`` name), the default loss weights and the number of training images per
    class that the internal loss's templates come from, and implements the methods below that raise
    ``NotImplementedError``. Maps and vectors are computed from every image's own gradient (the
    gradient of the sum of the batch's objectives), so nothing depends on the batch size; where
    the official code's batch-mean gradient scales a loss, that definition applies the factor.
    """

    name: str = ""
    follows: str = ""
    captures: dict[str, str] = {}
    #: a state's capture point in a family that lacks it: a block without an out-norm (Vim,
    #: MambaVision) gives its merged scan output for ``s`` where VMamba's official point is after the norm
    FALLBACKS = {"ssm_norm": "ssm"}

    def captures_for(self, model: nn.Module) -> dict[str, str]:
        have = frozenset().union(*(m.internal_names for _, m in ssm_blocks(model)))
        return {s: n if n in have else self.FALLBACKS.get(n, n) for s, n in self.captures.items()}
    lambda_ext: float = 1.0
    lambda_int: float = 1.0
    template_images: int = 50

    #: the formulas a definition's module provides as functions of these names
    FORMULAS = ("objective", "external_map", "internal_vector", "view_map", "perturbation_inputs",
                "segmentation_iou", "ecs", "sample_ecs", "ics", "repair_blocks", "pick_template_images",
                "template", "external_loss", "internal_loss")

    def __init_subclass__(cls, formulas: dict | None = None, **kwargs):
        """``class X(Definition, formulas=globals())``: every name of ``FORMULAS`` that the class body does
        not set itself is the module's function of that name (a missing one is an error at import)."""
        super().__init_subclass__(**kwargs)
        for name in cls.FORMULAS if formulas is not None else ():
            if name not in cls.__dict__:
                setattr(cls, name, staticmethod(formulas[name]))

    # -- the correlations: one forward and one partial backward for the whole batch ---------------

    def objective(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-image quantity whose gradient the correlations use, (B,)."""
        raise NotImplementedError

    def external_map(self, state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Grad-ESC of one state (B, D, h, w) and its gradient: (B, h, w)."""
        raise NotImplementedError

    def internal_vector(self, state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Grad-ISC of one state and its gradient: (B, D)."""
        raise NotImplementedError

    def correlations(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, blocks: Sequence[str],
                     states: Sequence[str], *, keep_graph: bool = False) -> Correlations:
        """Grad-ESC and Grad-ISC of ``states`` in ``blocks`` for the class ``target`` of each image.

        Every image's objective depends on that image only (LayerNorm, no batch statistics), so the
        gradient of their sum is each image's own gradient. ``keep_graph=True`` keeps the
        correlations differentiable with respect to the parameters through the states (the gradient
        factor stays a constant: no second-order backward through the scan), for the repair losses.
        """
        captures = self.captures_for(model)
        names = {captures[s] for s in states}
        with torch.enable_grad(), capture_internals(model, names=names, detach=False) as rec:
            logits = model(x).float()
            keys = [(b, s) for b in blocks for s in states]
            tensors = [rec[b][captures[s]] for b, s in keys]
            grads = torch.autograd.grad(self.objective(logits, target).sum(), tensors, retain_graph=keep_graph)
        external, internal = {}, {}
        for key, state, grad in zip(keys, tensors, grads, strict=True):
            s = state.float() if keep_graph else state.detach().float()
            external[key] = self.external_map(s, grad.float())
            internal[key] = self.internal_vector(s, grad.float())
        logits = logits if keep_graph else logits.detach()
        return Correlations(logits, logits.softmax(1), external, internal)

    # -- the scores --------------------------------------------------------------------------------

    def view_map(self, e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The map as shown in ``flips.png``: (B, H, W) in [0, 1] at the image size."""
        raise NotImplementedError

    def perturbation_inputs(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The perturbation test's two inputs: x kept where the map says the object is, and x kept
        where it says it is not (x normalised: masked pixels become the mean colour)."""
        raise NotImplementedError

    @torch.no_grad()
    def perturbation_probs(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                           e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """True-class probabilities of the two perturbation inputs, one forward pass for both."""
        keep, drop = self.perturbation_inputs(x, e)
        p = model(torch.cat([keep, drop])).float().softmax(1).gather(1, target.repeat(2)[:, None])[:, 0]
        return p[:len(x)], p[len(x):]

    def segmentation_iou(self, e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Per image, the IoU of the map's object region with the boolean mask (B, H, W)."""
        raise NotImplementedError

    def ecs(self, p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> tuple[float, float, float]:
        """(ECS, its perturbation part, its segmentation part) of a group of images."""
        raise NotImplementedError

    def sample_ecs(self, p_keep: np.ndarray, p_drop: np.ndarray, iou: np.ndarray) -> np.ndarray:
        """ECS of each image on its own."""
        raise NotImplementedError

    def ics(self, internal: torch.Tensor) -> tuple[float, float, float]:
        """(ICS, simplicity, homogeneity) of the Grad-ISC vectors (J, D) of J samples of one class."""
        raise NotImplementedError

    # -- the repair --------------------------------------------------------------------------------

    def repair_blocks(self, blocks: list[str]) -> tuple[list[str], list[str]]:
        """The blocks of the external loss and of the internal loss, by default."""
        raise NotImplementedError

    def pick_template_images(self, labels: np.ndarray, per_class: int,
                             true_probs: Callable[[], np.ndarray]) -> np.ndarray:
        """Indices of the training images the class templates come from (``true_probs()``: each
        training image's true-class probability, computed only if called)."""
        raise NotImplementedError

    def template(self, internal: torch.Tensor, correct: np.ndarray) -> torch.Tensor:
        """A class's template (D,) from the Grad-ISC vectors (J, D) of its picked images."""
        raise NotImplementedError

    def external_loss(self, e: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The external loss of one state's maps (B, h, w) against float masks (B, H, W)."""
        raise NotImplementedError

    def internal_loss(self, i: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        """The internal loss of one state's vectors (B, D) against each image's class template."""
        raise NotImplementedError

    def repair_losses(self, corr: Correlations, masks: torch.Tensor, labels: torch.Tensor,
                      ext_keys: Sequence[tuple[str, str]], int_keys: Sequence[tuple[str, str]],
                      templates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(external, internal) loss of a batch: each summed over states, averaged over blocks (both
        definitions aggregate this way); 0 where no key is given."""
        zero = torch.zeros((), device=corr.logits.device)

        def per_block(keys, loss):
            n_blocks = len({b for b, _ in keys})
            return sum((loss(k) for k in keys), zero) / max(n_blocks, 1)

        ext = per_block(ext_keys, lambda k: self.external_loss(corr.external[k], masks))
        itn = per_block(int_keys, lambda k: self.internal_loss(corr.internal[k], templates[k[0]][labels]))
        return ext, itn

"""``mamba-bench predict``: top-k classes of a few images with one model."""

from __future__ import annotations

import json

import torch

from mamba_bench.errors import MambaBenchError
from mamba_bench.eval.corrupt import resolve_device
from mamba_bench.models.preprocess import to_model_input
from mamba_bench.models.registry import get_spec, spec_for_weights
from mamba_bench.models.weights import load_weights_into, release_ref


def class_names(num_classes: int, weights_path=None) -> list[str]:
    """ImageNet descriptions for 1000 classes; names stored in our own checkpoints otherwise."""
    if weights_path is not None:
        from mamba_bench.models.weights import checkpoint_metadata

        meta = checkpoint_metadata(weights_path)
        for key in ("class_names", "classes"):  # demo checkpoints / dg-train checkpoints
            names = json.loads(meta[key]) if key in meta else None
            if names is not None and len(names) == num_classes:
                return [str(n) for n in names]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def predict_images(model: str, images: list[str], *, weights: str | None = None, topk: int = 5,
                   device: str = "auto", cache_dir: str | None = None) -> tuple[list[dict], list[str]]:
    """Return (one result per readable image, one error line per unreadable image)."""
    from mamba_bench.data import load_image_rgb
    from mamba_bench.data.images import ImageReadError
    from mamba_bench.models.preprocess import image_for_spec

    if topk < 1:
        raise MambaBenchError("--topk must be at least 1")
    spec = spec_for_weights(get_spec(model), weights)
    ref = weights or release_ref(spec)
    if ref is None:
        raise MambaBenchError(f"model {model} has no released weights; pass --weights FILE")
    net = spec.build()
    path = load_weights_into(net, ref, spec, cache_dir=cache_dir)
    dev = resolve_device(device)
    net.eval().to(dev)
    names = class_names(spec.num_classes, path)
    results, errors = [], []
    for image in images:
        try:
            arr = image_for_spec(load_image_rgb(image), spec)
        except ImageReadError as exc:
            errors.append(f"{image}: {exc}")
            continue
        except OSError as exc:
            errors.append(f"{image}: {exc.strerror or exc}")
            continue
        with torch.inference_mode():
            logits = net(to_model_input(torch.from_numpy(arr)[None], spec, dev)).float()[0].cpu()
        prob = logits.softmax(0)
        k = min(topk, logits.numel())
        top = prob.topk(k)
        results.append({"image": image, "model": model, "topk": [
            {"rank": r + 1, "index": int(i), "label": names[int(i)], "logit": float(logits[i]),
             "probability": float(p)} for r, (p, i) in enumerate(zip(top.values, top.indices, strict=True))]})
    return results, errors

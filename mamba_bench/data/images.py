"""Decoding real-world image files and the ImageNet eval preprocessing.

Files in the wild are CMYK, RGBA, palette, 16-bit or grayscale; all of them become 8-bit RGB here
(transparency composited onto white, 16-bit scaled by its range rather than clipped). Truncated or
unreadable files raise :class:`ImageReadError`, which the benchmark records as a skip. EXIF
orientation is not applied: ImageNet's labels and every published number were made without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamba_bench.errors import MambaBenchError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"})


class ImageReadError(MambaBenchError):
    """One image file cannot be used (the run skips it and says so in the manifest)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "I" and arr.max(initial=0) > 65535:
            top = float(np.iinfo(np.int32).max)
        gray = np.clip(np.round(arr.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) > 1.0 else 1.0
        gray = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully (so truncation is caught here) and return 8-bit RGB."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path.name}: empty file")
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img).copy()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path.name}: cannot identify image file") from None
    except FileNotFoundError:
        raise ImageReadError(f"{path.name}: file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated image" if "truncat" in str(exc).lower() else f"unreadable ({str(exc)[:80]})"
        raise ImageReadError(f"{path.name}: {reason}") from None
    except Image.DecompressionBombError:
        raise ImageReadError(f"{path.name}: image too large (decompression bomb guard)") from None


def eval_preprocess(img: Image.Image, image_size: int = 224, resize: int | None = None) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bicubic), center-crop ``image_size``: uint8 HxWx3.

    ``resize`` defaults to ``image_size * 256 / 224`` (the standard 0.875 crop).
    """
    if resize is None:
        resize = int(round(image_size * 256 / 224))
    w, h = img.size
    scale = resize / min(w, h)
    nw, nh = max(resize, round(w * scale)), max(resize, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - image_size) / 2.0))
    top = int(round((nh - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

"""Decoding real-world image files and the ImageNet eval preprocessing.

Every image file becomes 8-bit RGB here, the way the ImageNet literature loads it (PIL, then
``convert("RGB")``), with the awkward cases made explicit rather than left to PIL's defaults:

* grayscale (``L``), 1-bit (``1``), CMYK, YCbCr, LAB: PIL's own conversion to RGB (CMYK uses
  PIL's plain formula; embedded ICC profiles are not applied, as torchvision/timm loaders don't);
* palette (``P``): through RGBA when the palette has a transparent entry, else straight to RGB;
* transparency (``RGBA``, ``LA``, ``PA``): composited onto **white**. ``convert("RGB")`` would
  drop alpha and expose whatever colour the encoder left under transparent pixels (often black
  or garbage); white is what a viewer shows and what web-scraped product photos assume;
* 16-bit (``I;16*``: 16-bit PNG/TIFF): scaled by the 16-bit range, ``v * 255 / 65535``, so 65535
  is white and 32768 is mid-grey. PIL's ``convert("L")`` would clip everything above 255 to white;
* 32-bit integer (``I``) and float (``F``) files carry no reliable range (a 32-bit TIFF usually
  holds 8- or 16-bit data): integers are scaled by the smallest of the 8/16/32-bit ranges that
  holds the file's maximum (the 16-bit range when the decoder says the samples were 16-bit),
  floats by 1.0 when their maximum is <= 1, else the same way; negatives become black;
* 16-bit RGB(A) PNGs: PIL already decodes them to 8 bits per channel (the high byte, which is
  the 16-bit range scaled down), so nothing is left to do;
* multi-frame files (GIF, TIFF): the first frame.

EXIF orientation is deliberately NOT applied: ImageNet's labels, torchvision's and timm's loaders
and every published accuracy were made on the stored pixel order, and applying it would change
the images a model is scored on.

Truncated or unreadable files raise :class:`ImageReadError` (the benchmark records a skip). The
file is decoded completely inside :func:`load_image_rgb`, so truncation is found here and not
hidden: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamba_bench.errors import MambaBenchError

#: File name extensions (lower-case) that count as images in a data directory. ``.ppm`` and
#: ``.gif`` are read too because PIL reads them and some re-encoded ImageNet copies use them.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"})

_INT_RAWMODE = re.compile(r"^I;(8|16|32)(?:B|L|N)?(S?)")


class ImageReadError(MambaBenchError):
    """One image file cannot be used; the run skips it and records ``reason``.

    ``str(exc)`` is the short reason alone ("truncated image", "cannot identify image file", ...):
    callers already know which image they asked for and put the id or path in front of it.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else Path(path)


def _source_bits(img: Image.Image) -> int | None:
    """Bits per sample the decoder says the file stores (read before ``load()`` clears the tile)."""
    tag = getattr(img, "tag_v2", None)  # TIFF
    if tag is not None:
        bits = tag.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int):
            return bits
    for tile in getattr(img, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and (m := _INT_RAWMODE.match(raw)):
            return int(m.group(1))
    return None


def _range_holding(top: float) -> float:
    """The smallest of the 8/16/32-bit unsigned maxima that is >= ``top``."""
    for limit in (255.0, 65535.0, 4294967295.0):
        if top <= limit:
            return limit
    return float(top)


def _gray_to_rgb(arr: np.ndarray, full_scale: float) -> Image.Image:
    gray = np.clip(np.rint(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def _to_rgb(img: Image.Image, source_bits: int | None = None) -> Image.Image:
    """Any PIL mode → 8-bit RGB by the rules in the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(img), 65535.0)
    if mode == "I":
        arr = np.asarray(img)
        if source_bits is not None and source_bits <= 16:
            return _gray_to_rgb(arr, 255.0 if source_bits <= 8 else 65535.0)
        return _gray_to_rgb(arr, _range_holding(float(arr.max(initial=0))))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max(initial=0.0))
        return _gray_to_rgb(arr, 1.0 if top <= 1.0 else _range_holding(top))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` completely and return it as 8-bit RGB (see the module docstring).

    Raises :class:`ImageReadError` for a missing, empty, truncated, unidentifiable or otherwise
    undecodable file; never a bare PIL/OS exception, so one bad file costs one recorded skip.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read file ({exc.strerror or exc})", path) from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)", path)
    try:
        with Image.open(path) as img:
            bits = _source_bits(img)
            img.load()  # the whole decode happens here, so truncation is detected here
            try:
                rgb = _to_rgb(img, bits)
            except (ValueError, OSError) as exc:
                raise ImageReadError(f"cannot convert image mode {img.mode} to RGB ({exc})", path) from None
            return rgb.copy() if rgb is img else rgb
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("cannot identify image file", path) from None
    except Image.DecompressionBombError:
        raise ImageReadError("image too large (PIL decompression-bomb limit)", path) from None
    except IsADirectoryError:
        raise ImageReadError("is a directory, not an image file", path) from None
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except MemoryError:
        raise ImageReadError("out of memory while decoding", path) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError) as exc:
        # PIL's decoders signal malformed data with any of these; "truncated" is the common one.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = "truncated image" if "truncat" in text.lower() else f"corrupt image data ({text[:80]})"
        raise ImageReadError(reason, path) from None


def default_resize(image_size: int) -> int:
    """The shorter-side size before the center crop: ``floor(image_size * 256 / 224)``.

    That is timm's ``floor(img_size / crop_pct)`` with the standard ``crop_pct = 0.875``: 256 for
    224, 73 for 64, 438 for 384.
    """
    return image_size * 256 // 224


def eval_preprocess(img: Image.Image, image_size: int = 224, resize: int | None = None) -> np.ndarray:
    """ImageNet eval preprocessing: shorter side → ``resize`` (bicubic), center crop ``image_size``.

    Done once per image, before any corruption, so every corruption sees the pixels a model's
    clean accuracy was measured on. Sizes follow torchvision's ``Resize(resize)`` +
    ``CenterCrop(image_size)`` exactly (long side ``int(resize * long / short)``, crop offset
    ``round((side - image_size) / 2)``), so results match the published pipelines.

    ``resize=None`` (the default) is :func:`default_resize`: 256 at 224 px, and the same 256/224
    ratio at any other ``image_size``; an explicit ``resize`` is used as given. Returns a new uint8
    array, ``image_size x image_size x 3``.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, not {image_size}")
    if resize is None:
        resize = default_resize(image_size)
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")
    if img.mode != "RGB":
        img = _to_rgb(img)
    w, h = img.size
    if w <= h:
        nw, nh = resize, int(resize * h / w)
    else:
        nw, nh = int(resize * w / h), resize
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - image_size) / 2.0))
    top = int(round((nh - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.array(img, dtype=np.uint8)


#: PIL filters by the names checkpoints and specs use for them.
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS}


def stretch_resize(img: Image.Image, image_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The whole image squeezed to ``image_size`` × ``image_size`` (no crop): DomainBed's transform,
    which ``dg-train`` trains on and evaluates with. Returns uint8 ``image_size x image_size x 3``.
    """
    if interpolation not in RESAMPLE:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(RESAMPLE)}")
    if img.mode != "RGB":
        img = _to_rgb(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), RESAMPLE[interpolation])
    return np.array(img)

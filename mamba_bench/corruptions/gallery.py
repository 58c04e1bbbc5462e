"""``mamba-bench corruptions --preview IMG``: one picture of an image under every corruption.

The gallery shows exactly what a model is fed: the image goes through ImageNet eval preprocessing
first (shorter side to 256/224 of the crop, bicubic; center crop), then through
:func:`~mamba_bench.corruptions.suite.apply_corruption` with the same per-image seeding as a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamba_bench.errors import MambaBenchError, UnknownNameError

from .suite import SEVERITIES, Suite, apply_corruption

PANEL_PX = 160  # side of one image panel in the PNG
TITLE_PX = 22  # height of the title band above each panel
_DPI = 100


def _load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully as 8-bit RGB; any failure is the user's file, so a one-line error."""
    if not path.is_file():
        reason = "not a file" if path.exists() else "file not found"
        raise MambaBenchError(f"cannot read image {path}: {reason}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale: scale, not clip
                arr = np.asarray(img, dtype=np.float64)
                top = float(arr.max()) if arr.size else 0.0
                arr = arr / (255.0 if top <= 255 else 65535.0 if top <= 65535 else top) * 255.0
                img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise MambaBenchError(f"cannot read image {path}: not a recognised image format") from None
    except Image.DecompressionBombError:
        raise MambaBenchError(f"cannot read image {path}: too large (PIL decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        text = " ".join(str(exc).split())[:100] or type(exc).__name__
        raise MambaBenchError(f"cannot read image {path}: {text}") from None


def eval_crop(img: Image.Image, size: int = 224) -> np.ndarray:
    """ImageNet eval preprocessing as torchvision does it: ``Resize(size*256//224)`` + ``CenterCrop(size)``.

    Shorter side to ``size * 256 // 224`` (bicubic; the long side ``int(resize * long / short)``),
    then a centered ``size x size`` crop (offset ``round((side - size) / 2)``). Returns uint8 HxWx3.
    """
    resize = size * 256 // 224
    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def make_gallery(image_path: str | os.PathLike, out_png: str | os.PathLike, suite: Suite, *,
                 severities: Sequence[int] = (1, 3, 5), seed: int = 0, size: int = 224) -> Path:
    """Write a PNG grid: one row per corruption; columns: clean, then each requested severity.

    A severity-free corruption shows one corrupted panel; a severity a corruption lacks (user
    suites may define fewer than 5) leaves its cell empty. The image id used for seeding is the
    file name, so the preview matches what a run does with the same seed and id. The PNG is
    written to a temporary file and renamed, so ``out_png`` is never left half-written.
    """
    if not isinstance(size, int) or size < 8:
        raise MambaBenchError(f"gallery image size must be an integer >= 8, got {size!r}")
    sevs = list(dict.fromkeys(severities))
    for s in sevs:
        if isinstance(s, bool) or s not in SEVERITIES:
            raise UnknownNameError(f"severity {s} is not valid; valid: {', '.join(map(str, SEVERITIES))}")
    if not sevs:
        raise UnknownNameError(f"no severity named; valid: {', '.join(map(str, SEVERITIES))}")
    out = Path(out_png)
    if out.is_dir():
        raise MambaBenchError(f"--out {out} is a directory; name the gallery's PNG file (e.g. {out / 'gallery.png'})")
    try:  # before the gallery is made: a path that cannot be written fails at once
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MambaBenchError(f"cannot create {out.parent} for the gallery: {exc.strerror or exc}") from None
    image_path = Path(image_path)
    img = eval_crop(_load_rgb(image_path), size)
    image_id = image_path.name

    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never one picked up from the environment
    import matplotlib.pyplot as plt

    rows = list(suite.corruptions.values())
    cols = 1 + len(sevs)
    cell_h = PANEL_PX + TITLE_PX
    fig = plt.figure(figsize=(cols * PANEL_PX / _DPI, len(rows) * cell_h / _DPI), dpi=_DPI)
    try:
        for r, c in enumerate(rows):
            panels = [("clean", img)]
            for s in ([0] if c.severity_free else sevs):
                if s in c.severities:
                    label = "no severity" if c.severity_free else f"severity {s}"
                    panels.append((label, apply_corruption(c, s, img, seed=seed, image_id=image_id)))
            for k, (label, arr) in enumerate(panels):
                ax = fig.add_axes((k / cols, 1 - (r * cell_h + TITLE_PX + PANEL_PX) / (len(rows) * cell_h),
                                   1 / cols, PANEL_PX / (len(rows) * cell_h)))
                ax.imshow(arr, interpolation="bilinear")
                ax.set_axis_off()
                ax.set_title(f"{c.title}: {label}", fontsize=6, pad=2)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, format="png", dpi=_DPI)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return out

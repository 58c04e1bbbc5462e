"""Road-segmentation data: the Massachusetts Roads layouts and a seeded procedural generator.

On disk (``--data DIR``), either layout, image and mask paired by file stem:

* ``{train,valid,test}/{sat,map}/`` (the original release: ``sat/*.tiff``, ``map/*.tif``);
* Kaggle's ``tiff/{train,train_labels,val,val_labels,test,test_labels}/``.

Masks must be single-valued per pixel {0, 255} or {0, 1} (road = the high value) and the size of
their image; unmatched files, other sizes and other values are errors that list the files.

Embedded (``--data synthetic-roads``, and ``synthetic-roads-b`` for pre-training the ``--init``
checkpoint offline): seeded 256 px tiles of curved roads of varying width drawn over textured
backgrounds. The two styles differ in palette, texture scale, road width and curvature, so a model
pre-trained on one meets a shifted domain when fine-tuned on the other, as the report's U-Mamba
(trained on medical images) met aerial roads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_bench.errors import DataLayoutError

EMBEDDED_ROADS = {
    "synthetic-roads": "procedural aerial-like tiles: grey/tan roads on green-brown fields (256 px)",
    "synthetic-roads-b": "another style (blue-grey ground, thinner straighter roads) for offline pre-training",
}
TILE = 256
SYNTH_TILES = {"train": 48, "valid": 12, "test": 12}


@dataclass
class RoadSplit:
    """Images (N, H, W, 3) uint8 and binary masks (N, H, W) uint8 of one split, with their names."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)


# -- procedural tiles ------------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: random grids bilinearly upsampled and summed over octaves."""
    from PIL import Image

    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    cells = max(2, size // scale)
    for _ in range(4):
        grid = rng.random((cells, cells)).astype(np.float32)
        up = np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR))
        out += amp * up
        total += amp
        amp *= 0.5
        cells = min(size, cells * 2)
    return out / total


def synth_tile(seed: int, style: str = "a", size: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """One tile and its mask; the same (seed, style) always gives the same pixels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    a = style == "a"
    tex = _noise(rng, size, 32 if a else 12)
    base = np.array([96, 110, 60] if a else [90, 100, 120], np.float32)
    alt = np.array([140, 120, 80] if a else [150, 150, 170], np.float32)
    img = base + (alt - base) * tex[..., None]
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.integers(2, 5)):
        # a road: a smooth random walk across the tile, drawn as a polyline of constant width
        x, y = rng.uniform(0, size, 2)
        ang = rng.uniform(0, 2 * np.pi)
        turn = 0.12 if a else 0.03
        pts = []
        for _ in range(60):
            pts.append((float(x), float(y)))
            ang += rng.normal(0, turn)
            x, y = x + 9 * np.cos(ang), y + 9 * np.sin(ang)
        width = int(rng.integers(5, 13) if a else rng.integers(3, 7))
        draw.line(pts, fill=255, width=width, joint="curve")
    m = np.asarray(mask) > 127
    road = np.array([150, 150, 145] if a else [60, 60, 70], np.float32) + rng.normal(0, 8, (size, size, 1))
    img = np.where(m[..., None], road, img) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), m.astype(np.uint8)


def synthetic_split(name: str, split: str) -> RoadSplit:
    style = "a" if name == "synthetic-roads" else "b"
    offset = {"train": 0, "valid": 10_000, "test": 20_000}[split] + (0 if style == "a" else 50_000)
    tiles = [synth_tile(offset + i, style) for i in range(SYNTH_TILES[split])]
    names = [f"{name}/{split}/{i:03d}" for i in range(len(tiles))]
    return RoadSplit([t[0] for t in tiles], [t[1] for t in tiles], names)


# -- Massachusetts Roads on disk ---------------------------------------------------------------------------------
_LAYOUTS = {
    "original": {"train": ("train/sat", "train/map"), "valid": ("valid/sat", "valid/map"),
                 "test": ("test/sat", "test/map")},
    "kaggle": {"train": ("tiff/train", "tiff/train_labels"), "valid": ("tiff/val", "tiff/val_labels"),
               "test": ("tiff/test", "tiff/test_labels")},
}
_EXT = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


def detect_layout(root: Path) -> str:
    for name, dirs in _LAYOUTS.items():
        if (root / dirs["train"][0]).is_dir():
            return name
    raise DataLayoutError(f"{root}: no Massachusetts Roads layout found (expected train/sat + train/map, or "
                          "tiff/train + tiff/train_labels)")


def _files(d: Path) -> dict[str, Path]:
    if not d.is_dir():
        raise DataLayoutError(f"{d} does not exist")
    return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in _EXT and not p.name.startswith(".")}


def pair_files(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    img_dir, mask_dir = (root / p for p in _LAYOUTS[detect_layout(root)][split])
    imgs, masks = _files(img_dir), _files(mask_dir)
    if not imgs:
        raise DataLayoutError(f"{img_dir} holds no images")
    no_mask = sorted(set(imgs) - set(masks))
    no_img = sorted(set(masks) - set(imgs))
    if no_mask or no_img:
        parts = []
        if no_mask:
            parts.append(f"images without a mask: {', '.join(no_mask[:8])}" + (" ..." if len(no_mask) > 8 else ""))
        if no_img:
            parts.append(f"masks without an image: {', '.join(no_img[:8])}" + (" ..." if len(no_img) > 8 else ""))
        raise DataLayoutError(f"{root} ({split}): unmatched pairs — {'; '.join(parts)}")
    return [(k, imgs[k], masks[k]) for k in sorted(imgs)]


def load_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from mamba_bench.data.images import load_image_rgb

    img = np.array(load_image_rgb(image))  # writable: torch.from_numpy warns on a read-only view
    with Image.open(mask) as m:
        arr = np.asarray(m.convert("L") if m.mode not in ("L", "1", "P", "I;16", "I") else m)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != img.shape[:2]:
        raise DataLayoutError(f"{mask.name}: mask is {arr.shape[1]}x{arr.shape[0]}, its image "
                              f"{img.shape[1]}x{img.shape[0]}")
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        raise DataLayoutError(f"{mask.name}: mask values must be 0/255 or 0/1, found {values[:6].tolist()}"
                              + (" ..." if len(values) > 6 else ""))
    return img, (arr > 0).astype(np.uint8)


def open_roads(data: str, split: str) -> RoadSplit:
    if data in EMBEDDED_ROADS:
        return synthetic_split(data, split)
    root = Path(data)
    if not root.is_dir():
        raise DataLayoutError(f"--data {data}: not a directory nor one of {', '.join(EMBEDDED_ROADS)}")
    pairs = pair_files(root, split)
    images, masks = [], []
    for _, ip, mp in pairs:
        im, mk = load_pair(ip, mp)
        images.append(im)
        masks.append(mk)
    return RoadSplit(images, masks, [os.path.relpath(ip, root) for _, ip, _ in pairs])

"""The layout of a set written by ``mamba-bench materialize``: ``ROOT/materialized.json`` beside
``ROOT/<corruption>/<severity>/<image id>.png`` (clean images under ``ROOT/clean/0/``).

Reading it is data; writing it is evaluation (``eval/materialize.py``). The PNGs hold exactly the
pixels on-the-fly corruption makes (already preprocessed), so they are read as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mamba_bench.data.images import ImageReadError
from mamba_bench.data.imageset import ImageSet, Sample
from mamba_bench.data.layouts import Layout, register_layout
from mamba_bench.errors import MambaBenchError

MANIFEST = "materialized.json"
KIND = "mamba-bench materialized corruption set"


def cell_dir(corruption: str, severity: int) -> str:
    return f"{corruption}/{severity}"


def image_file(image_id: str) -> str:
    """The PNG's path under a cell folder: the image id with its suffix replaced by ``.png``."""
    p = Path(image_id)
    return str(p.with_suffix(".png")) if p.suffix else f"{image_id}.png"


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy warns on a read-only view


def read_manifest(root: Path) -> dict:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MambaBenchError(f"{root / MANIFEST} cannot be read: {exc}") from None
    if m.get("kind") != KIND:
        raise MambaBenchError(f"{root / MANIFEST} is not a mamba-bench materialized set")
    return m


def check_run(manifest: dict, root: str, seed: int, suite_sha: str, suite_name: str,
              cells: list[tuple[object | None, int]], per_class: int | None = None) -> None:
    """A corrupt run on a materialized set must ask for what was written, with its seed and suite.

    ``--per-class K`` on the set picks the images the original data would give only when the set
    holds whole classes (materialized without ``--per-class`` and nothing skipped) or K is the
    set's own value.
    """
    made = manifest["config"].get("per_class")
    if per_class is not None and per_class != made and (made is not None or manifest.get("skipped")):
        raise MambaBenchError(f"{root} was materialized with --per-class {made}" + (
            f" and {len(manifest['skipped'])} unreadable images skipped" if made is None else "") +
            f"; --per-class {per_class} on it would not pick the images of the original data: drop it or "
            "materialize again")
    if seed != manifest["seed"]:
        raise MambaBenchError(f"{root} was materialized with --seed {manifest['seed']}; pass that seed (the "
                              "corruptions on disk depend on it) or materialize again")
    if suite_sha != manifest["suite"]["sha256"]:
        raise MambaBenchError(f"{root} was materialized with suite {manifest['suite']['name']} "
                              f"({manifest['suite']['path']}), not {suite_name}; pass --suite "
                              f"{manifest['suite']['path']}")
    have = {(c, s) for c, s in manifest["cells"]}
    missing = [f"{c.name} {s}" for c, s in cells if c is not None and (c.name, s) not in have]
    if missing:
        raise MambaBenchError(f"{root} holds no {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")
                              + " (corruption severity); choose --corruptions / --severities it has")


class DiskReader:
    """Reads ``(corruption, severity, image)`` from a materialized set (picklable for workers)."""

    def __init__(self, root: str | Path, files: dict[str, str]):
        self.root, self.files = Path(root), files

    def __call__(self, corruption: str, severity: int, image_id: str) -> np.ndarray:
        path = self.root / cell_dir(corruption, severity) / self.files[image_id]
        try:
            return read_png(path)
        except OSError as exc:
            raise MambaBenchError(f"materialized image {path} cannot be read ({exc}); materialize again") from None


def _read_sample(path: Path) -> np.ndarray:
    try:
        return read_png(path)
    except OSError as exc:
        raise ImageReadError(f"cannot read the materialized image ({exc})", path) from None


def _open(root: Path, request) -> ImageSet:
    """The samples and classes of the set's manifest."""
    m = read_manifest(root)
    d = m["data"]
    samples = [Sample(s["image_id"], int(s["label"]), root / "clean" / "0" / s["file"]) for s in m["samples"]]
    return ImageSet(f"{d['name']} (materialized)", str(root), "materialized", samples, list(d["class_names"]),
                    int(d["num_classes"]), int(d["image_size"]), notes=list(d.get("notes", [])),
                    class_ids=list(d.get("class_ids", [])), resize=d.get("resize"), materialized=m,
                    reader=_read_sample)


register_layout(Layout("materialized", lambda root: (root / MANIFEST).is_file(), _open, priority=10,
                       description=f"a set written by mamba-bench materialize ({MANIFEST})"))

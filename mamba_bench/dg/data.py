"""Domain-generalization data: DomainBed's directory layouts and the embedded rotated digits.

A DG data set is a list of domains that share one set of classes. DomainBed reads
``<data-root>/<DIR>/<domain>/<class>/<image>`` and indexes domains and classes by the *sorted*
folder names it finds, so a stray folder among the domains silently shifts every domain index and
a class folder missing in one domain shifts its labels. Here the expected domains are fixed per
data set, and any other folder among them, or class folders that differ between domains, is an
error that names the offending entries. Plain files beside the domain folders (OfficeHome ships
``ImageInfo.csv`` and ``imagelist.txt`` there) and hidden entries are not domains and are ignored.

Splits (``protocol``):

* ``domainbed`` (default), index-identical to DomainBed's ``scripts/train.py`` +
  ``lib/misc.py:split_dataset``: every domain ``env_i`` is shuffled with
  ``np.random.RandomState(seed_hash(trial_seed, env_i)).shuffle`` of its keys ``0..n-1``; the first
  ``int(n * 0.2)`` keys are ``out``, the rest ``in`` (``holdout_fraction`` 0.2). ``seed_hash`` is
  DomainBed's: md5 of ``str(args)`` modulo 2^31. Training uses the ``in`` split of the training
  domains, model selection the ``out`` splits (training-domain validation, best step) or the test
  domain's ``out`` split at the last step (oracle, no early stopping), and the test accuracy is the
  test domain's ``in`` split, as DomainBed reports it;
* ``dgmamba``, as DGMamba's ``datautil/getdataloader.py``: every *training* domain is split 80/20 by
  scikit-learn's ``StratifiedShuffleSplit(2, test_size=0.2, train_size=0.8, random_state=seed)``
  (the first of its splits, the same seed for every domain), and the test domain is evaluated
  whole (split ``all``);
* ``ours``: this project's earlier split (``np.random.default_rng(seed_hash(...)).permutation``),
  kept to reproduce results measured with it. Same sizes as DomainBed's, other indices.

``rotated-digits`` (embedded, offline): scikit-learn's 1797 real digits at 64 px, shuffled once
(seed 0) and dealt into six disjoint domains rotated by 0, 15, 30, 45, 60 and 75 degrees, like
DomainBed's RotatedMNIST (which deals MNIST into rotated domains the same way).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mamba_bench.data.imagenet import _ignored, walk_class
from mamba_bench.errors import DataLayoutError, UnknownNameError

HOLDOUT_FRACTION = 0.2
SPLIT_PROTOCOLS = ("domainbed", "dgmamba", "ours")

#: name → (DomainBed directory under --data-root, domain folders in DomainBed's order)
DOMAINBED_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pacs": ("PACS", ("art_painting", "cartoon", "photo", "sketch")),
    "vlcs": ("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007")),
    "office-home": ("office_home", ("Art", "Clipart", "Product", "Real World")),
    "terra-incognita": ("terra_incognita", ("location_100", "location_38", "location_43", "location_46")),
    "domain-net": ("domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
}
ROTATIONS = (0, 15, 30, 45, 60, 75)
EMBEDDED_DG = {"rotated-digits": "scikit-learn digits dealt into 6 domains rotated by 0-75 degrees (64 px)"}
DG_DATASETS = sorted([*DOMAINBED_LAYOUTS, *EMBEDDED_DG])


@dataclass
class Domain:
    """One domain: its samples (path or embedded row) with labels, split into in/out per trial seed."""

    name: str
    labels: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, trial_seed: int, index: int, protocol: str = "domainbed") -> tuple[np.ndarray, np.ndarray]:
        """(in, out) sample indices, sorted: a seeded 80/20 split, the same for every algorithm of a trial."""
        n = len(self)
        n_out = int(n * HOLDOUT_FRACTION)
        if protocol == "domainbed":
            # RandomState(seed).permutation(n) shuffles arange(n) exactly as DomainBed shuffles its key list
            keys = np.random.RandomState(seed_hash(trial_seed, index)).permutation(n)
        elif protocol == "ours":
            keys = np.random.default_rng(seed_hash(trial_seed, index)).permutation(n)
        elif protocol == "dgmamba":
            return self._stratified_split(trial_seed)
        else:
            raise UnknownNameError(f"unknown split protocol {protocol!r}; valid: {', '.join(SPLIT_PROTOCOLS)}")
        return np.sort(keys[n_out:]), np.sort(keys[:n_out])

    def _stratified_split(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import StratifiedShuffleSplit

        sss = StratifiedShuffleSplit(2, test_size=HOLDOUT_FRACTION, train_size=1 - HOLDOUT_FRACTION,
                                     random_state=seed)
        try:
            tr, te = next(sss.split(np.arange(len(self)), self.labels))
        except ValueError as exc:  # e.g. a class with a single image cannot be stratified
            raise DataLayoutError(f"domain {self.name}: DGMamba's stratified 80/20 split is impossible ({exc}); "
                                  "use --protocol domainbed") from None
        return np.sort(tr), np.sort(te)


@dataclass
class DGDataset:
    name: str
    root: str
    domains: list[Domain]
    classes: list[str]

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def index(self, domain: str) -> int:
        names = self.domain_names
        if domain not in names:
            raise UnknownNameError(f"{self.name} has no domain {domain!r}; its domains: {', '.join(names)}")
        return names.index(domain)


def seed_hash(*args: object) -> int:
    """DomainBed's ``misc.seed_hash``: md5 of ``str(args)`` (the tuple) modulo 2^31, stable across processes."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def cell_splits(ds: DGDataset, protocol: str, trial_seed: int, test_domain: str) -> dict[str, dict[str, list[int]]]:
    """Every domain's evaluation splits for one cell: ``in``/``out``, and under ``dgmamba`` the test
    domain whole as ``all`` (it has no ``in``/``out``)."""
    if protocol not in SPLIT_PROTOCOLS:
        raise UnknownNameError(f"unknown --protocol {protocol!r}; valid: {', '.join(SPLIT_PROTOCOLS)}")
    test_i = ds.index(test_domain)
    splits = {}
    for i, d in enumerate(ds.domains):
        if protocol == "dgmamba" and i == test_i:
            splits[d.name] = {"all": list(range(len(d)))}
            continue
        a, b = d.split(trial_seed, i, protocol)
        splits[d.name] = {"in": a.tolist(), "out": b.tolist()}
    return splits


def open_dg_dataset(name: str, data_root: str | os.PathLike | None = None) -> DGDataset:
    """Open a DG data set by name: one of :data:`DG_DATASETS`; DomainBed layouts need ``data_root``."""
    if name in EMBEDDED_DG:
        return rotated_digits()
    if name not in DOMAINBED_LAYOUTS:
        raise UnknownNameError(f"unknown DG data set {name!r}; valid: {', '.join(DG_DATASETS)}")
    if data_root is None:
        raise DataLayoutError(f"--data-root is needed for {name} (the folder that holds {DOMAINBED_LAYOUTS[name][0]}/)")
    return _scan_domainbed(name, Path(data_root))


def _scan_domainbed(name: str, data_root: Path) -> DGDataset:
    folder, expected = DOMAINBED_LAYOUTS[name]
    root = data_root / folder
    if not root.is_dir():
        alt = data_root if data_root.name == folder else None
        if alt is None or not alt.is_dir():
            raise DataLayoutError(f"{root} does not exist: --data-root must hold the DomainBed folder {folder}/")
        root = alt
    # Only folders are domains: real downloads keep files beside them (OfficeHome's ImageInfo.csv
    # and imagelist.txt), and DomainBed lists sub-directories only, so plain files are ignored.
    folders = sorted(e.name for e in os.scandir(root) if not _ignored(e.name) and e.is_dir())
    missing = [d for d in expected if d not in folders]
    if missing:
        raise DataLayoutError(f"{root}: missing domain folder(s) {', '.join(missing)} "
                              f"(expected {', '.join(expected)})")
    stray = [e for e in folders if e not in expected]
    if stray:
        raise DataLayoutError(f"{root}: unexpected folders among the domains: {', '.join(stray[:5])}"
                              + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
                              + " (DomainBed would silently count them as domains; move them away)")
    class_sets = {}
    for d in expected:
        droot = root / d
        if not droot.is_dir():
            raise DataLayoutError(f"{droot} is not a folder")
        names = sorted(e.name for e in os.scandir(droot) if not _ignored(e.name))
        files = [n for n in names if not (droot / n).is_dir()]
        if files:
            raise DataLayoutError(f"{droot}: files among the class folders: {', '.join(files[:5])} "
                                  "(each domain must hold only class folders)")
        class_sets[d] = names
    reference = class_sets[expected[0]]
    for d in expected[1:]:
        if class_sets[d] != reference:
            only_ref = sorted(set(reference) - set(class_sets[d]))
            only_d = sorted(set(class_sets[d]) - set(reference))
            parts = []
            if only_ref:
                parts.append(f"missing in {d}: {', '.join(only_ref[:5])}")
            if only_d:
                parts.append(f"only in {d}: {', '.join(only_d[:5])}")
            raise DataLayoutError(f"{root}: class folders differ between {expected[0]} and {d} ({'; '.join(parts)})")
    if not reference:
        raise DataLayoutError(f"{root / expected[0]} holds no class folders")
    domains = []
    for d in expected:
        paths, labels = [], []
        for ci, cls in enumerate(reference):
            files = sorted(walk_class(root / d, cls))
            paths += files
            labels += [ci] * len(files)
        if not paths:
            raise DataLayoutError(f"{root / d} holds no images")
        domains.append(Domain(d, np.asarray(labels, np.int64), paths=paths))
    return DGDataset(name, str(root), domains, list(reference))


@lru_cache(maxsize=1)
def _rotated_digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from PIL import Image

    from mamba_bench.data.embedded import _digits

    imgs, labels, _, _ = _digits()
    order = np.random.default_rng(0).permutation(len(labels))
    out = []
    for k, angle in enumerate(ROTATIONS):
        idx = np.sort(order[k::len(ROTATIONS)])
        rot = np.stack([np.asarray(Image.fromarray(imgs[i]).rotate(angle, resample=Image.BILINEAR)) for i in idx])
        rot.setflags(write=False)
        out.append((rot, labels[idx].copy()))
    return tuple(out)


def rotated_digits() -> DGDataset:
    domains = [Domain(f"{a}deg", lab, arrays=arr) for a, (arr, lab) in zip(ROTATIONS, _rotated_digits_arrays(),
                                                                           strict=True)]
    return DGDataset("rotated-digits", "embedded:rotated-digits", domains, [str(i) for i in range(10)])

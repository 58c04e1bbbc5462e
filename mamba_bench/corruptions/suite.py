"""Corruption suites as data, applied per image with a seed derived from what the image *is*.

A suite file maps corruption names to an imgaug augmenter and its parameters per severity.
``--suite`` takes the name of a suite shipped in ``transforms/`` (``imgaug21``, the default;
``imagenet-c``) or the path of the user's own TOML file (write ``./imgaug21`` for a file that has a
shipped suite's name). The file is validated completely when it is loaded (every severity is built
and run once on a tiny probe image), so a typo fails in the first second of a run instead of after
an hour of GPU time.

Selecting corruptions (:meth:`Suite.select`, ``--corruptions``): ``all`` is every corruption not
marked ``in_all = false`` (ImageNet-C: its 15, without the 4 extras); a group name (a corruption's
``group``, e.g. ``noise`` or ``extras``) its members; ``none`` no corruption at all (a clean-only
run); names, groups and ``all`` combine (``all,extras``). The names ``clean``, ``mean``, ``none`` and
``all`` are reserved (the clean reference, the mean row of the result tables, the two keywords): a
suite may not give them to a corruption or a group.

:func:`apply_corruption` reseeds the augmenter from ``(seed, image id, corruption, severity)`` before
every image, so a corrupted image never depends on what was corrupted before it, on batch
composition, worker process, thread or machine: every model of a run, and of a later run, sees the
same corrupted pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import tomllib
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mamba_bench.errors import MambaBenchError, UnknownNameError

#: The severities a corruption may have (ImageNet-C convention); severity-free ones have only 0.
SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = "clean"

# imgaug calls scikit-image/numpy APIs that warn about their own deprecations (PiecewiseAffine warns
# once per image): noise for our users, not news. Scoped to warnings attributed to imgaug's modules.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"imgaug(\.|$)")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"imgaug(\.|$)")

#: Names no corruption or group may have: the clean reference (only the entry with role "clean"), the
#: aggregate row of the result tables (``corruption == "mean"``), and the selection keywords.
RESERVED_NAMES = (CLEAN, "mean", "none", "all")
_RESERVED_WHY = ("clean, mean, none and all name the clean reference, the results' mean row and the "
                 "--corruptions keywords")
DEFAULT_SUITE = "imgaug21"

_ENTRY_KEYS = ("name", "title", "augmenter", "severity_free", "params", "fixed", "role", "group", "in_all")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_]*")
_PROBE = np.random.default_rng(20240521).integers(0, 256, (32, 32, 3), dtype=np.uint8)
# imagecorruptions refuses images under 32 px, and spatter can leave NaN at 32 px (see apply_corruption)
_PROBE_IMAGECORRUPTIONS = np.random.default_rng(20240521).integers(0, 256, (64, 64, 3), dtype=np.uint8)
# imgaug's imgcorruptlike augmenters seed numpy's *global* RNG around each image (and restore it):
# two threads doing so at once would draw from each other's state; this lock serialises them.
_GLOBAL_NUMPY_RNG = threading.Lock()
if hasattr(os, "register_at_fork"):  # a child forked while another thread held it gets a fresh one
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_GLOBAL_NUMPY_RNG", threading.Lock()))
_IMGCORRUPTLIKE = "imgaug.augmenters.imgcorruptlike"


def suites_dir() -> Path:
    """Where the shipped suites are: the repository's ``transforms/``, or the copy a wheel carries
    (``mamba_bench/_suites``, pyproject's force-include)."""
    repo = Path(__file__).resolve().parents[2] / "transforms"
    if (repo / f"{DEFAULT_SUITE}.toml").is_file():
        return repo
    return Path(str(resources.files("mamba_bench") / "_suites"))


def shipped_suites() -> dict[str, Path]:
    """Suite name (file stem) → file, for every suite shipped with mamba-bench."""
    d = suites_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def default_suite_path() -> Path:
    """The shipped ``imgaug21.toml`` (repository or wheel)."""
    return suites_dir() / f"{DEFAULT_SUITE}.toml"


def resolve_suite_path(suite: str | os.PathLike | None) -> Path:
    """``--suite`` → a file: ``None`` is the default suite, a shipped suite's name (a string equal to
    a file stem in :func:`suites_dir`) is that file, anything else is a path."""
    if suite is None:
        return default_suite_path()
    if isinstance(suite, str):
        shipped = shipped_suites()
        if suite in shipped:
            return shipped[suite]
    return Path(suite)


def _one_line(text: object) -> str:
    """Errors reach the user as one line on stderr: fold whatever a library said into one."""
    return " ".join(str(text).split()) or "no details"


def _iaa():
    """imgaug's augmenters, imported on first use (the import costs about a second)."""
    import imgaug.augmenters as iaa

    return iaa


def augmenter_class(name: str) -> type | None:
    """The imgaug augmenter class ``name`` names, or ``None``.

    ``name`` is a class of ``imgaug.augmenters`` (``"GaussianBlur"``) or of one of its modules
    (``"imgcorruptlike.GaussianNoise"``: the ImageNet-C corruptions, which imgaug does not export at
    the top level because their names clash with its own ``GaussianBlur``, ``Contrast``...).
    """
    parts = name.split(".")
    if len(parts) > 2 or any(not p or p.startswith("_") for p in parts):
        return None
    obj: Any = _iaa()
    if len(parts) == 2:
        obj = getattr(obj, parts[0], None)
        if not isinstance(obj, types.ModuleType) or not obj.__name__.startswith("imgaug.augmenters."):
            return None
    cls = getattr(obj, parts[-1], None)
    return cls if isinstance(cls, type) and issubclass(cls, _iaa().Augmenter) else None


@dataclass(frozen=True)
class Corruption:
    """One named corruption: an imgaug augmenter class and its keyword arguments per severity.

    ``params[k]`` are the arguments of severity ``severities[k]`` (already converted from TOML: a
    2-number array is a tuple, i.e. a uniform range; ``{choice = [...]}`` a list). A severity-free
    corruption has ``severities == (0,)`` and a single parameter table.
    """

    name: str
    title: str
    augmenter: str
    severity_free: bool
    severities: tuple[int, ...]
    params: tuple[dict[str, Any], ...] = field(hash=False, repr=False)
    role: str = "corruption"  # "clean" for the untransformed reference
    group: str | None = None  # a name `--corruptions` accepts for all of a group (e.g. "noise", "extras")
    in_all: bool = True  # False: `--corruptions all` leaves it out (opt-in by name or group)

    @property
    def is_clean(self) -> bool:
        return self.role == CLEAN

    @property
    def seeds_numpy_global_rng(self) -> bool:
        """An imgcorruptlike augmenter: it seeds numpy's global RNG for each image (and restores it)."""
        cls = augmenter_class(self.augmenter)
        return cls is not None and cls.__module__ == _IMGCORRUPTLIKE

    def params_for(self, severity: int) -> dict[str, Any]:
        """The augmenter's keyword arguments at ``severity`` (a copy: callers may not edit ours)."""
        return dict(self.params[self._index(severity)])

    def _index(self, severity: int) -> int:
        if isinstance(severity, bool) or severity not in self.severities:
            raise UnknownNameError(f"severity {severity!r} is not valid for {self.name}; "
                                   f"valid: {', '.join(map(str, self.severities))}")
        return self.severities.index(severity)

    def build(self, severity: int):
        """The imgaug augmenter for ``severity``, cached per process and thread (building is not free).

        The cached object is reseeded before each use by :func:`apply_corruption`; the cache is
        per thread because reseeding and augmenting mutate the augmenter's RNG state.
        """
        params = self.params[self._index(severity)]
        key = (self.augmenter, _freeze(params))
        cache = _cache()
        aug = cache.get(key)
        if aug is None:
            aug = augmenter_class(self.augmenter)(**params)
            cache[key] = aug
        return aug


_LOCAL = threading.local()


def _cache() -> dict:
    cache = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = {}
    return cache


def _freeze(value: Any) -> Any:
    """A hashable key for converted parameters that keeps tuple (range) and list (choice) apart."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(_freeze(v) for v in value))
    if isinstance(value, tuple):
        return ("tuple", tuple(_freeze(v) for v in value))
    return (type(value).__name__, value)


@dataclass
class Suite:
    """A loaded suite: the real corruptions in file order, plus the clean reference."""

    name: str
    path: Path
    sha256: str  # of the file's bytes: part of a run's fingerprint
    corruptions: dict[str, Corruption]  # without the clean entry
    clean: Corruption
    description: str = ""

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name → its corruptions' names, in file order."""
        out: dict[str, list[str]] = {}
        for c in self.corruptions.values():
            if c.group is not None:
                out.setdefault(c.group, []).append(c.name)
        return out

    @property
    def default(self) -> list[Corruption]:
        """What ``all`` selects: every corruption not marked ``in_all = false``, in file order."""
        return [c for c in self.corruptions.values() if c.in_all]

    def _valid(self) -> str:
        groups = self.groups
        extra = f"; groups: {', '.join(groups)}" if groups else ""
        return f"{', '.join(self.corruptions)}{extra} (or 'all', or 'none')"

    def get(self, name: str) -> Corruption:
        """A corruption by name, ``"clean"`` included."""
        if name == self.clean.name:
            return self.clean
        if name not in self.corruptions:
            raise UnknownNameError(f"unknown corruption {name!r}; valid: {self._valid()}")
        return self.corruptions[name]

    def select(self, names: str | Sequence[str]) -> list[Corruption]:
        """The corruptions ``names`` asks for (a string, or each item, may be comma-separated).

        * ``all``: :attr:`default`, every corruption not marked ``in_all = false``, in file order;
          other names given with it add what it lacks, in the order given (``all,extras``: the 15
          ImageNet-C corruptions, then its 4 extras);
        * a group name (``noise``, ``extras``...): the group's corruptions in file order;
        * a corruption name: that corruption; without ``all``, everything in the order given;
        * ``none``: no corruption at all, a clean-only run (``[]``); it cannot be combined with
          other names (``clean`` aside);
        * ``clean`` is accepted and dropped: it is always measured anyway.

        Duplicates are dropped. Unknown names raise one :class:`UnknownNameError` that lists the
        valid names, so a typo costs one try.
        """
        items = [names] if isinstance(names, str) else list(names)
        wanted: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise UnknownNameError(f"corruption names must be strings, got {item!r}; "
                                       f"valid: {self._valid()}")
            wanted += [n.strip() for n in item.split(",") if n.strip()]
        if not wanted:
            raise UnknownNameError(f"no corruption named; valid: {self._valid()}")
        groups = self.groups
        unknown = [n for n in wanted if n not in self.corruptions and n not in groups
                   and n not in ("all", "none", self.clean.name)]
        if unknown:
            raise UnknownNameError(f"unknown corruption {unknown[0]!r}; valid: {self._valid()}")
        if "none" in wanted:
            others = [n for n in wanted if n not in ("none", self.clean.name)]
            if others:
                raise UnknownNameError(f"'none' selects no corruption and cannot be combined with {others[0]!r}; "
                                       "give either 'none' or corruption names")
            return []
        chosen: list[str] = [c.name for c in self.default] if "all" in wanted else []
        for n in wanted:
            if n in groups:
                chosen += groups[n]
            elif n in self.corruptions:
                chosen.append(n)
        return [self.corruptions[n] for n in dict.fromkeys(chosen)]

    def severities(self, corruption: Corruption, wanted: str | Sequence[int]) -> list[int]:
        """The severities of ``corruption`` to run, ascending.

        ``"all"`` gives all of them; a list (or a string like ``"1,3"``) gives those, each of which
        must lie in 1..5. A severity-free corruption always gives ``[0]``. A corruption of a user
        suite with fewer than 5 severities simply lacks the higher ones (they are skipped).
        """
        valid = f"{', '.join(map(str, SEVERITIES))} (or 'all')"
        if isinstance(wanted, str):
            if wanted.strip() == "all":
                levels = list(SEVERITIES)
            else:
                levels = []
                for part in (p.strip() for p in wanted.split(",") if p.strip()):
                    try:
                        levels.append(int(part))
                    except ValueError:
                        raise UnknownNameError(f"severity {part!r} is not valid; valid: {valid}") from None
        else:
            levels = list(wanted)
        if not levels:
            raise UnknownNameError(f"no severity named; valid: {valid}")
        for s in levels:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s not in SEVERITIES:
                raise UnknownNameError(f"severity {s} is not valid; valid: {valid}")
        if corruption.severity_free:
            return [0]
        if isinstance(wanted, str) and wanted.strip() == "all":
            return list(corruption.severities)
        return sorted({int(s) for s in levels} & set(corruption.severities))


# ------------------------------------------------------------------------------------------ loading


def _convert(value: Any, where: str) -> Any:
    """TOML value → imgaug argument (the convention the suite file documents).

    * number, string, bool → as is;
    * ``[a, b]`` (two numbers) → the tuple ``(a, b)``: imgaug draws uniformly from that range;
    * ``{choice = [x, y, ...]}`` → the list ``[x, y, ...]``: imgaug picks one element per image.
    """
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise MambaBenchError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, list):
        if len(value) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise MambaBenchError(f"{where}: an array must be a range of two numbers [low, high], "
                                  f"got {value}; write a set of alternatives as {{choice = [...]}}")
        return tuple(_convert(v, where) for v in value)
    if isinstance(value, dict):
        if set(value) != {"choice"} or not isinstance(value["choice"], list) or not value["choice"]:
            raise MambaBenchError(f"{where}: a table value must be {{choice = [x, y, ...]}}, got {value}")
        return [_convert(v, where) for v in value["choice"]]
    raise MambaBenchError(f"{where}: unsupported value {value!r} ({type(value).__name__})")


def _params_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise MambaBenchError(f"{where}: expected a table of parameters like {{sigma = 1.0}}, got {table!r}")
    return {k: _convert(v, f"{where}, parameter {k!r}") for k, v in table.items()}


def _parse_entry(e: Any, k: int, path: Path) -> Corruption:
    where = f"suite file {path}, corruption #{k + 1}"
    if not isinstance(e, dict):
        raise MambaBenchError(f"{where}: not a table")
    unknown = [key for key in e if key not in _ENTRY_KEYS]
    if unknown:
        raise MambaBenchError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_ENTRY_KEYS)})")
    for key in ("name", "augmenter"):
        if key not in e:
            raise MambaBenchError(f"{where}: missing field {key!r}")
        if not isinstance(e[key], str) or not e[key]:
            raise MambaBenchError(f"{where}: field {key!r} must be a non-empty string")
    name = e["name"]
    if not _NAME_RE.fullmatch(name):
        raise MambaBenchError(f"{where}: name {name!r} must be snake_case (a-z, 0-9, _)")
    if name in RESERVED_NAMES and name != CLEAN:
        raise MambaBenchError(f"{where}: the name {name!r} is reserved ({_RESERVED_WHY}); rename the corruption")
    where = f"suite file {path}, corruption {name!r}"
    title = e.get("title", name)
    if not isinstance(title, str):
        raise MambaBenchError(f"{where}: 'title' must be a string")
    role = e.get("role", "corruption")
    if role not in ("corruption", CLEAN):
        raise MambaBenchError(f"{where}: 'role' must be \"clean\" or left out, got {role!r}")
    if (name == CLEAN) != (role == CLEAN):
        raise MambaBenchError(f"{where}: the name 'clean' is reserved for the clean reference, which has "
                              "role = \"clean\"; no other entry may use either (rename the corruption)")
    group = e.get("group")
    if group is not None and (not isinstance(group, str) or not _NAME_RE.fullmatch(group)):
        raise MambaBenchError(f"{where}: 'group' must be a snake_case name (a-z, 0-9, _), got {group!r}")
    if group in RESERVED_NAMES:
        raise MambaBenchError(f"{where}: the group name {group!r} is reserved ({_RESERVED_WHY}); rename the group")
    in_all = e.get("in_all", True)
    if not isinstance(in_all, bool):
        raise MambaBenchError(f"{where}: 'in_all' must be true or false")
    if role == CLEAN and ("group" in e or "in_all" in e):
        raise MambaBenchError(f"{where}: the clean reference is always measured: no 'group' or 'in_all'")
    free = e.get("severity_free", role == CLEAN)
    if not isinstance(free, bool):
        raise MambaBenchError(f"{where}: 'severity_free' must be true or false")
    if role == CLEAN and (not free or e["augmenter"] != "Identity" or e.get("fixed") or "params" in e):
        raise MambaBenchError(f"{where}: the clean reference must be augmenter = \"Identity\", "
                              "severity_free = true, with no parameters")
    if augmenter_class(e["augmenter"]) is None:
        raise MambaBenchError(f"{where}: unknown imgaug augmenter {e['augmenter']!r} (a class name of "
                              "imgaug.augmenters, e.g. \"GaussianBlur\", or of one of its modules, e.g. "
                              "\"imgcorruptlike.GaussianNoise\")")
    fixed = _params_table(e.get("fixed", {}), f"{where}, 'fixed'")
    if free:
        if "params" in e:
            raise MambaBenchError(f"{where}: a severity-free corruption takes its parameters from 'fixed', "
                                  "not from 'params'")
        params: tuple[dict[str, Any], ...] = (fixed,)
        severities: tuple[int, ...] = (0,)
    else:
        plist = e.get("params")
        if plist is None:
            raise MambaBenchError(f"{where}: missing field 'params' (one table per severity; "
                                  "or severity_free = true)")
        if not isinstance(plist, list) or not 1 <= len(plist) <= len(SEVERITIES):
            raise MambaBenchError(f"{where}: 'params' must list 1 to {len(SEVERITIES)} tables, "
                                  "one per severity")
        tables = [_params_table(p, f"{where}, severity {j + 1}") for j, p in enumerate(plist)]
        for j, t in enumerate(tables):
            both = sorted(set(t) & set(fixed))
            if both:
                raise MambaBenchError(f"{where}, severity {j + 1}: parameter {both[0]!r} is also in 'fixed'")
        params = tuple({**fixed, **t} for t in tables)
        severities = tuple(range(1, len(tables) + 1))
    return Corruption(name=name, title=title, augmenter=e["augmenter"], severity_free=free,
                      severities=severities, params=params, role=role, group=group, in_all=in_all)


def _check_builds(c: Corruption, path: Path) -> None:
    """Build every severity and run it once on a tiny image: imgaug checks most arguments only then."""
    for s in c.severities:
        where = f"suite file {path}: {c.name} severity {s}"
        try:
            c.build(s)
        except Exception as exc:  # imgaug raises assorted types (AssertionError, TypeError, ...)
            raise MambaBenchError(f"{where}: {c.augmenter} rejects its params ({_one_line(exc)})") from None
        try:
            probe = _PROBE_IMAGECORRUPTIONS if c.seeds_numpy_global_rng else _PROBE
            apply_corruption(c, s, probe, seed=0, image_id="probe")
        except MambaBenchError as exc:
            raise MambaBenchError(f"suite file {path}: {exc}") from None
        except Exception as exc:
            raise MambaBenchError(f"{where}: {c.augmenter} rejects its params when applied "
                                  f"({_one_line(exc)})") from None


def load_suite(path: str | os.PathLike | None = None) -> Suite:
    """Read and validate a suite: a shipped suite's name (``"imagenet-c"``), a file, or ``None``
    (the default suite, ``imgaug21``); see :func:`resolve_suite_path`.

    Every problem a user can make raises :class:`MambaBenchError` with a one-line message: a
    missing or invalid TOML file, unknown fields or augmenters, parameters imgaug rejects, an
    augmenter that changes the image size, duplicate or reserved names.
    """
    given = path
    path = resolve_suite_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if isinstance(given, str) and os.sep not in given and "/" not in given:
            hint = f" (and is not the name of a shipped suite: {', '.join(shipped_suites()) or 'none found'})"
        raise MambaBenchError(f"suite file {path} does not exist{hint}") from None
    except OSError as exc:
        raise MambaBenchError(f"cannot read suite file {path} ({_one_line(exc.strerror or exc)})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MambaBenchError(f"suite file {path} is not valid TOML: {_one_line(exc)}") from None
    extra = [k for k in doc if k not in ("suite", "corruption")]
    if extra:
        raise MambaBenchError(f"suite file {path}: unknown top-level key {extra[0]!r} "
                              "(expected [suite] and [[corruption]] entries)")
    meta = doc.get("suite", {})
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k, ""), str)
                                             for k in ("name", "description")):
        raise MambaBenchError(f"suite file {path}: [suite] must be a table with string name and description")
    entries = doc.get("corruption")
    if not isinstance(entries, list) or not entries:
        raise MambaBenchError(f"suite file {path} has no [[corruption]] entries")
    parsed: list[Corruption] = []
    seen: set[str] = set()
    for k, e in enumerate(entries):
        c = _parse_entry(e, k, path)
        if c.name in seen:
            raise MambaBenchError(f"suite file {path}: corruption {c.name!r} is defined twice")
        seen.add(c.name)
        parsed.append(c)
    corruptions = {c.name: c for c in parsed if not c.is_clean}
    if not corruptions:
        raise MambaBenchError(f"suite file {path} defines no corruptions besides the clean reference")
    clash = next((c for c in corruptions.values() if c.group in corruptions), None)
    if clash is not None:
        raise MambaBenchError(f"suite file {path}, corruption {clash.name!r}: group {clash.group!r} is also the "
                              "name of a corruption; --corruptions could not tell them apart")
    if not any(c.in_all for c in corruptions.values()):
        raise MambaBenchError(f"suite file {path}: every corruption has in_all = false, so 'all' would "
                              "select nothing; leave in_all out of at least one")
    for c in parsed:
        _check_builds(c, path)
    clean = next((c for c in parsed if c.is_clean), None) or Corruption(
        name=CLEAN, title="Original (clean)", augmenter="Identity", severity_free=True, severities=(0,),
        params=({},), role=CLEAN)
    return Suite(name=meta.get("name") or path.stem, path=path.resolve(),
                 sha256=hashlib.sha256(raw).hexdigest(), corruptions=corruptions, clean=clean,
                 description=meta.get("description", ""))


# ----------------------------------------------------------------------------------------- applying


def corruption_seed(seed: int, image_id: str, corruption: str, severity: int) -> int:
    """A seed in ``[0, 2**31)`` that depends only on its arguments.

    BLAKE2b of a canonical JSON encoding (unambiguous whatever characters an image id holds), so
    the value is the same in every process, on every machine and Python version; Python's own
    ``hash()`` is salted per process and would not be.
    """
    key = json.dumps(["mamba-bench/corruption-seed/v1", int(seed), str(image_id), str(corruption),
                      int(severity)], ensure_ascii=True, separators=(",", ":"))
    digest = hashlib.blake2b(key.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def apply_corruption(corruption: Corruption, severity: int, image: np.ndarray, *, seed: int,
                     image_id: str) -> np.ndarray:
    """``image`` (uint8 HxWx3) under ``corruption`` at ``severity``: a new array of the same shape.

    The result depends only on (seed, image_id, corruption name, severity, pixels): the augmenter is
    reseeded (itself and all its children, which imgaug's ``seed_`` covers) right before the image.
    An ``imgcorruptlike`` augmenter (the ImageNet-C suite) then draws one seed from that RNG and runs
    the ``imagecorruptions`` function with numpy's global RNG seeded by it (restored afterwards);
    those calls hold a lock, so threads cannot interleave their draws.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 HxWx3 image, got {got}")
    if corruption.is_clean:
        corruption._index(severity)
        return image.copy()
    aug = corruption.build(severity)
    if corruption.seeds_numpy_global_rng:
        if min(image.shape[:2]) < 32:
            raise MambaBenchError(f"corruption {corruption.name} ({corruption.augmenter}, from the imagecorruptions "
                                  f"package) needs images of at least 32 x 32 px, got {image.shape[1]} x "
                                  f"{image.shape[0]}; use larger images or another suite")
        with _GLOBAL_NUMPY_RNG, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            aug.seed_(corruption_seed(seed, image_id, corruption.name, severity))
            out = aug.augment_image(np.ascontiguousarray(image))
        # imgaug casts imagecorruptions' float result to uint8: NaN there (spatter divides by the
        # largest drop, 0 when none formed: seen on 32-px images) would become black pixels
        if not any(issubclass(w.category, RuntimeWarning) and "invalid value encountered in cast" in str(w.message)
                   for w in caught):
            for w in caught:  # recorded only to look for that one: the others are passed on
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            raise MambaBenchError(f"corruption {corruption.name} (severity {severity}) produced NaN pixels on image "
                                  f"{image_id!r} ({image.shape[1]} x {image.shape[0]} px); the imagecorruptions "
                                  "functions are made for 224-px images: use larger images")
    else:
        aug.seed_(corruption_seed(seed, image_id, corruption.name, severity))
        out = aug.augment_image(np.ascontiguousarray(image))
    if not isinstance(out, np.ndarray) or out.shape != image.shape:
        shape = getattr(out, "shape", None)
        raise MambaBenchError(f"corruption {corruption.name} (severity {severity}) changes the image shape "
                              f"{image.shape} → {shape}; geometric augmenters need keep_size = true")
    if out.dtype != np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if np.shares_memory(out, image):
        out = out.copy()
    return np.ascontiguousarray(out)


def mean_abs_change(corruption: Corruption, severity: int, image: np.ndarray, *, seed: int = 0,
                    image_id: str = "x") -> float:
    """Mean absolute pixel difference (0..255) to the clean image: the suite's measure of strength."""
    out = apply_corruption(corruption, severity, image, seed=seed, image_id=image_id)
    return float(np.abs(out.astype(np.int16) - image.astype(np.int16)).mean())

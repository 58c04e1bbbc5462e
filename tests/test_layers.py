"""The package's layers: imports only go downwards, and no module imports itself through a circle.

Every ``import`` / ``from ... import`` in every module counts: lazy ones inside functions, and those
under ``if TYPE_CHECKING:`` too (a type-only circle is still two modules that need each other).
The layer order is the README's architecture section; a new module must sit in a layer, so this test
also fails on a new top-level module or package that has not been placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mamba_bench"

#: lowest first; a module may import its own layer or a lower one (peers of one layer may import each
#: other, without circles)
LAYERS: list[set[str]] = [
    {"errors"},
    {"ops"},
    {"data"},
    {"corruptions"},
    {"models"},
    {"results"},
    {"eval", "train", "dg", "seg", "analysis"},
    {"report"},
    {"present"},
    {"demo"},
    {"cli", "__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = ("mamba_bench", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path, module: str) -> set[str]:
    """The project modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mamba_bench")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "mamba_bench":
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
                found.update(subs)
                if len(subs) < len(node.names):
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else -1


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in MODULES if m != "mamba_bench" and _layer(m) is None})
    assert not unplaced, f"place these in LAYERS (and the README's architecture section): {unplaced}"


def test_imports_only_go_downwards():
    upward = [f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for m, deps in GRAPH.items() for d in deps
              if d != "mamba_bench" and _layer(d) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                walk(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            walk(m)
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from mamba_bench.cli import main\n", {"mamba_bench.cli"}),  # lazy imports count
    ("from mamba_bench.models import vmamba\n", {"mamba_bench.models.vmamba"}),
    ("from mamba_bench.data import open_dataset\n", {"mamba_bench.data"}),
    ("if TYPE_CHECKING:\n    from mamba_bench.cli import main\n", {"mamba_bench.cli"}),
    ("from .selective_scan import x\n", {"mamba_bench.ops.selective_scan"}),
    ("import numpy\n", set()),
])
def test_the_import_reader_sees_lazy_and_submodule_imports(tmp_path, source, expected):
    f = tmp_path / "probe.py"
    f.write_text(source)
    assert _imports(f, "mamba_bench.ops.probe") == expected

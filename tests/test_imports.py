"""The import graph of `endofm`, read with `ast`: no cycle among its modules, and no import against the
layer order of docs/architecture.md (its layer table is the one source of truth). Imports inside
functions count like top-level ones (docs/architecture.md, "Lazy imports")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "endofm"
ARCHITECTURE = ROOT / "docs/architecture.md"


def read_layers(path: Path = ARCHITECTURE) -> dict[str, int]:
    """Top-level name -> layer number, from the rows ``| <number> | <layer> | `name`, ... |`` of the table."""
    layers: dict[str, int] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 3 and cells[0].isdigit():
            for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]):
                assert name not in layers, f"{path.name}: {name} is in two layers"
                layers[name] = int(cells[0])
    return layers


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(module: str, path: Path, modules: dict[str, Path], package: str = PACKAGE) -> dict[str, int]:
    """The package's modules that ``module`` imports (anywhere in the file: top level, functions,
    ``TYPE_CHECKING`` blocks) -> the first line. ``from a import b`` is an edge to ``a.b`` when that is a
    module, else to ``a``; a parent package is not an edge of its own."""
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for target in targets:
            if target == package or target.startswith(package + "."):
                while target not in modules:  # `import endofm.x.name` of a non-module name
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    out.setdefault(target, node.lineno)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def layer_of(module: str, layers: dict[str, int], package: str = PACKAGE) -> int | None:
    """The layer of ``module`` (by its top-level name); None for the package itself."""
    parts = module.split(".")
    return None if len(parts) == 1 else layers.get(parts[1], -1)


def upward_imports(graph: dict[str, dict[str, int]], layers: dict[str, int], package: str = PACKAGE) -> list[str]:
    out = []
    for src, targets in graph.items():
        for dst, line in targets.items():
            low, high = layer_of(src, layers, package), layer_of(dst, layers, package)
            if low is None or (high is not None and high > low):
                out.append(f"{src} (layer {low}) imports {dst} (layer {high}) at line {line}")
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_layer_table_is_read():
    layers = read_layers()
    assert layers["config"] == 1 and layers["cli"] == max(layers.values())
    assert layers["pretraining"] < layers["methods"] < layers["tasks"] < layers["report"] < layers["settings"]


def test_every_module_has_a_layer():
    layers = read_layers()
    tops = {name.split(".")[1] for name in module_files(ROOT) if "." in name}
    assert not tops - set(layers), f"add to the table of docs/architecture.md: {sorted(tops - set(layers))}"
    assert not set(layers) - tops, f"in docs/architecture.md but not in endofm/: {sorted(set(layers) - tops)}"


def test_no_import_goes_up_a_layer():
    assert upward_imports(import_graph(), read_layers()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself, on a toy package: `low` imports `high` lazily (upward), `high` imports `low`."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from toy.high import g\n    return g\n")
    (pkg / "high.py").write_text("from . import low\n\ndef g():\n    return low\n")
    doc = tmp_path / "layers.md"
    doc.write_text("| layer | name | modules |\n|---|---|---|\n| 1 | low | `low` |\n| 2 | high | `high` |\n")
    graph = import_graph(tmp_path, "toy")
    assert graph["toy.low"] == {"toy.high": 2} and graph["toy.high"] == {"toy.low": 1}
    assert cycles(graph) == [["toy.high", "toy.low"]]
    assert upward_imports(graph, read_layers(doc), "toy") == ["toy.low (layer 1) imports toy.high (layer 2) at line 2"]

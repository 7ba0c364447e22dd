"""The package's layering, read from the source with ``ast`` (nothing is imported).

Every ``import`` statement counts, at module top or inside a function: a function-level
import hides a dependency from a reader, it does not remove it. A unit is a subpackage of
``clmerge`` (``clmerge/mergers/``) or a top-level module (``clmerge/cli.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clmerge"

# Layers, lowest first: a unit may import units of its own layer or below, never above.
LAYERS = [
    {"tensormath", "avalanche_api", "errors", "values"},
    {"mergers", "backbones", "benchmarks", "pretrain", "profiles"},
    {"plugins"},
    {"strategies"},
    {"experiment"},
    {"report"},
    {"book_cache"},    # fills the execution cache; imports nothing of clmerge
    {"book"},
    {"cli"},
    {"faults"},        # runs the command line in-process: above it
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Absolute names of the clmerge modules ``path`` imports (anywhere in the file)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in out if m == root.name or m.startswith(root.name + ".")}


def unit_of(module: str, root: Path = PACKAGE) -> str | None:
    """The subpackage or top-level module ``module`` belongs to (None: the package root)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if (root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file():
        return parts[1]
    return None  # a name imported from clmerge/__init__.py


def unit_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """unit -> units it imports (self-edges left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        src = unit_of(module_name(path, root), root)
        if src is None:
            continue
        deps = {unit_of(m, root) for m in imported_modules(path, root)}
        graph.setdefault(src, set()).update(d for d in deps if d not in (None, src))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ({"a": set(), "b": {"a"}, "c": {"a", "b"}}, []),
])
def test_cycle_finder(graph, expected):
    assert cycles(graph) == expected


def test_import_graph_reads_local_and_relative_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    for d in (root, root / "low", root / "high"):
        (d / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from pkg.high import b\n")
    (root / "high" / "b.py").write_text("from ..low import a\nfrom . import c\n")
    (root / "high" / "c.py").write_text("")
    (root / "top.py").write_text("import pkg.low.a\n")
    graph = unit_graph(root)
    assert graph == {"low": {"high"}, "high": {"low"}, "top": {"low"}}
    assert cycles(graph) == [["high", "low"]]


def test_no_import_cycle_between_subpackages():
    found = cycles(unit_graph())
    assert found == [], f"import cycles between clmerge's subpackages: {found}"


def test_layers_import_downwards_only():
    graph = unit_graph()
    rank = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    unknown = sorted(set(graph) - set(rank))
    assert not unknown, f"units missing from LAYERS: {unknown}"
    upward = sorted((u, d) for u, deps in graph.items() for d in deps if rank[d] > rank[u])
    assert upward == [], f"imports from a lower layer into a higher one: {upward}"

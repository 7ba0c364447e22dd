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
    {"tensormath", "avalanche_api", "errors", "values", "paths"},
    {"mergers", "backbones", "benchmarks", "pretrain", "profiles"},
    {"plugins"},
    {"strategies"},
    {"experiment"},
    {"report"},
    {"book_cache"},    # fills the execution cache; imports nothing of clmerge
    {"book"},
    {"cli"},
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


# ---------------------------------------------------------------------- module-level loops
def module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file), self-edges left
    out. ``from pkg.a import b`` counts ``pkg.a`` and, when it is a module, ``pkg.a.b``."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {name: {m for m in imported_modules(path, root) if m in paths and m != name}
            for name, path in paths.items()}


def test_module_graph_sees_a_loop_inside_a_subpackage(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    for d in (root, root / "sub"):
        (d / "__init__.py").write_text("")
    (root / "sub" / "a.py").write_text("from pkg.sub import b\n")
    (root / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (root / "sub" / "c.py").write_text("import pkg.sub.a\n")
    assert cycles(unit_graph(root)) == []  # one unit: invisible between subpackages
    assert cycles(module_graph(root)) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c"]]


def test_no_import_cycle_between_modules():
    found = cycles(module_graph())
    assert found == [], f"import cycles between clmerge's modules: {found}"


# ---------------------------------------------------------------------- no call back up
def layer_of(module: str) -> int | None:
    """The layer (index into LAYERS) of a clmerge module; None for any other module."""
    if module != "clmerge" and not module.startswith("clmerge."):
        return None
    unit = module.split(".")[1] if "." in module else None
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    return None


def held_upwards(root_obj, max_depth: int = 6) -> list[str]:
    """Every object of a clmerge class, reachable from ``root_obj`` through clmerge
    objects' attributes, containers, bound methods and closures, that holds an object
    or a function of a higher layer than its own class (dataclass instances, the data a
    higher layer hands down, excepted). Each as 'holder.attr -> what'."""
    import dataclasses
    import functools
    import types

    found, seen = [], set()

    def edges(obj):
        """(name, value) pairs an object holds."""
        if isinstance(obj, dict):
            return [(f"[{k!r}]", v) for k, v in obj.items()]
        if isinstance(obj, (list, tuple, set, frozenset)):
            return [(f"[{i}]", v) for i, v in enumerate(obj)]
        if isinstance(obj, types.MethodType):
            return [("__self__", obj.__self__), ("__func__", obj.__func__)]
        if isinstance(obj, functools.partial):
            return [("func", obj.func), ("args", obj.args), ("keywords", obj.keywords)]
        if isinstance(obj, types.FunctionType):
            cells = obj.__closure__ or ()
            out = []
            for name, c in zip(obj.__code__.co_freevars, cells):
                try:
                    out.append((name, c.cell_contents))
                except ValueError:  # an empty cell
                    pass
            return out
        if layer_of(type(obj).__module__) is not None and hasattr(obj, "__dict__"):
            return list(vars(obj).items())
        return []

    def rank(v):
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
            return layer_of(getattr(v, "__module__", "") or "")
        if isinstance(v, types.MethodType):
            return rank(v.__self__)
        if isinstance(v, type):
            return None  # a class named as a value (a merger's Options) is not an object
        if dataclasses.is_dataclass(v):
            return None  # data flows down
        return layer_of(type(v).__module__)

    def visit(obj, holder_rank, path, depth):
        if id(obj) in seen or depth > max_depth:
            return
        seen.add(id(obj))
        own = rank(obj)
        here = own if own is not None else holder_rank
        for name, v in edges(obj):
            r = rank(v)
            if r is not None and here is not None and r > here:
                found.append(f"{path}.{name} -> {type(v).__module__}.{type(v).__qualname__}")
            visit(v, here, f"{path}.{name}", depth + 1)

    visit(root_obj, rank(root_obj), type(root_obj).__name__, 0)
    return found


def test_held_upwards_sees_a_bound_method_and_a_closure_of_a_higher_layer():
    from clmerge.experiment.runner import Run
    from clmerge.plugins.merge import MergePlugin

    fake = object.__new__(Run)
    plugin = object.__new__(MergePlugin)
    plugin.batches = fake.train_batches
    assert held_upwards(plugin) == ["MergePlugin.batches -> builtins.method"]
    plugin.batches = lambda exp: fake.train_batches(exp)
    assert held_upwards(plugin) == ["MergePlugin.batches.fake -> clmerge.experiment.runner.Run"]
    plugin.batches = print
    assert held_upwards(plugin) == []


@pytest.mark.parametrize("method", ["pm", "trm", "ewc", "joint", "nmc"])
def test_the_method_layer_holds_nothing_of_a_higher_layer(method):
    """The method a run builds, and the context it runs on, reach no object of the
    experiment layer or above (``Run`` included): data flows down, calls never go back
    up."""
    from clmerge.experiment.config import make_config
    from clmerge.experiment.runner import Run

    run = Run(make_config(method, profile="smoke", seed=0))
    assert held_upwards(run.context) == []
    assert held_upwards(run.method) == []

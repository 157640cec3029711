"""The import graph: every arrow points down the layering, and nothing imports in a circle.

Layering (docs/layout.md): ``vigface`` <- ``model_store`` <- ``jobstore`` <- ``workers`` <-
``app``; inside ``vigface`` the parts below. Every import counts, those inside functions too:
a lazy import is still a dependency. Run as a script to print the package-level graph:

    python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vigface", "model_store", "jobstore", "workers", "app"]  # bottom to top
# inside the core package, bottom to top; a module may import its own layer or any below
VIGFACE_LAYERS = [
    {"constants", "atomic", "precision", "cpu_memory", "prototype_set", "sampler_settings", "pose"},
    {"backbones", "data", "losses"},
    {"config"},
    {"fr_model", "export"},
    {"model_card"},
    {"generator"},
    {"sampling"},
    {"evaluation"},
    {"training"},
    {"dataset"},
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts ``a.b`` where
    that is a module, else ``a``)."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [known(f"{base}.{a.name}") or known(base) for a in node.names]
            edges[mod].update(t for t in targets if t and t != mod)
    return edges


def rank(mod: str) -> tuple[int, int]:
    top, _, rest = mod.partition(".")
    inner = 0
    if top == "vigface" and rest:
        part = rest.split(".")[0]
        inner = next(i for i, layer in enumerate(VIGFACE_LAYERS) if part in layer)
    return PACKAGES.index(top), inner


def upward_imports(edges) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if rank(b) > rank(a))


def circles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_every_vigface_part_has_a_layer():
    parts = {m.split(".")[1] for m in modules() if m.startswith("vigface.")}
    placed = set().union(*VIGFACE_LAYERS)
    assert parts <= placed, f"place these in VIGFACE_LAYERS: {sorted(parts - placed)}"


def test_no_import_points_back_up():
    assert upward_imports(import_graph(modules())) == []


def test_no_import_circle():
    assert circles(import_graph(modules())) == []


def test_the_checks_see_an_upward_import_and_a_circle():
    edges = {"vigface.generator.dit": {"vigface.dataset.spec"}, "vigface.dataset.spec": set()}
    assert upward_imports(edges) == ["vigface.generator.dit -> vigface.dataset.spec"]
    assert upward_imports({"model_store.loader": {"workers.runner"}}) != []
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for mod, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{mod}: {text.count(chr(10))}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{mod}.{node.name}: {n}")
    assert long_modules == [] and long_functions == []


if __name__ == "__main__":
    graph = import_graph(modules())
    packages: dict[str, set[str]] = defaultdict(set)
    for a, bs in graph.items():
        for b in bs:
            pa, pb = (".".join(m.split(".")[:2]) for m in (a, b))
            if pa != pb:
                packages[pa].add(pb)
    for a in sorted(packages):
        print(f"{a} -> {', '.join(sorted(packages[a]))}")
    print(f"upward imports: {upward_imports(graph) or 'none'}")
    print(f"circles: {circles(graph) or 'none'}")

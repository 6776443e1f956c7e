"""The import graph of the striate package is a DAG: no module reaches itself through imports.

Every module of python/striate is parsed with ``ast`` (nothing is imported),
and every import is followed, at module level and inside functions alike:
``from . import x``, ``from .x import y``, ``from ..x import y``, ``import
striate.x`` and ``from striate.x import y``. Importing ``striate.a.b`` also
runs the package ``striate.a`` (its ``__init__``), so that edge is counted too,
unless the importing module lives inside ``striate.a`` already. The root
package ``striate`` itself is left out: every submodule import runs it first.

Not here: third-party imports, or whether the modules import at all (the rest
of the suite does that).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "python" / "striate"
PACKAGE = "striate"


def _modules():
    """``{module name: (path, is_package)}`` for every .py file of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _resolve(module, is_pkg, level, name):
    """The absolute module a relative import of ``level`` dots names from ``module``."""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _targets(module, is_pkg, tree, modules):
    """Every striate module ``module`` imports (the nearest existing module for ``from x import name``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
            found.update(names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, is_pkg, node.level, node.module)
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def _with_parents(module, target):
    """``target`` and each package above it that importing it runs (not the root, not ``module``'s own)."""
    out = [target]
    parts = target.split(".")
    for k in range(2, len(parts)):
        parent = ".".join(parts[:k])
        if not (module == parent or module.startswith(parent + ".")):
            out.append(parent)
    return out


def import_graph():
    """``{module: set of modules it imports}`` over the striate package."""
    modules = _modules()
    graph = {}
    for module, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for target in _targets(module, is_pkg, tree, modules):
            for t in _with_parents(module, target):
                if t in modules and t != module and t != PACKAGE:
                    edges.add(t)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack = []

    def visit(m):
        colour[m] = GREY
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(graph):
        if colour[m] == WHITE:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_parser_sees_every_kind_of_import():
    tree = ast.parse(
        "from .. import io\nfrom ..layers.chain import layers_of\nimport striate.training\nfrom . import step\n"
        "def f():\n    from .. import optim\n"
    )
    modules = {"striate.io", "striate.layers", "striate.layers.chain", "striate.training", "striate.optim",
               "striate.training.step"}
    got = _targets("striate.training.loop", False, tree, modules)
    assert got == {"striate.io", "striate.layers.chain", "striate.training", "striate.optim", "striate.training.step"}
    assert _with_parents("striate.model", "striate.layers.chain") == ["striate.layers.chain", "striate.layers"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_training_never_imports_the_model():
    graph = import_graph()
    below = [m for m in graph if m == "striate.training" or m.startswith("striate.training.")]
    below += ["striate.io", "striate._summary", "striate._profile", "striate._onnx_export", "striate.layers"]
    for m in below:
        assert "striate.model" not in graph[m], m

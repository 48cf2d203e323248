"""The package's imports run one way: from a higher layer to a lower one, never back, and no two
modules import each other (directly or round a longer cycle).

Every module of `vqlatent/` is read with `ast` (nothing is imported), including the imports inside
functions, which are imports all the same. `LAYERS` is the package's order, lowest first; a module
may import modules of its own layer or of layers below it. A new module needs no entry when a
package it lives in is listed; a new top-level module or package does.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vqlatent"

# Lowest first. An entry names a module, or a package and every module under it; a module's layer is
# that of its longest matching entry (so `vqlatent.trainers.base` is the training framework while the
# other modules of `vqlatent.trainers`, one Task each, sit above the priors they sample with).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("vqlatent.backend", "vqlatent.utils", "vqlatent.config_checks")),
    (
        "building blocks",
        (
            "vqlatent.data",
            "vqlatent.parallel",
            "vqlatent.evaluation",
            "vqlatent.quantizers",
            "vqlatent.vqgan",
        ),
    ),
    ("codes, InfoGAN maths, lowering", ("vqlatent.codes", "vqlatent.infogan", "vqlatent.lowering")),
    ("networks", ("vqlatent.nets",)),  # nets.levels reads the codes' layout.
    (
        "training framework",
        (
            "vqlatent.trainers.__init__",
            "vqlatent.trainers.base",
            "vqlatent.trainers.optim",
            "vqlatent.trainers.loop",
            "vqlatent.trainers.workdir",
        ),
    ),
    ("priors: sampling, a workdir's hierarchy, sample evaluation", ("vqlatent.priors",)),
    ("tasks (one per model family)", ("vqlatent.trainers",)),
    ("inference API and config presets", ("vqlatent.models", "vqlatent.configs")),
    ("entry points", ("vqlatent.main", "vqlatent.__init__")),
)


def module_names(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    """{dotted module name: file}; a package's `__init__.py` is `<package>.__init__`."""
    return {
        ".".join(path.relative_to(root.parent).with_suffix("").parts): path
        for path in sorted(root.rglob("*.py"))
    }


def imports_of(name: str, source: str, modules: set[str]) -> set[str]:
    """The package modules that module `name` imports anywhere in `source` (`from p import m` counts as
    importing module `p.m` when there is one, else `p`; a package as its `__init__`)."""

    def known(module: str) -> str | None:
        for candidate in (module, module + ".__init__"):
            if candidate in modules:
                return candidate
        return None

    package = name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # Relative: from the module's package, up level - 1 packages.
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if known(f"{base}.{alias.name}") else base for alias in node.names
            ]
        else:
            continue
        found.update(t for t in map(known, targets) if t is not None and t != name)
    return found


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    files = module_names(root)
    return {name: imports_of(name, path.read_text(), set(files)) for name, path in files.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index in `layers` of the longest entry equal to `module` or a package above it."""
    best, best_length = None, -1
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best_length:
                best, best_length = index, len(entry)
    return best


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """'a (layer) imports b (higher layer)' for every import against the order."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target, layers) > layer_of(module, layers):
                found.append(
                    f"{module} ({layers[layer_of(module, layers)][0]}) imports {target} "
                    f"({layers[layer_of(target, layers)][0]})"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"Declare the layer of {unplaced} in LAYERS."


def test_no_module_imports_from_a_higher_layer(graph):
    wrong = upward_imports(graph)
    assert not wrong, (
        "Imports against the layer order (move the code down, or pass a callable in):\n" + "\n".join(wrong)
    )


def test_no_modules_import_each_other(graph):
    assert not cycles(graph), f"Import cycles: {cycles(graph)}"


def test_the_checks_see_imports_inside_functions_and_catch_both_faults():
    """A synthetic package: an import inside a function against the order, and a two-module cycle."""
    modules = {"pkg.low", "pkg.high", "pkg.a", "pkg.b", "pkg.__init__"}
    graph = {
        "pkg.low": imports_of("pkg.low", "def f():\n    from pkg import high\n", modules),
        "pkg.high": imports_of("pkg.high", "import pkg.low\nfrom pkg.a import thing\n", modules),
        "pkg.a": imports_of("pkg.a", "from . import b\n", modules),
        "pkg.b": imports_of("pkg.b", "from pkg import a\n", modules),
    }
    assert graph == {
        "pkg.low": {"pkg.high"},
        "pkg.high": {"pkg.low", "pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.a"},
    }
    layers = (("low", ("pkg.low", "pkg.a", "pkg.b")), ("high", ("pkg.high",)))
    assert upward_imports(graph, layers) == ["pkg.low (low) imports pkg.high (high)"]
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.high", "pkg.low"]]

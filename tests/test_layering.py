"""The package's layers import downwards only, and no module imports itself round a circle.

``LAYERS`` below is the one place the order is written. A package may import its own modules, the
shared basics and any package in a lower layer; packages in the same layer do not import each other
(``seg`` and ``synth`` are independent apps; ``metrics`` sits below both). The command line
(``laworder.cli``) is the top: nothing else imports it.

Every ``import`` / ``from ... import`` found by ``ast`` counts, at module level and inside
functions alike, for both rules: a lazy import (kept in a function so that ``--help`` needs no
torch) is still a dependency, and a circle closed by one still means two modules that cannot be
understood, tested or moved apart. Module-level circles: none, no exceptions. Circles through
in-function imports: none except the ones listed in ``KNOWN_LAZY_CIRCLES``, each with the reason
and the way out (a new one fails). Not seen: imports by string (``importlib.import_module``, e.g.
``laworder.synth.__getattr__``'s lazy names) and the implicit import of a module's parent package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import laworder

PACKAGE = Path(laworder.__file__).parent

# Bottom to top. Names are the top-level modules / packages under src/laworder ("laworder" is the
# package's own __init__).
LAYERS: list[set[str]] = [
    {"errors"},
    {"environment", "paths", "resources", "outputs"},  # what the basics use: variables, real paths, memory bounds, safe writes
    {"registry", "runlock", "config", "parallel", "progress", "laworder"},  # shared basics
    {"data"},
    {"models", "metrics", "interop"},
    {"training"},
    {"seg", "synth"},  # the two apps
    {"experiments"},  # paper tables, mask recovery (applies a segmenter to a pool), demo, reports
    {"cli"},  # the command line: one module per command group
    {"__main__"},  # ``python -m laworder``
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}

# Circles closed only by in-function imports, tolerated for now (module sets).
KNOWN_LAZY_CIRCLES: list[set[str]] = []


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``laworder.cli`` is its __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _import_nodes(tree: ast.Module, module_level_only: bool):
    """The import statements of ``tree``; with ``module_level_only`` none inside a function."""
    if not module_level_only:
        yield from (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module level and in functions, or module level only)."""
    modules = module_files()

    def resolve(name: str) -> str | None:  # "laworder.models.create_model" -> "laworder.models"
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), module_level_only):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from ..y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            targets.update(t for t in map(resolve, (n for n in names if n.split(".")[0] == "laworder")) if t)
        graph[module] = targets - {module}
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "laworder"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_every_package_has_a_layer():
    missing = {top(m) for m in module_files()} - set(LAYER_OF)
    assert not missing, f"add {sorted(missing)} to LAYERS in {__file__}"


def test_imports_go_downwards_only():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            source, dest = top(module), top(target)
            if source == dest or not {source, dest} <= LAYER_OF.keys():  # unknown: test_every_package_has_a_layer
                continue
            if LAYER_OF[dest] > LAYER_OF[source]:
                wrong.append(f"{module} imports {target} (upward: {source} is below {dest})")
            elif LAYER_OF[dest] == LAYER_OF[source]:
                wrong.append(f"{module} imports {target} ({source} and {dest} share a layer: independent)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles_at_module_level():
    found = cycles(import_graph(module_level_only=True))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycles_through_lazy_imports_either():
    found = [c for c in cycles(import_graph()) if set(c) not in KNOWN_LAZY_CIRCLES]
    assert not found, ("import circles (through in-function imports): "
                       + "; ".join(" <-> ".join(c) for c in found))


def test_the_checks_see_cycles_and_upward_imports():
    """The graph and the cycle search themselves: a circle and an upward arrow are found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    edges = import_graph()
    assert "laworder.errors" in edges["laworder.cli"]  # from-imports resolve to modules
    assert "laworder.seg.train" in edges["laworder.cli.seg"]  # in-function imports count
    assert "laworder.synth.build" in edges["laworder.synth.sampler"]
    assert "laworder.seg.train" not in import_graph(module_level_only=True)["laworder.cli.seg"]
    assert "laworder.cli.common" in import_graph(module_level_only=True)["laworder.cli.seg"]


def test_synth_imports_nothing_from_experiments_or_the_cli():
    for module, targets in import_graph().items():
        if top(module) == "synth":
            assert not {t for t in targets if top(t) in ("experiments", "cli")}, module


def test_metrics_never_import_the_apps_or_experiments():
    for path in sorted((PACKAGE / "metrics").glob("*.py")):
        upward = {name for name in imported_modules(path)
                  if name.startswith(("laworder.seg", "laworder.synth", "laworder.experiments"))}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_report_and_runner_do_not_import_each_other():
    report = imported_modules(PACKAGE / "experiments" / "report.py")
    assert not any(name.startswith("laworder.experiments.runner") for name in report)
    runner = imported_modules(PACKAGE / "experiments" / "runner.py")
    assert "laworder.experiments.report" in runner

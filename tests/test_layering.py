"""The package's layers import downwards only: ``metrics`` sits below the apps (``seg``, ``synth``)
and ``experiments`` (which applies segmenters, e.g. mask recovery) above them."""

from __future__ import annotations

import ast
from pathlib import Path

import laworder

PACKAGE = Path(laworder.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


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

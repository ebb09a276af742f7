"""``laworder report``: rebuild an experiment folder's report (``laworder.experiments.report``)."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from laworder.experiments.report import write_report

    path = write_report(args.run_dir)
    print(f"report: {path} (and {path.with_suffix('.html').name} beside it)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild an experiment folder's report.md, report.html and figures from its results.json")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)

"""``laworder demo``: the whole loop on procedural data, on CPU (``laworder.experiments.demo``)."""

from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    from laworder.config import deep_merge, load_config, parse_overrides
    from laworder.experiments.demo import DemoConfig, run_demo

    overrides = parse_overrides(args.overrides, DemoConfig)
    if args.output:
        overrides = deep_merge(overrides, {"output_dir": args.output})
    if args.no_synth:
        overrides["synth"] = False
    if args.no_progress:
        overrides["progress"] = False
    report = run_demo(load_config(DemoConfig, args.config, overrides))
    print(f"report: {report}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole loop on built-in procedural data, on CPU, with a report")
    p.add_argument("--config", help="YAML overriding DemoConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", "-o", help="output folder (default demo_runs)")
    p.add_argument("--no-synth", action="store_true", help="segmentation only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

"""Options and helpers shared by the command groups: ``--config`` / ``--set``, the run options of
every training command (``seg train``, ``synth train``, ...), and turning them into a config.

Light on purpose: nothing here imports torch (``laworder --help`` and argument errors stay fast).
"""

from __future__ import annotations

import argparse
from typing import Any


def config_options(parser: argparse.ArgumentParser) -> None:
    """``--config NAME|YAML`` and repeatable ``--set key.sub=value``."""
    parser.add_argument("--config", help="YAML config file, or a packaged config by name (e.g. polyps_paper; "
                                         "default: the dataclass defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set loop.lr=3e-4 (repeatable)")


def common_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of every training command: config, run folder and the ``loop`` flags."""
    from laworder.training.config import REPORT_TO

    config_options(parser)
    parser.add_argument("--output", "-o", help="run folder (loop.output_dir)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate (loop.lr)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast precision (accelerate)")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes (loop.num_workers)")
    parser.add_argument("--keep-checkpoints", type=int, metavar="N", help="keep the newest N resumable checkpoints")
    parser.add_argument("--report-to", choices=REPORT_TO,
                        help="experiment tracker writing to <run>/logs (default tensorboard; metrics.jsonl always)")
    parser.add_argument("--cpu", action="store_true", default=None, help="force CPU")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="PATH|latest",
                        help="continue the run in --output from its latest checkpoint, or from PATH "
                             "(one of its checkpoints/step_* folders)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace the run in --output")


def loop_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``loop`` values the run flags give (only the flags given: an absent flag changes nothing)."""
    loop = {"output_dir": args.output, "epochs": args.epochs, "max_steps": args.max_steps,
            "batch_size": args.batch_size, "seed": args.seed, "cpu": args.cpu, "lr": args.lr,
            "mixed_precision": args.mixed_precision, "num_workers": args.num_workers,
            "keep_checkpoints": args.keep_checkpoints, "report_to": args.report_to,
            "gradient_checkpointing": getattr(args, "gradient_checkpointing", None),
            "overwrite": args.overwrite}
    if args.resume is not None:
        loop["resume"] = True
        loop["resume_from"] = None if args.resume == "latest" else args.resume
    if args.no_progress:
        loop["progress"] = False
    return {k: v for k, v in loop.items() if v is not None}


def build_config(cls, args: argparse.Namespace, extra: dict[str, Any]):
    """The ``cls`` config these arguments describe: defaults <- ``--config`` <- ``--set`` <- flags.

    ``extra`` holds the command's own first-class flags (``{"data": args.data, ...}``); ``None``
    values are flags not given and change nothing.
    """
    from laworder.config import deep_merge, load_config, parse_overrides

    # Flags not given add nothing: an empty ``loop`` mapping would *replace* the YAML's loop section
    # (deep_merge's "{} clears" rule is for an explicit ``--set section={}``, not for absent flags).
    flags = {k: v for k, v in extra.items() if v is not None}
    loop = loop_overrides(args)
    if loop:
        flags = deep_merge(flags, {"loop": loop})
    # Precedence: dataclass defaults <- YAML <- --set <- explicit flags (the most specific wins).
    overrides = deep_merge(parse_overrides(args.overrides, cls), flags)
    return load_config(cls, args.config, overrides)


def print_config(config: Any) -> int:
    """The resolved config as YAML on stdout (what ``--config`` reads back)."""
    import yaml

    from laworder.config import to_dict

    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


def write_json_out(path: str, record: Any) -> None:
    """``--out FILE``: the JSON record written whole (temp file + rename), its folder made."""
    from pathlib import Path

    from laworder.outputs import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    print(f"wrote {path}")


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="run the model through torch.compile (faster on CPU after a one-off compile; eager if it fails)")

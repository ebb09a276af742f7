"""laworder command line: the top layer, one module per command group over the Python API.

    common.py     --config / --set, the run options of every training command, build_config
    data.py       laworder data     (laworder.data)
    seg.py        laworder seg      (laworder.seg, laworder.models)
    synth.py      laworder synth    (laworder.synth; probe figure and vae-dice from experiments)
    exp.py        laworder exp      (laworder.experiments)
    report.py     laworder report   (laworder.experiments.report)
    gallery.py    laworder gallery  (laworder.experiments.gallery)
    export.py     laworder export   (laworder.interop)
    demo.py       laworder demo     (laworder.experiments.demo)
    help_text.py  the overview and one example per command (``-h``)

Each group module has ``add_commands(subparsers)``; its handlers parse, call the API and print,
with heavy imports (torch, diffusers, MONAI) inside the handlers, so ``--help`` and argument
errors stay fast. Nothing below this package imports it (``tests/test_layering.py``).

Every training command takes --config (a YAML file or a packaged name such as polyps_paper)
plus --set key.sub=value overrides and first-class flags for the common ones (--epochs, --lr,
--mixed-precision, --resume ...); the resolved config is saved in the run.

Errors: ``main`` is the one place that turns a failure into one stderr line
``laworder: error: ...`` and exit code 2 (bad arguments, ``laworder.errors.*``, OS errors such as
a full disk); the traceback only with ``--debug`` (anywhere on the line) or ``LAWORDER_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from laworder.cli import data, demo, exp, export, gallery, report, seg, synth
from laworder.cli.common import build_config, print_config  # noqa: F401  (public helpers)
from laworder.errors import LaworderError, UsageError

# the command groups, in the order ``laworder --help`` lists them
GROUPS = (data, seg, synth, exp, report, gallery, export, demo)


class _Parser(argparse.ArgumentParser):
    """argparse reporting bad arguments as a ``UsageError`` (one line in ``main``), not usage + exit.

    Sub-command parsers inherit the class (``add_subparsers`` uses ``type(parser)``), so
    commands added by any group get the same behaviour."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("laworder").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``laworder`` parser with every command group (imports no torch)."""
    from laworder import __version__
    from laworder.cli.help_text import DESCRIPTION, OVERVIEW, add_examples

    parser = _Parser(prog="laworder", description=DESCRIPTION, epilog=OVERVIEW,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"laworder {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages (INFO level)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or LAWORDER_DEBUG=1)")
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="refuse images with more pixels than this, unread (default 100000000; "
                             "or LAWORDER_MAX_IMAGE_PIXELS)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    add_examples(parser)
    return parser


EXIT_ERROR = 2  # bad input, refused folder, resource fault: one line on stderr
MAX_ERROR_CHARS = 600


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a multi-line report is joined with "; " and shortened)."""
    if isinstance(err, (LaworderError, argparse.ArgumentError)):
        text = str(err)
    elif isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        text = f"{err.strerror or err}{where}"
    else:
        text = f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = "; ".join(lines) or type(err).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 2 error; ``data check`` 1 for a failed check)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # ``--debug`` is accepted anywhere (``laworder seg train ... --debug``), before argparse sees it
    debug = "--debug" in argv or os.environ.get("LAWORDER_DEBUG", "").lower() not in ("", "0", "false", "no")
    argv = [word for word in argv if word != "--debug"]
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        from laworder.environment import check_environment

        check_environment()  # variables standing for flags are checked like them, before anything is read
        from laworder.progress import route_warnings

        route_warnings()  # warnings and log lines above a live progress bar, not inside it
        if args.max_image_pixels is not None:
            from laworder.data.io import set_max_image_pixels

            set_max_image_pixels(args.max_image_pixels)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        from laworder.errors import TrainingInterrupted

        if isinstance(interrupt, TrainingInterrupted):  # training stopped: what was saved, how to go on
            print(f"laworder: interrupted: {interrupt}", file=sys.stderr)
            print(f"laworder: resume with: {TrainingInterrupted.resume_command(argv)}", file=sys.stderr)
        else:
            print("laworder: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (the one place errors become one line)
        if debug:
            traceback.print_exc()
        print(f"laworder: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR if isinstance(err, (LaworderError, OSError)) else 1

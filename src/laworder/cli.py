"""laworder command line: thin wrappers that parse arguments, call the API and print.

Every training command takes --config (a YAML file or a packaged name such as polyps_paper)
plus --set key.sub=value overrides and first-class flags for the common ones (--epochs, --lr,
--mixed-precision, --resume ...); the resolved config is saved in the run.

Errors: ``main`` is the one place that turns a failure into one stderr line
``laworder: error: ...`` and exit code 2 (bad arguments, ``laworder.errors.*``, OS errors such as
a full disk); the traceback only with ``--debug`` (anywhere on the line) or ``LAWORDER_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from laworder.errors import LaworderError, UsageError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file, or a packaged config by name (e.g. polyps_paper; "
                                         "default: the dataclass defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set loop.lr=3e-4 (repeatable)")


def _common_run_options(parser: argparse.ArgumentParser) -> None:
    from laworder.training.config import REPORT_TO

    _config_options(parser)
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


def _loop_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def _build_config(cls, args: argparse.Namespace, extra: dict[str, Any]):
    from laworder.config import deep_merge, load_config, parse_overrides

    # Flags not given add nothing: an empty ``loop`` mapping would *replace* the YAML's loop section
    # (deep_merge's "{} clears" rule is for an explicit ``--set section={}``, not for absent flags).
    flags = {k: v for k, v in extra.items() if v is not None}
    loop = _loop_overrides(args)
    if loop:
        flags = deep_merge(flags, {"loop": loop})
    # Precedence: dataclass defaults <- YAML <- --set <- explicit flags (the most specific wins).
    overrides = deep_merge(parse_overrides(args.overrides, cls), flags)
    return load_config(cls, args.config, overrides)


# --- data -------------------------------------------------------------------------------
def _data_check(args: argparse.Namespace) -> int:
    from laworder.data.check import check_dataset
    from laworder.errors import DataError

    if not str(args.path).startswith("procedural") and not Path(args.path).exists():
        raise DataError(f"{args.path}: no such dataset folder (or give a procedural[:N[:SIZE[:SEED]]] spec)")
    report = check_dataset(args.path, args.layout)
    print(report.format())
    return 0 if report.ok else 1


def _data_procedural(args: argparse.Namespace) -> int:
    from laworder.data.procedural import generate_procedural

    out = generate_procedural(args.out, num_images=args.num_images, size=args.size, seed=args.seed,
                              num_classes=args.classes)
    kind = f"{args.classes}-class label maps, labels.json" if args.classes > 2 else "binary masks"
    print(f"wrote {args.num_images} procedural pairs to {out} ({kind})")
    return 0


def _data_prepare_kits19(args: argparse.Namespace) -> int:
    from laworder.data.layouts import prepare_kits19

    out = prepare_kits19(args.src, args.dst, keep_kidney=args.keep_kidney)
    what = "kidney + tumour label maps (labels.json)" if args.keep_kidney else "tumour masks"
    print(f"wrote KiTS19 tumour slices with {what} to {out}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True)
    p = data.add_parser("check", help="report every problem in a dataset (names, sizes, masks)")
    p.add_argument("path")
    p.add_argument("--layout", default="auto")
    p.set_defaults(func=_data_check)
    p = data.add_parser("procedural", help="write the built-in procedural lesion dataset")
    p.add_argument("out")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=2,
                   help="classes with the background: 2 = binary masks (default); K > 2 = label maps with K-1 lesion kinds")
    p.set_defaults(func=_data_procedural)
    p = data.add_parser("prepare-kits19", help="KiTS19 NIfTI cases -> pair folder of axial tumour slices")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--keep-kidney", action="store_true",
                   help="label maps with background 0, kidney 1, tumour 2 (labels.json) instead of tumour masks")
    p.set_defaults(func=_data_prepare_kits19)


# --- seg --------------------------------------------------------------------------------
def _seg_config(args: argparse.Namespace):
    from laworder.seg.config import SegTrainConfig

    return _build_config(SegTrainConfig, args, {"data": args.data, "model": args.model, "image_size": args.image_size})


def print_config(config: Any) -> int:
    """The resolved config as YAML on stdout (what ``--config`` reads back)."""
    import yaml

    from laworder.config import to_dict

    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


def _seg_print_config(args: argparse.Namespace) -> int:
    return print_config(_seg_config(args))


def _seg_train(args: argparse.Namespace) -> int:
    from laworder.seg.train import train_segmenter

    run = train_segmenter(_seg_config(args))
    print(f"run folder: {run.run_dir}  (train {run.num_train}, val {run.num_val}, extra {run.num_extra}; "
          f"best {run.fit.best_metric} at step {run.fit.best_step})")
    return 0


def _seg_protocol(args: argparse.Namespace) -> int:
    from laworder.seg.protocol import format_protocol, run_protocol

    result = run_protocol(_seg_config(args), seeds=args.seeds, test_data=args.test_data, subsets=args.subset)
    print(format_protocol([result]))
    return 0


def _seg_evaluate(args: argparse.Namespace) -> int:
    from laworder.errors import ConfigError
    from laworder.seg.evaluate import evaluate_records, evaluation_subsets, format_markdown, write_eval

    model, config, _ = _seg_model(args, [args.run] if args.run else [], 1)
    if args.pretrained and not (args.data and args.out):
        raise ConfigError("with --pretrained give --data (the dataset to score) and --out (where eval.json goes)")
    subsets = evaluation_subsets(args.data or config.data, "auto" if args.data else config.layout, args.subset)
    result = evaluate_records(model, subsets, config.image_size, config.channels, config.threshold,
                              progress=not args.no_progress, labels=config.labels, compile=args.compile)
    out = write_eval(result, args.out or Path(args.run) / "eval", title=args.pretrained or config.model)
    print(format_markdown(result, config.model))
    print(f"wrote {out}/eval.json and eval.md")
    return 0


def _seg_model(args: argparse.Namespace, paths: list[str], wanted: int):
    """(model, config, remaining paths): shipped weights with ``--pretrained``, else ``paths[0]`` is a run folder."""
    from laworder.errors import ConfigError
    from laworder.seg.loading import load_pretrained_segmenter, load_segmenter

    given = len(paths) + (1 if args.pretrained else 0)
    if given != wanted:
        usage = " ".join(args.usage_paths)
        raise ConfigError(f"expected {usage} (RUN or --pretrained NAME), got {len(paths)} path(s): {' '.join(paths) or '(none)'}")
    if args.pretrained:
        return (*load_pretrained_segmenter(args.pretrained), paths)
    return (*load_segmenter(paths[0], args.which), paths[1:])


PREDICT_OUTPUTS = ("masks", "overlays", "probabilities", "skipped.json")


def _seg_predict(args: argparse.Namespace) -> int:
    from laworder.data.io import open_image
    from laworder.data.precheck import check_output_dir, clear_owned, readable_inputs, write_skipped
    from laworder.seg.predict import list_images, predict_folder

    if args.onnx and args.compile:  # flags first: no model is loaded for a command that cannot run
        from laworder.errors import ConfigError

        raise ConfigError("--compile applies to the PyTorch model; --onnx runs onnxruntime instead: give one of them")
    # inputs first (weights, model file, every image decoded), then the output folder
    model, config, (source, out) = _seg_model(args, args.paths, 3)
    if args.onnx:
        from laworder.seg.export import OnnxSegmenter

        if not Path(args.onnx).is_file():
            from laworder.errors import MissingWeightsError

            raise MissingWeightsError(f"--onnx {args.onnx}: file not found")
        model = OnnxSegmenter(args.onnx)
    files, skipped = readable_inputs(list_images(source), lambda path: open_image(path).close(),
                                     args.skip_unreadable, what="images")
    from laworder.parallel import process_state, wait

    state = process_state()
    main_process = state.is_main_process  # under accelerate launch every process runs this
    if check_output_dir(out, args.overwrite) and main_process:
        clear_owned(out, PREDICT_OUTPUTS)
    # every process checks the folder before any process writes into it
    wait(state)
    written = predict_folder(model, files, out, config.image_size, config.channels, config.threshold,
                             write_overlays=not args.no_overlays, resize=args.resize, tta=args.tta,
                             save_probabilities=args.save_probabilities, progress=not args.no_progress,
                             labels=config.labels, compile=args.compile)
    if main_process:
        note = f"; skipped {len(skipped)} unreadable, listed in {write_skipped(out, skipped)}" if skipped else ""
        print(f"wrote {len(written)} masks to {Path(out) / 'masks'}{note}")
    return 0


def _seg_export(args: argparse.Namespace) -> int:
    from laworder.seg.export import export_onnx
    from laworder.seg.loading import load_segmenter

    model, config = load_segmenter(args.run, args.which)
    if Path(args.out).is_dir():
        from laworder.errors import RunDirError

        raise RunDirError(f"{args.out} is a folder; give the path of the .onnx file to write")
    if Path(args.out).exists() and not args.overwrite:
        from laworder.errors import RunDirError

        raise RunDirError(f"{args.out} exists; pass --overwrite to replace it")
    if args.image_size is not None:
        from laworder.seg.validate import check_image_size

        check_image_size(model, args.image_size, config.model, where="--image-size")
    report = export_onnx(model, args.out, input_size=args.image_size or config.image_size, channels=config.channels,
                         progress=not args.no_progress)
    sizes = ", ".join(f"{h}×{w}" for h, w in report.checked_sizes)
    print(f"wrote {report.path} (dynamic H×W; onnxruntime parity at {sizes}: max abs diff {report.max_abs_diff:.2e})")
    return 0


def _seg_profile(args: argparse.Namespace) -> int:
    from laworder.models import create_model
    from laworder.models.registry import MODELS
    from laworder.seg.validate import check_image_size
    from laworder.training.validate import at_least, one_of

    if args.out and Path(args.out).is_dir():
        from laworder.errors import RunDirError

        raise RunDirError(f"--out {args.out} is a folder; give the path of the JSON file to write")
    at_least("--batch-size", args.batch_size, 1)
    at_least("--repeats", args.repeats, 1)
    for name in args.models or MODELS.names():
        one_of("--models", name, MODELS.names())
        check_image_size(create_model(name), args.image_size, name, where="--image-size")
    from laworder.seg.profile import format_table, profile_models, rows_to_json

    rows = profile_models(args.models, image_size=args.image_size, batch_size=args.batch_size,
                          device=args.device, repeats=args.repeats, onnx=args.onnx)
    print(format_table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows_to_json(rows), indent=2))
        print(f"wrote {args.out}")
    return 0


def _seg_list(args: argparse.Namespace) -> int:
    from laworder.models.registry import MODELS

    for name, doc in MODELS.describe().items():
        print(f"{name:16s} {doc}")
    from laworder.models.pretrained import list_pretrained, weights_dir

    shipped = list_pretrained()
    print(f"\nshipped weights ({weights_dir()}); use create_model(MODEL, pretrained=DATASET) or --pretrained MODEL/DATASET:")
    if not shipped:
        print("  (none)")
    for w in shipped:
        dice = f"{100 * w.test_dice:.1f}" if w.test_dice is not None else "n/a"
        subsets = ", ".join(f"{k} {100 * v['dice']:.1f}" for k, v in w.meta.get("test", {}).get("subsets", {}).items())
        print(f"  {w.name:20s} {w.model:10s} {w.dataset:8s} {w.image_size}²  {w.in_channels}ch  "
              f"test Dice {dice} ({subsets})  [{w.kind}]")
    return 0


def _add_seg(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("seg", help="segmentation: train, protocol, evaluate, predict, profile, export").add_subparsers(dest="action", required=True)
    for name, func, helptext in (("train", _seg_train, "train one segmenter (paper Table 12 recipe by default)"),
                                 ("protocol", _seg_protocol, "5-seed protocol: train + test per seed, mean ± std"),
                                 ("config", _seg_print_config, "print the full training config as YAML "
                                                               "(defaults <- --config <- flags and --set)")):
        p = seg.add_parser(name, help=helptext)
        _common_run_options(p)
        p.add_argument("--data", help="dataset folder or procedural[:N[:SIZE[:SEED]]]")
        p.add_argument("--model", help="registered model name (laworder seg list)")
        p.add_argument("--image-size", type=int)
        if name == "protocol":
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
            p.add_argument("--test-data", help="dataset whose test subsets are scored (default: --data)")
            p.add_argument("--subset", nargs="+", help="only these test subsets")
        p.set_defaults(func=func)
    p = seg.add_parser("evaluate", help="Dice/IoU per image, per subset and over subsets")
    p.add_argument("run", nargs="?", help="run folder (or --pretrained NAME)")
    p.add_argument("--pretrained", metavar="MODEL/DATASET", help="score shipped weights (laworder seg list)")
    p.add_argument("--data", help="dataset to score (default: the run's dataset test subsets)")
    p.add_argument("--subset", nargs="+")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--out")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (faster on CPU after a one-off compile; eager if it fails)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_seg_evaluate, usage_paths=["RUN"])
    p = seg.add_parser("predict", help="write mask PNGs and overlays for a folder of images",
                       usage="laworder seg predict [-h] (RUN | --pretrained MODEL/DATASET) SOURCE OUT [options]")
    p.add_argument("paths", nargs="+", metavar="[RUN] SOURCE OUT",
                   help="run folder (omit with --pretrained), image folder / pair folder / one image, output folder")
    p.add_argument("--pretrained", metavar="MODEL/DATASET",
                   help="use weights shipped with the package instead of a run folder (laworder seg list)")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--onnx", help="run this exported .onnx model with onnxruntime instead of PyTorch")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (faster on CPU after a one-off compile; eager if it fails)")
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--resize", default="squash", choices=["squash", "pad", "sliding"],
                   help="squash to the training size (default); pad: keep the aspect ratio, pad to a multiple of 32; "
                        "sliding: native resolution, Gaussian-blended training-size windows (MONAI)")
    p.add_argument("--tta", action="store_true", help="average the logits over the four flips (nnU-Net mirroring)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write probabilities/<stem>.npz (float32 K×H×W, background first)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="predict the readable images, list the others in OUT/skipped.json (default: stop, write nothing)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier predictions in a non-empty OUT")
    p.set_defaults(func=_seg_predict, usage_paths=["RUN", "SOURCE", "OUT"])
    p = seg.add_parser("export", help="export to ONNX and check onnxruntime parity")
    p.add_argument("run")
    p.add_argument("out", help="path of the .onnx file")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--image-size", type=int, help="first parity-check size (default: the training size)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at OUT")
    p.set_defaults(func=_seg_export)
    p = seg.add_parser("profile", help="Table 9: params, FLOPs (two conventions), latency, memory")
    p.add_argument("--models", nargs="+", help="default: every registered model")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--onnx", action="store_true", help="also time the onnxruntime export")
    p.add_argument("--out", help="write the rows as JSON here")
    p.set_defaults(func=_seg_profile)
    p = seg.add_parser("list", help="registered segmenters and the weights shipped with the package")
    p.set_defaults(func=_seg_list)


# --- registration -----------------------------------------------------------------------
CORE_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_data, _add_seg]
# Stages that live in their own packages contribute ``add_commands(subparsers)``.
STAGE_CLI_MODULES = ("laworder.synth.cli", "laworder.experiments.cli")


def _stage_builders() -> list[Callable[[argparse._SubParsersAction], None]]:
    builders = []
    for module_name in STAGE_CLI_MODULES:
        try:
            module = __import__(module_name, fromlist=["add_commands"])
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        builders.append(module.add_commands)
    return builders


class _Parser(argparse.ArgumentParser):
    """argparse reporting bad arguments as a ``UsageError`` (one line in ``main``), not usage + exit.

    Sub-command parsers inherit the class (``add_subparsers`` uses ``type(parser)``), so
    commands added by any stage get the same behaviour."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("laworder").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from laworder import __version__

    from laworder.cli_help import DESCRIPTION, OVERVIEW, add_examples

    parser = _Parser(prog="laworder", description=DESCRIPTION, epilog=OVERVIEW,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"laworder {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages (INFO level)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or LAWORDER_DEBUG=1)")
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="refuse images with more pixels than this, unread (default 100000000; "
                             "or LAWORDER_MAX_IMAGE_PIXELS)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for builder in CORE_BUILDERS + _stage_builders():
        builder(sub)
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
        if args.max_image_pixels is not None:
            from laworder.data.io import set_max_image_pixels

            set_max_image_pixels(args.max_image_pixels)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("laworder: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (the one place errors become one line)
        if debug:
            traceback.print_exc()
        print(f"laworder: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR if isinstance(err, (LaworderError, OSError)) else 1


if __name__ == "__main__":
    sys.exit(main())

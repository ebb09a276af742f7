"""``laworder seg``: train, protocol, config, evaluate, predict, export, profile, list (thin layer
over ``laworder.seg`` and ``laworder.models``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from laworder.cli.common import add_compile_flag, build_config, common_run_options, print_config


def _seg_config(args: argparse.Namespace):
    from laworder.seg.config import SegTrainConfig

    return build_config(SegTrainConfig, args, {"data": args.data, "model": args.model, "image_size": args.image_size})


def _seg_print_config(args: argparse.Namespace) -> int:
    from laworder.config import check_seed

    config = _seg_config(args)
    check_seed("loop.seed", config.loop.seed)  # a seed train would refuse is refused here too (no torch import)
    check_seed("split_seed", config.split_seed, optional=True)
    return print_config(config)


def _checked_seg_config(args: argparse.Namespace):
    """The config, with every value checked that needs no torch (before the training code is imported):
    a bad value or a missing data folder is answered at once; the training code checks again."""
    from laworder.data.source import check_data_source
    from laworder.seg.validate import check_seg_values

    config = _seg_config(args)
    check_data_source(config.data)  # first: the loop check imports torch for the optimizer names
    check_seg_values(config)
    return config


def _seg_train(args: argparse.Namespace) -> int:
    config = _checked_seg_config(args)
    from laworder.progress import fmt
    from laworder.seg.train import train_segmenter

    run = train_segmenter(config)
    print(f"run folder: {run.run_dir}  (train {run.num_train}, val {run.num_val}, extra {run.num_extra}; "
          f"best {fmt(run.fit.best_metric)} at step {run.fit.best_step})")
    return 0


def _seg_protocol(args: argparse.Namespace) -> int:
    config = _checked_seg_config(args)
    from laworder.seg.protocol import format_protocol, run_protocol

    result = run_protocol(config, seeds=args.seeds, test_data=args.test_data, subsets=args.subset,
                          nsd_tolerance=args.nsd_tolerance)
    print(format_protocol([result]))
    return 0


def _seg_evaluate(args: argparse.Namespace) -> int:
    from laworder.errors import ConfigError
    from laworder.seg.evaluate import eval_output, evaluate_records, evaluation_subsets, format_markdown, write_eval

    from laworder.training.validate import at_least

    at_least("--nsd-tolerance", args.nsd_tolerance, 0)
    model, config, _ = _seg_model(args, [args.run] if args.run else [], 1)
    # the same flags for a run folder and shipped weights: --data defaults to the dataset the
    # model was trained on (a shipped card records it; it must exist here), --out to RUN/eval
    data = args.data or config.data
    if not data:
        raise ConfigError(f"{args.pretrained} records no dataset: give --data (the dataset to score)")
    if not args.data and args.pretrained and not data.startswith("procedural") and not Path(data).exists():
        raise ConfigError(f"{args.pretrained} was trained on {data}, which is not here: give --data (the dataset to score)")
    out = args.out or (Path(args.run) / "eval" if args.run else None)
    output = eval_output(out, args.overwrite, run=args.run, data=args.data) if out is not None else None
    if output is not None:
        output.check()  # before scoring: an earlier evaluation is replaced only with --overwrite
    subsets = evaluation_subsets(data, "auto" if args.data or args.pretrained else config.layout, args.subset)
    result = evaluate_records(model, subsets, config.image_size, config.channels, config.threshold,
                              progress=not args.no_progress, labels=config.labels, compile=args.compile,
                              nsd_tolerance=args.nsd_tolerance)
    print(format_markdown(result, args.pretrained or config.model))
    if out is None:
        print("(shipped weights: nothing written; give --out DIR to keep eval.json and eval.md)")
        return 0
    out = write_eval(result, out, title=args.pretrained or config.model, output=output)
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


PREDICT_OUTPUTS = ("masks", "overlays", "probabilities", "skipped.json", "predict.json")


def _onnx_model(args: argparse.Namespace):
    """``seg predict --onnx FILE``: (onnxruntime model, settings, (SOURCE, OUT), resize mode).

    ``--onnx FILE SOURCE OUT`` takes every setting from the file's metadata (``seg export``);
    with RUN or --pretrained the file must have been exported from that model (its recorded
    weights fingerprint and settings), and the settings are that model's."""
    from laworder.seg.export import OnnxSegmenter, onnx_predict_settings

    onnx_model = OnnxSegmenter(args.onnx)  # a missing or garbage file is refused first
    if not args.pretrained and len(args.paths) == 2:
        config = onnx_predict_settings(onnx_model)
        paths = args.paths
    else:
        model, config, paths = _seg_model(args, args.paths, 3)
        config = onnx_predict_settings(onnx_model, model, config)
    resize = args.resize or (onnx_model.usage.resize if onnx_model.usage else "squash")
    from laworder.data.labels import is_multiclass

    onnx_model.check_fits(config.channels, config.image_size, resize,
                          num_classes=len(config.labels) if is_multiclass(config.labels) else 2)
    return onnx_model, config, paths, resize


def _seg_predict(args: argparse.Namespace) -> int:
    from laworder.data.io import open_image
    from laworder.data.precheck import readable_inputs
    from laworder.seg.predict import list_images, predict_folder

    if args.onnx and args.compile:  # flags first: no model is loaded for a command that cannot run
        from laworder.errors import ConfigError

        raise ConfigError("--compile applies to the PyTorch model; --onnx runs onnxruntime instead: give one of them")
    # inputs first (weights, model file, every image decoded), then the output folder
    if args.onnx:
        model, config, (source, out), resize = _onnx_model(args)
    else:
        model, config, (source, out) = _seg_model(args, args.paths, 3)
        resize = args.resize or "squash"
    files, skipped = readable_inputs(list_images(source), lambda path: open_image(path).close(),
                                     args.skip_unreadable, what="images")
    from laworder.parallel import process_state

    written = predict_folder(model, files, out, config.image_size, config.channels, config.threshold,
                             write_overlays=not args.no_overlays, resize=resize, tta=args.tta,
                             save_probabilities=args.save_probabilities, progress=not args.no_progress,
                             labels=config.labels, compile=args.compile, overwrite=args.overwrite, skipped=skipped)
    if process_state().is_main_process:
        note = f"; skipped {len(skipped)} unreadable, listed in {Path(out) / 'skipped.json'}" if skipped else ""
        print(f"wrote {len(written)} masks to {Path(out) / 'masks'}{note}")
    return 0


def _seg_export(args: argparse.Namespace) -> int:
    from laworder.seg.export import check_export_paths, export_onnx, usage_of

    model, config, (out,) = _seg_model(args, args.paths, 2)
    args.out = out
    run = None if args.pretrained else args.paths[0]
    check_export_paths(args.out, args.overwrite, run=run)  # the model, its sidecar, the run's own files
    if args.image_size is not None:
        from laworder.seg.validate import check_image_size

        check_image_size(model, args.image_size, config.model, where="--image-size")
    report = export_onnx(model, args.out, input_size=args.image_size or config.image_size, channels=config.channels,
                         progress=not args.no_progress, usage=usage_of(model, config), overwrite=args.overwrite)
    sizes = ", ".join(f"{h}×{w}" for h, w in report.checked_sizes)
    print(f"wrote {report.path} (dynamic H×W; onnxruntime parity at {sizes}: max abs diff {report.max_abs_diff:.2e}; "
          f"settings in its metadata: `laworder seg predict --onnx {report.path} IMAGES OUT` needs no run folder)")
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("seg", help="segmentation: train, protocol, evaluate, predict, profile, export").add_subparsers(dest="action", required=True)
    for name, func, helptext in (("train", _seg_train, "train one segmenter (paper Table 12 recipe by default)"),
                                 ("protocol", _seg_protocol, "5-seed protocol: train + test per seed, mean ± std"),
                                 ("config", _seg_print_config, "print the full training config as YAML "
                                                               "(defaults <- --config <- flags and --set)")):
        p = seg.add_parser(name, help=helptext)
        common_run_options(p)
        p.add_argument("--data", help="dataset folder or procedural[:N[:SIZE[:SEED]]]")
        p.add_argument("--model", help="registered model name (laworder seg list)")
        p.add_argument("--image-size", type=int)
        if name == "protocol":
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
            p.add_argument("--test-data", help="dataset whose test subsets are scored (default: --data)")
            p.add_argument("--subset", nargs="+", help="only these test subsets")
            p.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="PX",
                           help="surface Dice tolerance in pixels (default 2); HD95 and NSD join the table")
        p.set_defaults(func=func)
    p = seg.add_parser("evaluate", help="Dice/IoU, HD95 and surface Dice per image, per subset and over subsets")
    p.add_argument("run", nargs="?", help="run folder (or --pretrained NAME)")
    p.add_argument("--pretrained", metavar="MODEL/DATASET", help="score shipped weights (laworder seg list)")
    p.add_argument("--data", help="dataset to score (default: the run's dataset test subsets)")
    p.add_argument("--subset", nargs="+")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--out", help="folder for eval.json and eval.md (default: RUN/eval; with --pretrained "
                                 "nothing is written unless given)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="PX",
                   help="normalised surface Dice tolerance in pixels of the model's input grid (default 2); "
                        "HD95 is reported beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in the folder")
    add_compile_flag(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_seg_evaluate, usage_paths=["RUN"])
    p = seg.add_parser("predict", help="write mask PNGs and overlays for a folder of images",
                       usage="laworder seg predict [-h] (RUN | --pretrained MODEL/DATASET | --onnx FILE) SOURCE OUT [options]")
    p.add_argument("paths", nargs="+", metavar="[RUN] SOURCE OUT",
                   help="run folder (omit with --pretrained or --onnx), image folder / pair folder / one image, output folder")
    p.add_argument("--pretrained", metavar="MODEL/DATASET",
                   help="use weights shipped with the package instead of a run folder (laworder seg list)")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--onnx", metavar="FILE",
                   help="run this `seg export`ed model with onnxruntime; alone it needs no run folder (its settings are "
                        "in the file); with RUN or --pretrained it must have been exported from that model")
    add_compile_flag(p)
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--resize", choices=["squash", "pad", "sliding"],
                   help="squash to the training size (default; an ONNX file's recorded mode); pad: keep the aspect ratio, pad to a multiple of 32; "
                        "sliding: native resolution, Gaussian-blended training-size windows (MONAI)")
    p.add_argument("--tta", action="store_true", help="average the logits over the four flips (nnU-Net mirroring)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write probabilities/<stem>.npz (float32 K×H×W, background first)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="predict the readable images, list the others in OUT/skipped.json (default: stop, write nothing)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier predictions in a non-empty OUT")
    p.set_defaults(func=_seg_predict, usage_paths=["RUN", "SOURCE", "OUT"])
    p = seg.add_parser("export", help="export to ONNX (settings in its metadata) and check onnxruntime parity",
                       usage="laworder seg export [-h] (RUN | --pretrained MODEL/DATASET) OUT [options]")
    p.add_argument("paths", nargs="+", metavar="[RUN] OUT", help="run folder (omit with --pretrained), path of the .onnx file")
    p.add_argument("--pretrained", metavar="MODEL/DATASET", help="export weights shipped with the package (laworder seg list)")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--image-size", type=int, help="first parity-check size (default: the training size)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at OUT")
    p.set_defaults(func=_seg_export, usage_paths=["RUN", "OUT"])
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

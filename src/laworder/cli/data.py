"""``laworder data``: check, procedural, prepare-kits19 (thin layer over ``laworder.data``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _data_check(args: argparse.Namespace) -> int:
    from laworder.errors import DataError

    if not str(args.path).startswith("procedural") and not Path(args.path).exists():
        raise DataError(f"{args.path}: no such dataset folder (or give a procedural[:N[:SIZE[:SEED]]] spec)")
    from laworder.data.check import check_dataset

    report = check_dataset(args.path, args.layout)
    print(report.format())
    return 0 if report.ok else 1


def _data_procedural(args: argparse.Namespace) -> int:
    from laworder.data.procedural import write_procedural

    out = write_procedural(args.out, num_images=args.num_images, size=args.size, seed=args.seed,
                           num_classes=args.classes, overwrite=args.overwrite)
    kind = f"{args.classes}-class label maps, labels.json" if args.classes > 2 else "binary masks"
    print(f"wrote {args.num_images} procedural pairs to {out} ({kind})")
    return 0


def _data_prepare_kits19(args: argparse.Namespace) -> int:
    from laworder.data.layouts import prepare_kits19

    out = prepare_kits19(args.src, args.dst, keep_kidney=args.keep_kidney)
    what = "kidney + tumour label maps (labels.json)" if args.keep_kidney else "tumour masks"
    print(f"wrote KiTS19 tumour slices with {what} to {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace a procedural dataset written earlier in OUT (never other files)")
    p.set_defaults(func=_data_procedural)
    p = data.add_parser("prepare-kits19", help="KiTS19 NIfTI cases -> pair folder of axial tumour slices")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--keep-kidney", action="store_true",
                   help="label maps with background 0, kidney 1, tumour 2 (labels.json) instead of tumour masks")
    p.set_defaults(func=_data_prepare_kits19)

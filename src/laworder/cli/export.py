"""``laworder export``: datasets for other tools (``laworder.interop``: nnU-Net v2)."""

from __future__ import annotations

import argparse


def _export_nnunet(args: argparse.Namespace) -> int:
    from laworder.interop.nnunet import export_nnunet_dataset

    folder = export_nnunet_dataset(args.real, args.out, args.id, args.name, extra=args.extra, extra_limit=args.extra_limit,
                                   layout=args.layout, channels=args.channels, image_size=args.image_size,
                                   include_test=not args.no_test, overwrite=args.overwrite,
                                   skip_unreadable=args.skip_unreadable)
    print(f"wrote {folder} (passes nnU-Net v2's dataset checks); validation-real-only folds in "
          f"{folder / 'laworder_splits_final.json'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write datasets for other tools").add_subparsers(dest="action", required=True)
    p = export.add_parser("nnunet", help="real (+ synthetic) pairs as an nnU-Net v2 raw dataset")
    p.add_argument("real", help="real dataset folder (any layout) or procedural spec")
    p.add_argument("out", help="nnUNet_raw folder; DatasetXXX_NAME/ is created inside")
    p.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1..999; custom ones from 500)")
    p.add_argument("--name", required=True, help="dataset name, e.g. Polyps")
    p.add_argument("--extra", nargs="+", default=[], metavar="POOL", help="synthetic pool folders (cases syn_<stem>)")
    p.add_argument("--extra-limit", type=int, help="use only the first N synthetic pairs")
    p.add_argument("--layout", default="auto")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="3 = RGB PNG (R, G, B), 1 = grayscale")
    p.add_argument("--image-size", type=int, help="resize every case to this square size (default: keep sizes)")
    p.add_argument("--no-test", action="store_true", help="do not write the test subsets to imagesTs/labelsTs")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="export the readable pairs, list the others in the dataset folder's skipped.json")
    p.set_defaults(func=_export_nnunet)

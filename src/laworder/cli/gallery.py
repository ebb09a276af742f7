"""``laworder gallery``: one HTML page of a pool or of predictions (``laworder.experiments.gallery``)."""

from __future__ import annotations

import argparse


def _gallery(args: argparse.Namespace) -> int:
    from pathlib import Path

    from laworder.errors import RunDirError
    from laworder.experiments.gallery import load_gallery, write_gallery
    from laworder.training.validate import at_least

    at_least("--tolerance", args.tolerance, 0)
    at_least("--thumb", args.thumb, 16)
    out = Path(args.output)
    if out.is_dir() or (out.exists() and not args.overwrite):  # before reading any picture
        raise RunDirError(f"{out} is a folder; give the path of the .html file to write" if out.is_dir()
                          else f"{out} exists; pass --overwrite to replace it")
    gallery = load_gallery(args.source, predictions=args.predictions, scores=args.scores, images=args.images,
                           truth=args.truth, tolerance=args.tolerance)
    page = write_gallery(gallery, out, thumb=args.thumb, overwrite=args.overwrite)
    scored = f", sorted worst first by {gallery.score_columns[0]}" if gallery.score_columns else ""
    print(f"wrote {page} ({len(gallery.rows)} rows{scored}; pictures embedded, open it in any browser)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="one self-contained HTML page of a pool or of seg predict output, worst first")
    p.add_argument("source", help="a pool folder (synth sample) or a `seg predict` output folder")
    p.add_argument("-o", "--output", required=True, help="the .html file to write")
    p.add_argument("--predictions", metavar="DIR",
                   help="pool: a `seg predict` output over the pool's images (the recovered masks)")
    p.add_argument("--scores", metavar="JSON",
                   help="per-image scores to show: `exp mask-recovery --out` JSON (pool) or `seg evaluate`'s eval.json "
                        "(predictions); default: computed from the masks")
    p.add_argument("--images", metavar="DIR", help="predictions: the images that were predicted (default: from predict.json)")
    p.add_argument("--truth", metavar="DIR",
                   help="predictions: folder of reference masks (default: masks/ beside a pair folder's images/)")
    p.add_argument("--tolerance", type=float, default=2.0, metavar="PX", help="surface-Dice tolerance in pixels (default 2)")
    p.add_argument("--thumb", type=int, default=192, metavar="PX", help="longer side of each embedded picture (default 192)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing page")
    p.set_defaults(func=_gallery)

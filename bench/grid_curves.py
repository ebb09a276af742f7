"""Validation curves of two protocol grids at matched epochs (same split seed, so the same validation set).

    python bench/grid_curves.py bench/results/seg_protocol bench/results/seg_protocol_balanced

For every (dataset, model, seed) run present in both grids (finished or not), the validation Dice
and loss every ``--every`` epochs up to the last epoch both have logged, and the best validation
Dice so far on each side. Runs of one seed share their train/validation split in every grid
(``split_seed`` = seed), so the curves differ only by what distinguishes the grids (grid.json).
An interim look, not a test result: the grids' test scores come from bench/seg_protocol.py.

Writes bench/results/grid_curves.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def curve(metrics: Path) -> dict[int, dict[str, float]]:
    """epoch -> {"dice", "loss"} from a run's metrics.jsonl (validation rows only)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {row["epoch"]: {"dice": row["val_dice"], "loss": row["val_loss"]} for row in rows if "val_dice" in row}


def label(grid: Path) -> str:
    recorded = grid / "grid.json"
    return json.loads(recorded.read_text()).get("head_init", grid.name) if recorded.is_file() else grid.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grid_curves")
    args = parser.parse_args()
    names = (label(args.first), label(args.second))
    runs = sorted(p.parent.relative_to(args.second) for p in args.second.glob("*/*/seed*/metrics.jsonl")
                  if (args.first / p.parent.relative_to(args.second) / "metrics.jsonl").is_file())
    payload, lines = {"grids": [str(args.first), str(args.second)], "labels": names, "runs": {}}, []
    lines += [f"# Validation curves: {names[0]} vs {names[1]} (matched epochs, same validation set)", "",
              f"Command: `python bench/grid_curves.py {args.first.relative_to(ROOT) if args.first.is_relative_to(ROOT) else args.first} "
              f"{args.second.relative_to(ROOT) if args.second.is_relative_to(ROOT) else args.second} --every {args.every}`. "
              "Interim look at validation only (the grids' test scores are in their tables).", ""]
    for run in runs:
        a, b = curve(args.first / run / "metrics.jsonl"), curve(args.second / run / "metrics.jsonl")
        shared = sorted(set(a) & set(b))
        if not shared:
            continue
        last = shared[-1]
        epochs = [e for e in shared if e % args.every == 0] + ([last] if last % args.every else [])
        best = [max(c[e]["dice"] for e in shared) for c in (a, b)]
        payload["runs"][str(run)] = {"epochs": epochs, "last_shared_epoch": last, names[0]: [a[e] for e in epochs],
                                     names[1]: [b[e] for e in epochs], "best_val_dice_to_last_shared": best}
        lines += [f"### {run} (up to epoch {last})", "",
                  f"| epoch | {names[0]} val Dice | {names[1]} val Dice | {names[0]} val loss | {names[1]} val loss |",
                  "|---|---|---|---|---|"]
        lines += [f"| {e} | {100 * a[e]['dice']:.1f} | {100 * b[e]['dice']:.1f} | {a[e]['loss']:.2f} | {b[e]['loss']:.2f} |"
                  for e in epochs]
        lines += [f"| best to epoch {last} | {100 * best[0]:.1f} | {100 * best[1]:.1f} | | |", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / f"{args.out.name}.md").write_text("\n".join(lines) + "\n")
    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(payload, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

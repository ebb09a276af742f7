"""Copy the best finished ORDER / MK-UNet runs into the package as shipped weights (+ model cards).

    python bench/ship_weights.py          # writes src/laworder/pretrained/<model>-<dataset>/

For each model and dataset, the finished protocol run (bench/results/seg_protocol_balanced and
bench/results/seg_protocol, Table 12 recipe) with the best *validation* Dice is shipped (test scores never pick the weights). Where no
protocol run has finished yet, the short CPU run in bench/results/seg_short is shipped instead and
its card says plainly that it is not the paper's protocol. Rerun after more protocol runs finish.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "src"))

PAIRS = [("polyps", "order"), ("polyps", "mk_unet"), ("brisc", "order"), ("brisc", "mk_unet")]
SOURCES = [  # (kind, results folders): the first kind with a finished run wins, best validation over its folders
    # the two protocol grids differ only in the output-head init (balanced, and nonnegative: the default)
    ("protocol", [ROOT / "bench" / "results" / "seg_protocol_balanced", ROOT / "bench" / "results" / "seg_protocol"]),
    ("short-cpu", [ROOT / "bench" / "results" / "seg_short"]),
]
DEST = ROOT / "src" / "laworder" / "pretrained"


def finished_runs(folder: Path) -> list[tuple[float, Path]]:
    """(best validation Dice, run folder) of every finished and scored seed under ``folder``."""
    from laworder.seg.protocol import run_finished

    runs = []
    for run_json in sorted(folder.glob("seed*/run.json")):
        if run_finished(run_json) and (run_json.parent / "eval.json").is_file():
            runs.append((float(json.loads(run_json.read_text())["best_metric"]), run_json.parent))
    return runs


def describe(kind: str, run: Path) -> str:
    from laworder.models.mk_unet import DEFAULT_HEAD_INIT

    config = (run / "config.yaml").read_text()
    size = next(line.split(":")[1].strip() for line in config.splitlines() if line.startswith("image_size:"))
    if kind == "protocol":
        grid = run.parents[2] / "grid.json"  # <grid>/<dataset>/<model>/seed<k>
        head_init = json.loads(grid.read_text())["head_init"] if grid.is_file() else DEFAULT_HEAD_INIT
        return (f"One run of the paper's Table 12 recipe at {size}² on this CPU (the best validation Dice among the "
                f"finished seeds of bench/seg_protocol.py, output heads initialised `{head_init}`). "
                "The paper trains at 256².")
    return (f"A SHORT CPU run, not the paper's protocol: {size}², few epochs and lr 1e-3 (see Recipe below), "
            "made because no 100-epoch protocol run had finished when these weights were shipped. Expect lower "
            "scores than the paper's; bench/ship_weights.py replaces them once a protocol run finishes.")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print what would be shipped; write nothing")
    return parser.parse_args()


def main() -> None:
    from laworder.seg.ship import ship_run

    args = parse()
    for dataset, model in PAIRS:
        for kind, folders in SOURCES:
            runs = [run for results in folders for run in finished_runs(results / dataset / model)]
            if not runs:
                continue
            best_val, run = max(runs)
            if not any((run / "model" / which / "model.safetensors").is_file() for which in ("best", "last")):
                # run folders keep their weights out of git: a run shipped in an earlier session stays shipped
                print(f"{model}/{dataset}: {run.relative_to(ROOT)} has no weights on this machine; keeping the "
                      "shipped ones")
                break
            if args.dry_run:
                print(f"{model}/{dataset}: would ship {kind} run {run.relative_to(ROOT)} (val Dice {100 * best_val:.1f})")
                break
            provenance = json.loads((run / "provenance.json").read_text()) if (run / "provenance.json").is_file() else {}
            command = (f"{provenance.get('command', 'unknown')}  # run {run.relative_to(ROOT)}; "
                       "then python bench/ship_weights.py")
            weights = ship_run(run, DEST, dataset=dataset, kind=kind, description=describe(kind, run), command=command,
                               source_name=str(run.relative_to(ROOT)))
            print(f"{weights.name}: {kind} run {run.relative_to(ROOT)} (val Dice {100 * best_val:.1f}, "
                  f"test Dice {100 * weights.test_dice:.1f}) -> {weights.folder.relative_to(ROOT)}")
            break
        else:
            print(f"{model}/{dataset}: no finished run yet; nothing shipped")


if __name__ == "__main__":
    main()

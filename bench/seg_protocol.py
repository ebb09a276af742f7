"""The paper's segmentation protocol (Table 12 recipe) on this machine, one run at a time, resumable.

Grid (issue 11 item 3): ORDER[0,1] and MK-UNet on polyps and BRISC, then the SE-skip and
CBAM-skip controls on polyps, for each seed. Each run is the Table 12 recipe (AdEMAMix, lr 1e-4,
wd 1e-4, cosine to 1e-6, 100 epochs, batch 16, BCE + Dice, flips and ±90° rotations, a fresh
90/10 train/val split per seed, best-validation checkpointing) at 160² (a 256² run takes far more
than 3 h on one core here), then the best weights are scored on every test subset.

    OMP_NUM_THREADS=1 nohup python bench/seg_protocol.py --resume > bench/results/seg_protocol/log.txt 2>&1 &
    python bench/seg_protocol.py --table      # only rewrite the table from what is on disk
    python bench/seg_protocol.py --list       # the job order and each run's state
    OMP_NUM_THREADS=1 python bench/seg_protocol.py --rescore   # add HD95/NSD to finished runs' eval.json

``--rescore`` re-scores each finished run's best weights exactly as the grid did (same data, test
subsets, image size, channels and threshold from its config.yaml) with HD95 and NSD
(``--nsd-tolerance``, 2 px) added, checks that the Dice/IoU come out bit-identical to the eval.json
the grid wrote (else it stops, writing nothing for that run), and replaces eval.json/md atomically;
runs that already have HD95/NSD are skipped, so it resumes. New runs are scored with HD95/NSD.
The table then shows them per subset and over subsets as secondary metrics: the decision rule
below stays on Dice.

Runs are taken in this order: seed 0 of polyps order, polyps mk_unet, brisc order, brisc mk_unet,
then seed 1 of those four, ... then the polyps controls seed by seed. ``--resume`` skips finished
runs and continues a killed one from its last epoch checkpoint (exact resume), so the grid goes on
piece by piece across sessions. Each run folder
``bench/results/seg_protocol/<dataset>/<model>/seed<k>/`` keeps config.yaml, split.json,
metrics.jsonl, run.json, eval.json/md and provenance.json plus checkpoints/ and model/
(gitignored by default). After every run the table ``bench/results/seg_protocol.{md,json}`` is
rewritten, with unfinished runs as pending. To carry the grid to a fresh checkout (the next
session), commit what ``--files`` lists (small files, the best/last weights, and the latest
checkpoint of each unfinished run) and the checkpoints that rotation removed:

    git add -f $(python bench/seg_protocol.py --files) && git add -u bench/results/seg_protocol
Several processes may work through the same grid: a run whose folder another live process has
locked is skipped (``--list`` shows it as running).

Decision rule (fixed on 2026-12-02, when ORDER's three polyp seeds and MK-UNet's seed 0 were
finished and nothing of BRISC): on each dataset, ORDER − comparator in mean Dice (each test
subset weighs 1) gets a 95 % hierarchical bootstrap CI (``laworder.metrics.bootstrap``: training
seeds resampled per arm, test images shared by both arms and resampled within their subset,
10,000 replicates), once both arms have ≥ 3 finished seeds. ORDER *wins* if the CI lies above 0,
*loses* if below; the paper's gain is *refuted* at this scale if the CI's upper end is below
half the paper's gain over that comparator on that dataset (``PAPER_GAIN``: +6.0 over MK-UNet
on polyps, so +3 points); otherwise *inconclusive*.

Amended on 2026-12-03 (00:25 UTC), when SE-skip had 2 of 3 polyp seeds and CBAM-skip none: the
margin was +3 points for every comparison, half of the MK-UNet polyp gain, which would have let a
CI that excludes +3 "refute" the paper's +1.0 over SE-skip. It is now half the paper's own gain
per comparison (Tables 2 and 8). The polyp MK-UNet margin is unchanged; BRISC MK-UNet's moves
from +3 to +1 points and its verdict (inconclusive, CI upper end +7.9) does not change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/ holds profile.py, which would shadow the standard library's ``profile`` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "src"))

DATASETS = {"polyps": ROOT.parent / "shared" / "data" / "polyps", "brisc": ROOT.parent / "shared" / "data" / "brisc"}
MAIN = [("polyps", "order"), ("polyps", "mk_unet"), ("brisc", "order"), ("brisc", "mk_unet")]
CONTROLS = [("polyps", "order_se"), ("polyps", "order_cbam")]
MIN_SEEDS = 3  # per arm, before a comparison is decided
DEFAULT_NSD_TOLERANCE = 2.0  # px, as ``laworder seg evaluate`` (laworder.metrics.boundary)
# ORDER's mean-Dice gain over each comparator in the paper (Table 2: MK-UNet 70.3 / 75.4 vs ORDER
# 76.3 / 77.4 on polyps / BRISC; Table 8: SE-skip 75.3, CBAM-skip 73.3 on polyps). A CI whose upper
# end is below half of it refutes that gain at this scale.
PAPER_GAIN = {("polyps", "mk_unet"): 0.060, ("polyps", "order_se"): 0.010, ("polyps", "order_cbam"): 0.030,
              ("brisc", "mk_unet"): 0.020}


def margin(dataset: str, comparator: str) -> float:
    """Half the paper's gain of ORDER over ``comparator`` on ``dataset`` (Dice, 0-1)."""
    if (dataset, comparator) not in PAPER_GAIN:
        raise KeyError(f"the paper reports no ORDER − {comparator} gain on {dataset}; add it to PAPER_GAIN")
    return PAPER_GAIN[(dataset, comparator)] / 2
COMPARATORS = ["mk_unet", "order_se", "order_cbam"]  # ORDER − each of these
LABELS = {"order": "ORDER[0,1]", "mk_unet": "MK-UNet", "order_se": "SE-skip", "order_cbam": "CBAM-skip"}
RECIPE = {"optimizer": "ademamix", "lr": 1e-4, "weight_decay": 1e-4, "scheduler": "cosine", "min_lr": 1e-6,
          "loss": "BCE + Dice (1:1)", "augment": "h/v flips, rotation ±90°", "val_fraction": 0.1,
          "monitor": "val_dice (best checkpoint)"}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Table 12 protocol grid, one run at a time, resumable")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=["order", "mk_unet", "order_se", "order_cbam"])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, help="smoke tests only: stop each run after this many steps")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "seg_protocol"))
    parser.add_argument("--resume", action="store_true", help="skip finished runs, continue a killed one")
    parser.add_argument("--max-runs", type=int, help="stop after this many runs trained in this process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-init", choices=["balanced", "nonnegative", "reference"],
                        help="model_kwargs.head_init of every run; a grid folder keeps the one it was started with "
                             "(grid.json); default: that, or the models' default for a new grid")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the run folders")
    parser.add_argument("--rescore", action="store_true",
                        help="re-score every finished run's best weights as the grid did, adding HD95/NSD to its "
                             "eval.json/md (Dice/IoU must come out identical; runs that have them are skipped), "
                             "then rewrite the table")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE, metavar="PX",
                        help="NSD tolerance in px of new runs' scoring and of --rescore (default 2)")
    parser.add_argument("--list", action="store_true", help="print the job order and each run's state")
    parser.add_argument("--files", action="store_true",
                        help="print the files that carry the grid to the next session (for git add -f)")
    parser.add_argument("--title", default="Segmentation protocol",
                        help="table heading; the table goes to <out>.md/.json beside the --out folder")
    parser.add_argument("--profile-repeats", type=int, default=30,
                        help="batch-1 latency: minimum over this many interleaved calls per model")
    return parser.parse_args()


def jobs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(dataset, model, seed) in run order: the ORDER/MK-UNet pairs seed by seed, then the controls."""
    keep = lambda pair: pair[0] in args.datasets and pair[1] in args.models  # noqa: E731
    main = [(d, m, s) for s in args.seeds for d, m in MAIN if keep((d, m))]
    controls = [(d, m, s) for s in args.seeds for d, m in CONTROLS if keep((d, m))]
    return main + controls


GRID_FILE = "grid.json"  # what every run of one --out folder shares (the head init) and the grid's cells


def read_grid(out: Path) -> dict:
    """The grid.json of ``out`` (empty for a grid no run has started)."""
    path = Path(out) / GRID_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def grid_head_init(args: argparse.Namespace) -> str:
    """The head init of the grid in ``--out``: recorded in grid.json, else --head-init, else the default.

    A grid mixing head inits would compare different models, so a different --head-init for a
    recorded grid stops the script.
    """
    from laworder.models.mk_unet import DEFAULT_HEAD_INIT

    recorded = read_grid(args.out).get("head_init")
    if recorded and args.head_init and args.head_init != recorded:
        raise SystemExit(f"{args.out} is a grid of head_init={recorded} runs (its {GRID_FILE}); "
                         f"use another --out for head_init={args.head_init}")
    return recorded or args.head_init or DEFAULT_HEAD_INIT


def record_grid(args: argparse.Namespace, head_init: str) -> None:
    """grid.json: the head init (fixed by the first run) and every cell a training process was asked for."""
    path = Path(args.out) / GRID_FILE
    grid = read_grid(args.out) or {"head_init": head_init}
    cells = {tuple(cell) for cell in grid.get("cells", [])} | set(jobs(args))
    grid["cells"] = [list(cell) for cell in canonical_order(cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(grid, indent=2) + "\n")
    tmp.replace(path)


def canonical_order(cells: set[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Grid cells as ``jobs`` orders them for seeds 0, 1, 2, ...: ORDER/MK-UNet pairs seed by seed, then the controls."""
    rank = {pair: i for i, pair in enumerate(MAIN + CONTROLS)}
    return sorted(cells, key=lambda c: ((c[0], c[1]) in CONTROLS, c[2], rank.get((c[0], c[1]), len(rank)), c))


def grid_cells(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every cell of the grid in ``--out``, whichever process asks: those any training process was asked
    for (grid.json; this process's selection for a grid that has none recorded) and every run folder on
    disk, in canonical order. The table covers all of them, so a process training part of the grid never
    drops the rest from it, and ``--table`` adds nothing its defaults would name."""
    out = Path(args.out)
    recorded = read_grid(out).get("cells", [])
    on_disk = {(p.parent.parent.name, p.parent.name, int(p.name[len("seed"):])) for p in out.glob("*/*/seed*")
               if p.is_dir() and p.name[len("seed"):].isdigit()}
    return canonical_order(({tuple(cell) for cell in recorded} or set(jobs(args))) | on_disk)


def grid_view(args: argparse.Namespace, cells: list[tuple[str, str, int]]) -> argparse.Namespace:
    """``args`` with --datasets/--models/--seeds spanning ``cells`` (table, command, comparisons)."""
    view = argparse.Namespace(**vars(args))
    view.datasets = [d for d in DATASETS if any(c[0] == d for c in cells)]
    view.models = list(dict.fromkeys(c[1] for c in cells))
    view.seeds = sorted({c[2] for c in cells})
    return view


def run_dir(out: Path, dataset: str, model: str, seed: int) -> Path:
    return out / dataset / model / f"seed{seed}"


def state(folder: Path) -> str:
    """``finished`` (trained and scored), ``trained`` (scoring missing), ``partial`` or ``pending``."""
    from laworder.seg.protocol import run_finished

    if run_finished(folder / "run.json"):
        return "finished" if (folder / "eval.json").is_file() else "trained"
    return "partial" if (folder / "checkpoints").is_dir() or (folder / "metrics.jsonl").is_file() else "pending"


RUN_FILES = ("config.yaml", "data.json", "split.json", "metrics.jsonl", "provenance.json", "run.json",
             "eval.json", "eval.md")


def carry_files(out: Path, folders: list[Path]) -> list[Path]:
    """What a fresh checkout needs to continue the grid: the grid's table and grid.json, each
    started run's small files, its ``model/best`` and ``model/last`` weights (scoring and shipping)
    and, while unfinished, its latest checkpoint (resume). All well under 1 MB per run."""
    from laworder.training.checkpoint import latest_checkpoint

    files = [path for path in (out / GRID_FILE, out.parent / f"{out.name}.md", out.parent / f"{out.name}.json",
                               out / "profile.json") if path.is_file()]
    for folder in folders:
        files += [folder / name for name in RUN_FILES if (folder / name).is_file()]
        for which in ("best", "last"):
            files += sorted(p for p in (folder / "model" / which).glob("*") if p.is_file())
        checkpoint = latest_checkpoint(folder / "checkpoints")
        if checkpoint is not None and state(folder) not in ("finished", "trained"):
            files += sorted(p for p in checkpoint.iterdir() if p.is_file())
    return files


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def out_flag(args: argparse.Namespace) -> str:
    """`` --out ...`` for a grid outside the default folder, else ''; every command the table prints carries it."""
    return "" if Path(args.out).name == "seg_protocol" else f" --out bench/results/{Path(args.out).name}"


def command_for(args: argparse.Namespace) -> str:
    extra = out_flag(args) + f" --head-init {args.head_init}"
    extra += f" --models {' '.join(args.models)} --seeds {' '.join(map(str, args.seeds))} --datasets {' '.join(args.datasets)}"
    return ("OMP_NUM_THREADS=1 python bench/seg_protocol.py --resume "
            f"--image-size {args.image_size} --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g}{extra}")


def train_and_score(args: argparse.Namespace, dataset: str, model: str, seed: int) -> None:
    """Train one grid cell (continuing a killed run with --resume) and score its best weights."""
    from laworder.runlock import run_lock
    from laworder.seg.config import SegTrainConfig
    from laworder.training import LoopConfig

    folder = run_dir(Path(args.out), dataset, model, seed)
    loop = LoopConfig(output_dir=str(folder), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=RECIPE["weight_decay"], optimizer=RECIPE["optimizer"], scheduler=RECIPE["scheduler"],
                      min_lr=RECIPE["min_lr"], seed=seed, max_steps=args.max_steps, monitor="val_dice", monitor_mode="max",
                      resume=args.resume, overwrite=False, progress=False, log_every=20)
    config = SegTrainConfig(data=str(DATASETS[dataset]), model=model, model_kwargs={"head_init": args.head_init},
                            image_size=args.image_size, split_seed=seed, loop=loop)
    t0 = time.time()
    # held across provenance, training and scoring (train_segmenter re-enters it): a second process
    # of this grid gets RunLockedError before it writes anything
    with run_lock(folder, "seg_protocol run"):
        _train_and_score_locked(args, folder, config, dataset, model, seed, t0)


def _train_and_score_locked(args, folder: Path, config, dataset: str, model: str, seed: int, t0: float) -> None:
    from laworder.seg.evaluate import write_eval
    from laworder.seg.train import train_segmenter

    if state(folder) not in ("finished", "trained"):
        folder.mkdir(parents=True, exist_ok=True)
        provenance = folder / "provenance.json"
        history = json.loads(provenance.read_text())["sessions"] if provenance.is_file() else []
        history.append({"commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "threads": args.threads})
        provenance.write_text(json.dumps({"command": command_for(args), "recipe": RECIPE, "sessions": history}, indent=2))
        train_segmenter(config)
    result = score_run(folder, getattr(args, "nsd_tolerance", DEFAULT_NSD_TOLERANCE))
    write_eval(result, folder, eval_title(dataset, model, seed))
    print(f"[seg_protocol] {dataset} {model} seed {seed}: mean Dice {100 * result.mean['dice']:.1f} "
          f"({time.time() - t0:.0f} s this session)", flush=True)


def eval_title(dataset: str, model: str, seed: int) -> str:
    """The title of a run's eval.md (the grid's scoring and the rescore write the same one)."""
    return f"{model} seed {seed} ({dataset})"


# How ``evaluate_records`` has run the network over the grid's life (a grid process imports its code
# once, at its start, and kept scoring with it for hours): "folded" is today's inference copy
# (BatchNorm folded into the convolutions, be5500e, 2026-12-02 04:37 UTC, and channels_last for the
# MK-UNet family); "unfolded" the eval-mode network with channels_last, as from ae787b8 (2026-12-01
# 23:39); "plain" the eval-mode network as it is. The three agree to float rounding, which can flip
# a pixel whose probability sits at the threshold, so a rescore finds the one that reproduces a
# run's committed Dice/IoU bit for bit.
SCORING_PATHS = ("folded", "unfolded", "plain")


def _network_for(path: str):
    """``inference_model``'s replacement for scoring ``path`` (None: today's, unpatched)."""
    import copy

    import torch

    if path == "folded":
        return None

    def prepare(model, device=None, compile=False, compile_fn=None):
        prepared = copy.deepcopy(model).eval()
        if device is not None:
            prepared = prepared.to(device)
        if path == "unfolded" and getattr(prepared, "prefers_channels_last", False):
            prepared = prepared.to(memory_format=torch.channels_last)
        return prepared

    return prepare


def score_run(folder: Path, nsd_tolerance: float | None = DEFAULT_NSD_TOLERANCE, path: str = "folded"):
    """The grid's scoring of one run: its best weights on every test subset of the data, image
    size, channels and threshold its config.yaml recorded; ``nsd_tolerance`` (px) adds HD95/NSD;
    ``path`` (``SCORING_PATHS``) how the network is run, today's unless told.

    Returns ``laworder.seg.evaluate.EvalResult`` (per image, per subset, mean over subsets)."""
    from unittest import mock

    import laworder.seg.evaluate as evaluate
    from laworder.seg.loading import load_segmenter

    if path not in SCORING_PATHS:
        raise ValueError(f"unknown scoring path {path!r}; known: {', '.join(SCORING_PATHS)}")
    network, saved = load_segmenter(folder, "best")
    subsets = evaluate.evaluation_subsets(saved.data, saved.layout)
    replacement = _network_for(path)
    with mock.patch.object(evaluate, "inference_model", replacement) if replacement else contextlib.nullcontext():
        return evaluate.evaluate_records(network, subsets, saved.image_size, saved.channels, saved.threshold,
                                         nsd_tolerance=nsd_tolerance)


def has_boundary(evaluation: dict) -> bool:
    """Whether an eval.json payload already holds HD95 and NSD (mean over subsets)."""
    return "hd95" in evaluation.get("mean", {}) and "nsd" in evaluation.get("mean", {})


def check_same_overlap(old: dict, new: dict, where: Path) -> None:
    """Raise RuntimeError unless ``new`` (an eval.json payload) has exactly the Dice/IoU of ``old``:
    the same images per subset with bit-identical per-image, per-subset and mean scores. That is
    what shows a rescore repeated the grid's evaluation rather than a different one."""
    def overlap(evaluation: dict) -> dict:
        return {"per_image": {subset: [(r["stem"], r["dice"], r["iou"]) for r in rows]
                              for subset, rows in evaluation["per_image"].items()},
                "subsets": {subset: (v["dice"], v["iou"], v["n"]) for subset, v in evaluation["subsets"].items()},
                "mean": (evaluation["mean"]["dice"], evaluation["mean"]["iou"])}

    before, after = overlap(old), overlap(new)
    if before == after:
        return
    if before["per_image"].keys() != after["per_image"].keys():
        detail = f"subsets {sorted(before['per_image'])} before, {sorted(after['per_image'])} now"
    else:
        diffs = [(subset, a, b) for subset in before["per_image"]
                 for a, b in zip(before["per_image"][subset], after["per_image"][subset]) if a != b]
        counts = {s: (len(before["per_image"][s]), len(after["per_image"][s])) for s in before["per_image"]
                  if len(before["per_image"][s]) != len(after["per_image"][s])}
        detail = (f"{len(diffs)} image(s) differ, first {diffs[0][0]}: (stem, dice, iou) {diffs[0][1]} before, "
                  f"{diffs[0][2]} now" if diffs else f"image counts {counts}" if counts else
                  f"mean/subset summaries differ: {before['mean']} before, {after['mean']} now")
    raise RuntimeError(f"{where}: the rescore does not reproduce the committed Dice/IoU ({detail}); "
                       "not the grid's evaluation, nothing written")


def rescore(args: argparse.Namespace, score=score_run) -> dict[str, int]:
    """Re-evaluate every finished run of the grid in ``--out`` with ``score`` (the grid's scoring)
    so that its eval.json/eval.md gain HD95 and NSD at ``args.nsd_tolerance`` px.

    Resumable: a run whose eval.json has them is skipped. Each run is scored under its run lock
    along ``SCORING_PATHS`` until one reproduces its committed Dice/IoU bit for bit
    (``check_same_overlap``; none does: RuntimeError, nothing written for that run), then
    eval.json (with a ``rescore`` record: the path, tolerance, command) and eval.md are replaced
    atomically (temp file, rename).
    Returns the counts {"rescored", "skipped", "unfinished"}."""
    from laworder.outputs import write_json_atomic, write_text_atomic
    from laworder.runlock import run_lock
    from laworder.seg.evaluate import format_markdown

    out, counts = Path(args.out), {"rescored": 0, "skipped": 0, "unfinished": 0}
    for dataset, model, seed in grid_cells(args):
        folder = run_dir(out, dataset, model, seed)
        if state(folder) != "finished":
            counts["unfinished"] += 1
            continue
        committed = json.loads((folder / "eval.json").read_text())
        if has_boundary(committed):
            tolerance = committed.get("boundary", {}).get("nsd_tolerance_px")
            if tolerance != args.nsd_tolerance:
                raise SystemExit(f"{folder / 'eval.json'} holds NSD at {tolerance} px, not --nsd-tolerance "
                                 f"{args.nsd_tolerance:g}; one table cannot mix tolerances")
            counts["skipped"] += 1
            continue
        t0 = time.time()
        with run_lock(folder, "seg_protocol rescore"):
            tried = []
            for path in SCORING_PATHS:  # today's first; older ones for runs a process scored with older code
                result = score(folder, args.nsd_tolerance, path)
                payload = json.loads(json.dumps(result.to_json()))  # as eval.json will hold it
                try:
                    check_same_overlap(committed, payload, folder / "eval.json")
                    break
                except RuntimeError as exc:
                    tried.append(f"{path}: {exc}")
            else:
                raise RuntimeError("no scoring path reproduces the committed Dice/IoU, nothing written; "
                                   + " | ".join(tried))
            payload["rescore"] = {"scoring_path": path, "nsd_tolerance_px": args.nsd_tolerance,
                                  "command": rescore_command(args), "commit": git_commit(),
                                  "check": "per-image, per-subset and mean Dice/IoU identical to the eval.json "
                                           "the grid wrote (compared before replacing it)"}
            write_json_atomic(folder / "eval.json", payload)
            write_text_atomic(folder / "eval.md", format_markdown(result, eval_title(dataset, model, seed)))
        counts["rescored"] += 1
        print(f"[seg_protocol] rescored {dataset} {model} seed {seed} ({path}): Dice {100 * result.mean['dice']:.1f} "
              f"(identical), HD95 {result.mean['hd95']:.2f} px, NSD {100 * result.mean['nsd']:.1f} % "
              f"({time.time() - t0:.0f} s)", flush=True)
    return counts


def rescore_command(args: argparse.Namespace) -> str:
    tolerance = "" if args.nsd_tolerance == DEFAULT_NSD_TOLERANCE else f" --nsd-tolerance {args.nsd_tolerance:g}"
    return f"OMP_NUM_THREADS=1 python bench/seg_protocol.py{out_flag(args)} --rescore{tolerance}"


# --- the table ----------------------------------------------------------------------------------
LATENCY_PATH = "inference_copy"  # what the latency column times; a cached profile of another path is redone


def profile(models: list[str], image_size: int, repeats: int, channels: int = 3) -> dict[str, dict]:
    """Params, FLOPs (both conventions) of the trained architecture and batch-1 CPU latency of what
    ``seg predict`` runs (BN folded, channels_last), the minimum over ``repeats`` interleaved calls
    (models alternate, so load on the shared machine hits them alike)."""
    import torch

    from laworder.models import create_model
    from laworder.models.flops import conv_linear_flops, count_parameters, full_flops
    from laworder.models.inference import inference_copy

    torch.manual_seed(0)
    shape = (1, channels, image_size, image_size)
    nets = {m: create_model(m, in_channels=channels).eval() for m in models}
    runnable = {m: inference_copy(net) for m, net in nets.items()}
    x = torch.rand(*shape)
    times: dict[str, list[float]] = {m: [] for m in models}
    with torch.no_grad():
        for net in runnable.values():  # warm-up
            for _ in range(3):
                net(x)
        for _ in range(repeats):
            for m, net in runnable.items():
                start = time.perf_counter()
                net(x)
                times[m].append(time.perf_counter() - start)
    return {m: {"params": count_parameters(net), "gflops_conv_linear": conv_linear_flops(net, shape) / 1e9,
                "gflops_full": full_flops(net, shape) / 1e9, "cpu_ms_min": 1000 * min(times[m]),
                "threads": torch.get_num_threads(), "image_size": image_size, "repeats": repeats,
                "timed": LATENCY_PATH}
            for m, net in nets.items()}


def _pm(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """Mean ± sample std of ``values`` × ``scale`` (percent by default; 1 for HD95 in px)."""
    from laworder.metrics.overlap import mean_std

    if not values:
        return "–"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    m, s = mean_std(values)
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


BOUNDARY = ("hd95", "nsd")  # secondary metrics of the table; the decision rule stays on Dice


def collect(args: argparse.Namespace, grid: list[tuple[str, str, int]]) -> dict:
    """Each cell of ``grid``: its state and, for finished ones, its scores."""
    out = Path(args.out)
    cells = []
    for dataset, model, seed in grid:
        folder = run_dir(out, dataset, model, seed)
        cell = {"dataset": dataset, "model": model, "seed": seed, "state": state(folder),
                "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)}
        if (folder / "run.json").is_file():
            run = json.loads((folder / "run.json").read_text())
            cell.update(step=run.get("global_step"), total_steps=run.get("total_steps"),
                        train_seconds=run.get("seconds"), best_val_dice=run.get("best_metric"))
        elif (folder / "metrics.jsonl").is_file():  # a run in progress writes run.json only at its end
            logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
            checkpoints = sorted((folder / "checkpoints").glob("step_*"))
            saved = json.loads((checkpoints[-1] / "trainer_state.json").read_text()) if checkpoints else {}
            cell.update(step=logged[-1]["step"] if logged else 0, total_steps="?",
                        checkpoint_step=int(saved.get("global_step", 0)),
                        train_seconds=saved.get("seconds"))  # summed over sessions, up to the checkpoint
        if cell["state"] == "finished":
            ev = json.loads((folder / "eval.json").read_text())
            keys = ("dice", "iou", "n") + tuple(k for k in BOUNDARY if k in ev["mean"])
            cell["subsets"] = {k: {key: v[key] for key in keys} for k, v in ev["subsets"].items()}
            cell["mean"] = ev["mean"]
            if ev.get("boundary"):  # how HD95/NSD were measured (tolerance, grid), once rescored
                cell["boundary"] = ev["boundary"]
            if ev.get("rescore"):
                cell["rescore"] = {k: ev["rescore"][k] for k in ("scoring_path", "command")}
        cells.append(cell)
    return {"cells": cells}


def image_scores(folder: Path, metric: str = "dice") -> dict[tuple[str, str], float]:
    """(subset, image stem) -> per-image score from a finished run's eval.json."""
    ev = json.loads((folder / "eval.json").read_text())
    return {(subset, row["stem"]): row[metric] for subset, rows in ev["per_image"].items() for row in rows}


def compare(out: Path, cells: list[dict], dataset: str, comparator: str) -> dict | None:
    """ORDER − ``comparator`` on ``dataset`` with the decision rule of the module docstring.

    None when either arm has no finished seed; the verdict is ``pending`` below MIN_SEEDS per arm.
    """
    from laworder.metrics.bootstrap import decide, hierarchical_bootstrap_difference
    import numpy as np

    # sorted: the bootstrap draws must not depend on the order a process listed the seeds in
    seeds = {m: sorted(c["seed"] for c in cells if c["dataset"] == dataset and c["model"] == m and c["state"] == "finished")
             for m in ("order", comparator)}
    if not seeds["order"] or not seeds[comparator]:
        return None
    scores = {m: [image_scores(run_dir(out, dataset, m, s)) for s in seeds[m]] for m in seeds}
    images = sorted(set.intersection(*(set(run) for runs in scores.values() for run in runs)))
    every = {key for runs in scores.values() for run in runs for key in run}
    if len(images) != len(every):  # the test sets must be the same images for every run
        raise RuntimeError(f"{dataset}: runs were scored on different test images ({len(every) - len(images)} not shared)")
    arrays = {m: np.array([[run[key] for key in images] for run in runs]) for m, runs in scores.items()}
    ci = hierarchical_bootstrap_difference(arrays["order"], arrays[comparator], replicates=10000, level=0.95, seed=0,
                                           strata=[subset for subset, _ in images])
    enough = min(len(v) for v in seeds.values()) >= MIN_SEEDS
    verdict = decide(ci, margin=margin(dataset, comparator)) if enough else {"verdict": f"pending (needs {MIN_SEEDS} seeds per arm)"}
    paired = sorted(set(seeds["order"]) & set(seeds[comparator]))
    by_seed = {(c["model"], c["seed"]): c for c in cells if c["dataset"] == dataset and c["state"] == "finished"}
    return {"comparator": comparator, "seeds": seeds, "images": len(images), "ci": ci.as_dict(),
            "paper_gain": PAPER_GAIN[(dataset, comparator)], **verdict,
            "paired": [{"seed": s, "diff_dice": by_seed[("order", s)]["mean"]["dice"] - by_seed[(comparator, s)]["mean"]["dice"],
                        "diff_iou": by_seed[("order", s)]["mean"]["iou"] - by_seed[(comparator, s)]["mean"]["iou"]}
                       for s in paired]}


def format_comparison(item: dict) -> str:
    ci = item["ci"]
    paired = ", ".join(f"seed {p['seed']}: {100 * p['diff_dice']:+.1f}" for p in item["paired"]) or "none yet"
    return (f"| ORDER − {LABELS.get(item['comparator'], item['comparator'])} | {len(item['seeds']['order'])} / "
            f"{len(item['seeds'][item['comparator']])} | {paired} | {100 * ci['difference']:+.1f} | "
            f"[{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}] | {100 * item['paper_gain']:+.1f} | {item['verdict']} |")


def format_table(payload: dict) -> str:
    cells, prof = payload["cells"], payload["profile"]
    lines = []
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        mine = [c for c in cells if c["dataset"] == dataset]
        subsets = sorted({s for c in mine if c["state"] == "finished" for s in c["subsets"]})
        head = (["Model", "Seeds done"] + [f"{s} {m}" for s in subsets for m in ("Dice", "IoU")]
                + ["Mean Dice", "Mean IoU", "Params", "GFLOPs (conv/linear)", "CPU ms/img"])
        lines += [f"### {dataset} ({payload['protocol']['image_size']}²)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in dict.fromkeys(c["model"] for c in mine):
            runs = [c for c in mine if c["model"] == model]
            done = [c for c in runs if c["state"] == "finished"]
            row = [LABELS.get(model, model), f"{len(done)}/{len(runs)}"]
            row += [_pm([c["subsets"][s][m] for c in done if s in c["subsets"]]) for s in subsets for m in ("dice", "iou")]
            row += [_pm([c["mean"]["dice"] for c in done]), _pm([c["mean"]["iou"] for c in done])]
            p = prof.get(model, {})
            row += [f"{p['params']:,}" if p else "–", f"{p['gflops_conv_linear']:.3f}" if p else "–",
                    f"{p['cpu_ms_min']:.1f}" if p else "–"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += format_boundary_table(mine, subsets)
        comparisons = payload["comparisons"].get(dataset, [])
        if comparisons:
            lines += ["| Comparison (mean Dice, points) | Seeds ORDER / other | Paired per-seed difference | "
                      "Difference of means | 95 % CI (hierarchical bootstrap) | Paper's gain | Verdict |",
                      "|---|---|---|---|---|---|---|"]
            lines += [format_comparison(item) for item in comparisons]
        else:
            lines.append("Comparisons: pending (ORDER and a comparator both need a finished seed)")
        lines.append("")
    state_rows = ["| Run | State | Step | Train time (h, to the last checkpoint if unfinished) |", "|---|---|---|---|"]
    for c in cells:
        step = f"{c.get('step', 0)}/{c.get('total_steps', '?')}" if "step" in c else "–"
        if "checkpoint_step" in c:
            step += f" (resumes from step {c['checkpoint_step']})"
        hours = f"{c['train_seconds'] / 3600:.2f}" if c.get("train_seconds") else "–"
        state_rows.append(f"| {c['dataset']} {c['model']} seed {c['seed']} | {c['state']} | {step} | {hours} |")
    lines += ["### Runs", ""] + state_rows + [""]
    return "\n".join(lines)


def format_boundary_table(cells: list[dict], subsets: list[str]) -> list[str]:
    """Markdown lines of one dataset's HD95 (px, lower is better) / NSD (%, higher is better) table,
    per subset and mean over subsets, mean ± sample std over the finished seeds that have them
    (``--rescore``); empty when no run has them."""
    done = [c for c in cells if c["state"] == "finished"]
    scored = [c for c in done if all(k in c["mean"] for k in BOUNDARY)]
    if not scored:
        return []
    tolerances = sorted({c.get("boundary", {}).get("nsd_tolerance_px") for c in scored}, key=str)
    if len(tolerances) != 1 or tolerances[0] is None:
        raise RuntimeError(f"runs' NSD tolerances differ or are unrecorded ({tolerances}); rescore them with one --nsd-tolerance")
    tolerance = tolerances[0]
    grid = "×".join(map(str, scored[0].get("boundary", {}).get("grid_px", []))) or "?"
    head = (["Model", "Seeds with HD95/NSD"] + [f"{s} {m}" for s in subsets for m in ("HD95 (px)", f"NSD ({tolerance:g} px)")]
            + ["Mean HD95 (px)", f"Mean NSD ({tolerance:g} px)"])
    lines = [f"Boundary metrics (secondary; the decision rule stays on Dice): HD95 in px on the {grid} grid (lower is "
             f"better; an image with exactly one empty mask scores the image diagonal), NSD at {tolerance:g} px tolerance "
             "in % (higher is better); per image, mean per subset, then over subsets; mean ± sample std over seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in dict.fromkeys(c["model"] for c in cells):
        runs = [c for c in done if c["model"] == model]
        have = [c for c in runs if c in scored]
        row = [LABELS.get(model, model), f"{len(have)}/{len(runs)}"]
        for s in subsets:
            row += [_pm([c["subsets"][s]["hd95"] for c in have if s in c["subsets"]], scale=1),
                    _pm([c["subsets"][s]["nsd"] for c in have if s in c["subsets"]])]
        row += [_pm([c["mean"]["hd95"] for c in have], scale=1), _pm([c["mean"]["nsd"] for c in have])]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def write_table(args: argparse.Namespace) -> dict:
    """Rewrite ``<out>.md`` / ``<out>.json`` over the whole grid (not only this process's selection)."""
    grid = grid_cells(args)
    args = grid_view(args, grid)
    out = Path(args.out)
    payload = collect(args, grid)
    payload["command"] = command_for(args)
    payload["protocol"] = {"head_init": args.head_init, "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
                           "seeds": args.seeds, **RECIPE, "lr": args.lr, "threads_per_run": args.threads,
                           "paper_protocol": "256², 100 epochs, 5 seeds"}
    profile_path = out / "profile.json"
    models = list(dict.fromkeys(c["model"] for c in payload["cells"]))
    cached = json.loads(profile_path.read_text()) if profile_path.is_file() else {}
    if any(m not in cached or cached[m].get("image_size") != args.image_size or cached[m].get("timed") != LATENCY_PATH
           for m in models):
        cached.update(profile(models, args.image_size, args.profile_repeats))
        out.mkdir(parents=True, exist_ok=True)
        profile_path.write_text(json.dumps(cached, indent=2))
    payload["profile"] = {m: cached[m] for m in models}
    payload["comparisons"] = {
        dataset: [item for comparator in COMPARATORS
                  if (item := compare(out, payload["cells"], dataset, comparator)) is not None]
        for dataset in args.datasets}
    commands = {c["rescore"]["command"] for c in payload["cells"] if c.get("rescore")}
    rescored = bool(commands)
    if rescored:
        payload["rescore_command"] = " / ".join(sorted(commands))
    table = format_table(payload)
    paper = args.epochs == 100 and args.lr == 1e-4 and args.max_steps is None
    recipe = "Table 12 recipe" if paper else f"NOT the paper protocol: {args.epochs} epochs, lr {args.lr:g}"
    header = (f"# {args.title} at {args.image_size}² ({recipe}, CPU, one thread per run)\n\n"
              f"Command: `{payload['command']}` (then `python bench/seg_protocol.py{out_flag(args)} --table`)"
              + (f"; HD95/NSD added to the finished runs' eval.json by `{payload['rescore_command']}` (re-scores each "
                 "run's best weights as the grid did and checks its Dice/IoU come out identical)" if rescored else "")
              + "\n\n"
              f"Recipe: AdEMAMix, lr {args.lr:g}, wd 1e-4, cosine to 1e-6, {args.epochs} epochs, batch {args.batch_size}, "
              f"BCE + Dice, h/v flips and ±90° rotations, output heads initialised `{args.head_init}`, "
              "a fresh 90/10 train/val split per seed, best validation "
              f"Dice checkpoint scored on each test subset. Mean ± sample std over finished seeds, in %. "
              f"Latency: batch 1, {args.image_size}², the inference copy `seg predict` runs (BatchNorm folded, channels_last), "
              f"minimum of {args.profile_repeats} interleaved calls, "
              f"{payload['profile'][models[0]]['threads'] if models else 1} thread(s), on a shared 2-core machine.\n\n"
              f"Decision rule (fixed before the BRISC runs and MK-UNet polyp seeds 1-2 had finished): ORDER − other in mean "
              f"Dice gets a 95 % hierarchical bootstrap CI (training seeds resampled per arm, the shared test images "
              f"resampled within their subset, 10,000 replicates) once each arm has {MIN_SEEDS} seeds; *wins* if the CI "
              f"is above 0, *loses* if below, *refuted* if its upper end is below half the paper's gain over that "
              f"comparator (the \"Paper's gain\" column; amended 2026-12-03 from +3 points for every comparison, see "
              f"the script's docstring), else *inconclusive*.\n\n")
    (out.parent / f"{out.name}.md").write_text(header + table)
    (out.parent / f"{out.name}.json").write_text(json.dumps(payload, indent=2))
    return payload


def main() -> None:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    # Every module the runs need is imported now, so a checkout changing under a long background
    # process (rebases between runs) cannot mix two code versions inside it.
    import laworder.seg.evaluate, laworder.seg.loading, laworder.seg.protocol, laworder.seg.train  # noqa: E401,F401
    import laworder.models.flops  # noqa: F401
    from laworder.errors import RunLockedError
    from laworder.runlock import is_locked

    out = Path(args.out)
    if args.list:
        for dataset, model, seed in jobs(args):
            folder = run_dir(out, dataset, model, seed)
            running = " (running in another process)" if is_locked(folder) else ""
            print(f"{dataset:7s} {model:11s} seed {seed}: {state(folder)}{running}")
        return
    if args.files:  # every run folder on disk, whatever --models/--seeds say
        folders = sorted(p.parent for p in out.glob("*/*/seed*/config.yaml"))
        for path in carry_files(out, folders):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        return
    args.head_init = grid_head_init(args)  # resolved once: every run, command and table use it
    if args.rescore:
        if not args.nsd_tolerance > 0:
            raise SystemExit(f"--nsd-tolerance must be > 0, got {args.nsd_tolerance:g}")
        counts = rescore(args)
        print(f"[seg_protocol] rescore: {counts['rescored']} rescored, {counts['skipped']} already had HD95/NSD, "
              f"{counts['unfinished']} unfinished", flush=True)
    elif not args.table:
        record_grid(args, args.head_init)
        trained = 0
        for dataset, model, seed in jobs(args):
            if args.max_runs is not None and trained >= args.max_runs:
                break
            folder = run_dir(out, dataset, model, seed)
            if args.resume and state(folder) == "finished":
                continue
            if is_locked(folder):  # another process of this grid is training it
                print(f"[seg_protocol] skip {dataset} {model} seed {seed}: locked by another process", flush=True)
                continue
            print(f"[seg_protocol] {time.strftime('%H:%M:%S')} start {dataset} {model} seed {seed}", flush=True)
            try:
                train_and_score(args, dataset, model, seed)
            except RunLockedError as exc:  # another process took it between the check and the lock
                print(f"[seg_protocol] skip {dataset} {model} seed {seed}: {exc}", flush=True)
                continue
            trained += 1
            write_table(args)
    payload = write_table(args)
    print((out.parent / f"{out.name}.md").read_text())
    done = sum(c["state"] == "finished" for c in payload["cells"])
    print(f"[seg_protocol] {done}/{len(payload['cells'])} runs finished", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()

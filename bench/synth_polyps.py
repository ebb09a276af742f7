"""Real polyps: the built-in diffusion backbone trained with ``uniform``, ``ratio`` and ``law``
at the same steps and resolution, a pool sampled for each from held-out test masks, and the
pools' mask recovery by a frozen segmenter trained on real images (paper Tables 1, 3).

    .venv/bin/python bench/synth_polyps.py --segmenter bench/results/polyps/runs/order/seed0

Writes bench/results/synth_polyps.{json,md}, curves + picture grid PNGs and each pool's
manifest under bench/results/synth_polyps/ (the pool images stay out of git).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/profile.py shadows stdlib
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "polyps"))
    parser.add_argument("--objectives", nargs="+", default=["uniform", "ratio", "law"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--per-subset", type=int, default=32, help="test masks per subset in each pool")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--segmenter", help="seg run folder for mask recovery (trained on real images)")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA of the weights (sampling uses it)")
    parser.add_argument("--train-pool", type=int, default=0,
                        help="also sample a pool from this many training masks (seeded draw) for Tables 4-5")
    parser.add_argument("--train-pool-objectives", nargs="+", default=["uniform", "law"])
    parser.add_argument("--train-pool-steps", type=int, default=25, help="DDIM steps of the training-mask pools")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "synth_polyps"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from laworder.data.layouts import load_dataset
    from laworder.experiments.figures import plot_training_curves
    from laworder.metrics.mask_recovery import mask_recovery
    from laworder.synth.config import SynthConfig
    from laworder.synth.sampler import sample_pool
    from laworder.synth.task import train_synth

    out = Path(args.out)
    collection = load_dataset(args.data)
    masks = [r for subset in ("Kvasir", "CVC-ClinicDB") for r in collection.test[subset][: args.per_subset]]
    order = np.random.default_rng(0).permutation(len(collection.train))
    train_masks = [collection.train[int(i)] for i in order[: args.train_pool]]
    started = time.time()
    rows, runs = {}, {}
    for objective in args.objectives:
        config = SynthConfig(data=args.data, objective=objective, resolution=args.resolution)
        loop = config.loop
        loop.output_dir, loop.max_steps, loop.batch_size, loop.lr = str(out / "runs" / objective), args.steps, args.batch_size, args.lr
        loop.checkpoint_every, loop.snapshot_every, loop.progress = 100, 100, False
        loop.resume, loop.overwrite = args.resume, not args.resume
        loop.ema_decay = args.ema_decay
        t0 = time.time()
        run_dir = train_synth(config)
        train_s = time.time() - t0
        t0 = time.time()
        pool = sample_pool(run_dir, masks, out / "pools" / objective, steps=args.sample_steps,
                           guidance_scale=args.guidance, seed=0, batch_size=16, overwrite=True)
        sample_s = time.time() - t0
        shutil.copy(pool / "manifest.json", out / f"{objective}_manifest.json")
        row = {"run_dir": str(run_dir), "pool": str(pool), "train_seconds": train_s, "sample_seconds": sample_s}
        if args.segmenter:
            recovery = mask_recovery(args.segmenter, pool)
            recovery.pop("per_image")
            row["mask_recovery"] = recovery
        if train_masks and objective in args.train_pool_objectives:
            t0 = time.time()
            train_pool = sample_pool(run_dir, train_masks, out / "pools" / f"{objective}_train", steps=args.train_pool_steps,
                                     guidance_scale=args.guidance, seed=0, batch_size=16, overwrite=True)
            row["train_pool"], row["train_pool_seconds"] = str(train_pool), time.time() - t0
            shutil.copy(train_pool / "manifest.json", out / f"{objective}_train_manifest.json")
        rows[objective], runs[objective] = row, run_dir
        print(f"[synth_polyps] {objective}: train {train_s:.0f} s, sample {sample_s:.0f} s, "
              f"recovery {row.get('mask_recovery', {}).get('dice')}", flush=True)
    command = "python bench/synth_polyps.py " + " ".join(sys.argv[1:])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "objectives", "resume", "train_pool_objectives")}
    summary = out.parent / "synth_polyps.json"
    commands = [command]
    if summary.is_file():  # a later run adds objectives (same settings) to the earlier ones
        earlier = json.loads(summary.read_text())
        if earlier.get("settings") == settings:
            rows = {**earlier["results"], **rows}
            commands = earlier.get("commands", [earlier.get("command")]) + commands
    runs = {name: row["run_dir"] for name, row in rows.items()}
    plot_training_curves(runs, out / "curves.png", keys=("loss",))
    picture_grid(rows, out / "grid.png")
    payload = {"command": " && ".join(commands), "commands": commands, "settings": settings,
               "pool_masks": f"first {args.per_subset} test masks of Kvasir and of CVC-ClinicDB",
               "train_pool_masks": f"{args.train_pool} training masks (seeded permutation, seed 0), DDIM {args.train_pool_steps} steps",
               "results": rows, "seconds": time.time() - started}
    (out.parent / "synth_polyps.json").write_text(json.dumps(payload, indent=2))
    (out.parent / "synth_polyps.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


def picture_grid(rows: dict, path: Path, count: int = 6) -> None:
    """Columns: conditioning mask, then each objective's sample for it (same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from laworder.data.io import read_image, read_mask

    names = list(rows)
    first = Path(rows[names[0]]["pool"])
    stems = sorted(p.stem for p in (first / "masks").iterdir())
    picks = [stems[i] for i in np.linspace(0, len(stems) - 1, count).astype(int)]
    fig, axes = plt.subplots(count, 1 + len(names), figsize=(2 * (1 + len(names)), 2 * count), squeeze=False)
    for r, stem in enumerate(picks):
        axes[r][0].imshow(read_mask(next((first / "masks").glob(stem + ".*"))), cmap="gray")
        for c, name in enumerate(names, start=1):
            axes[r][c].imshow(read_image(next((Path(rows[name]["pool"]) / "images").glob(stem + ".*"))))
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    for c, title in enumerate(["mask"] + names):
        axes[0][c].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [f"Command: `{payload['command']}`", "",
             f"Built-in backbone at {s['resolution']}², {s['steps']} steps, batch {s['batch_size']}, lr {s['lr']}; "
             f"pools of {payload['pool_masks']}, DDIM {s['sample_steps']} steps, CFG {s['guidance']}.", "",
             "| Objective | Mask-recovery Dice | Mask-recovery IoU | train s | sample s |", "|---|---|---|---|---|"]
    for name, row in payload["results"].items():
        rec = row.get("mask_recovery")
        dice = f"{rec['dice']['mean']:.3f} ± {rec['dice']['std']:.3f}" if rec else "–"
        iou = f"{rec['iou']['mean']:.3f} ± {rec['iou']['std']:.3f}" if rec else "–"
        lines.append(f"| {name} | {dice} | {iou} | {row['train_seconds']:.0f} | {row['sample_seconds']:.0f} |")
    lines += ["", "![curves](synth_polyps/curves.png)", "", "![grid](synth_polyps/grid.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

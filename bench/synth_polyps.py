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
    parser.add_argument("--rescore", action="store_true",
                        help="no training or sampling: re-score the pools in synth_polyps.json with --segmenter, "
                             "with the chance (shuffled masks) and real-image references")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from laworder.data.layouts import load_dataset
    from laworder.synth.config import SynthConfig
    from laworder.synth.task import train_synth

    out = Path(args.out)
    collection = load_dataset(args.data)
    masks = [r for subset in ("Kvasir", "CVC-ClinicDB") for r in collection.test[subset][: args.per_subset]]
    order = np.random.default_rng(0).permutation(len(collection.train))
    train_masks = [collection.train[int(i)] for i in order[: args.train_pool]]
    started = time.time()
    if args.rescore:
        return rescore(args, out, masks)
    rows = {}
    for objective in args.objectives:
        config = SynthConfig(data=args.data, objective=objective, resolution=args.resolution)
        loop = config.loop
        loop.output_dir, loop.max_steps, loop.batch_size, loop.lr = str(out / "runs" / objective), args.steps, args.batch_size, args.lr
        loop.checkpoint_every, loop.snapshot_every, loop.progress = 100, 100, False
        loop.resume, loop.overwrite = args.resume, not args.resume
        loop.ema_decay = args.ema_decay
        t0 = time.time()
        run_dir = train_synth(config)
        # a resumed, finished run reports the seconds its training took, not this no-op
        train_s = json.loads((run_dir / "run.json").read_text()).get("seconds", time.time() - t0)
        pool, sample_s = pool_for(args, run_dir, masks, out / "pools" / objective, args.sample_steps)
        shutil.copy(pool / "manifest.json", out / f"{objective}_manifest.json")
        row = {"run_dir": str(run_dir), "pool": str(pool), "train_seconds": train_s, "sample_seconds": sample_s}
        if args.segmenter:
            row.update(recovery_controls(args.segmenter, pool))
        if train_masks and objective in args.train_pool_objectives:
            train_pool, row["train_pool_seconds"] = pool_for(args, run_dir, train_masks, out / "pools" / f"{objective}_train",
                                                             args.train_pool_steps)
            row["train_pool"] = str(train_pool)
            shutil.copy(train_pool / "manifest.json", out / f"{objective}_train_manifest.json")
        rows[objective] = row
        print(f"[synth_polyps] {objective}: train {train_s:.0f} s, sample {sample_s or 0:.0f} s, "
              f"recovery {row.get('mask_recovery', {}).get('dice')}", flush=True)
        write_summary(args, out, rows, started)  # after every objective: a killed run keeps what it finished
    return 0


def recovery_controls(segmenter: str, pool: Path) -> dict:
    """Mask recovery of a pool against its own masks and, as the chance level, against another
    pair's mask (each image scored against the mask of the next pair in stem order)."""
    from dataclasses import replace

    from laworder.data.layouts import load_dataset
    from laworder.experiments.mask_recovery import mask_recovery
    from laworder.metrics.overlap import mean_std
    from laworder.seg.evaluate import evaluate_records
    from laworder.seg.loading import load_segmenter

    recovery = mask_recovery(segmenter, pool)
    per_image = {r["stem"]: r["dice"] for r in recovery.pop("per_image")}
    records = sorted(load_dataset(str(pool), "pairs").train, key=lambda r: r.stem)
    shuffled = [replace(r, mask=records[(i + 1) % len(records)].mask) for i, r in enumerate(records)]
    model, config = load_segmenter(segmenter, "best")
    rows = evaluate_records(model, {"pool": shuffled}, config.image_size, config.channels, config.threshold).per_image["pool"]
    chance = mean_std(r["dice"] for r in rows)
    return {"mask_recovery": recovery, "chance_dice": {"mean": chance[0], "std": chance[1]}, "per_image_dice": per_image}


def paired_against(rows: dict, reference: str) -> None:
    """Per-image paired difference of each pool's recovery Dice from ``reference``'s (same masks,
    same sampling seeds) with a two-sided Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    base = rows[reference]["per_image_dice"]
    for name, row in rows.items():
        if name == reference or "per_image_dice" not in row:
            continue
        stems = sorted(set(base) & set(row["per_image_dice"]))
        diffs = [row["per_image_dice"][s] - base[s] for s in stems]
        p_value = float(wilcoxon(diffs).pvalue) if any(diffs) else 1.0
        row["paired_vs"] = {"reference": reference, "mean_diff": sum(diffs) / len(diffs), "wilcoxon_p": p_value,
                            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs), "n": len(diffs)}


def rescore(args: argparse.Namespace, out: Path, masks: list) -> int:
    """Re-score every pool of synth_polyps.json with ``--segmenter`` (no training, no sampling)."""
    from laworder.metrics.overlap import mean_std
    from laworder.seg.evaluate import evaluate_records
    from laworder.seg.loading import load_run_config, load_segmenter

    summary = out.parent / "synth_polyps.json"
    payload = json.loads(summary.read_text())
    for name, row in payload["results"].items():
        row.update(recovery_controls(args.segmenter, Path(row["pool"])))
        print(f"[synth_polyps] {name}: recovery {row['mask_recovery']['dice']['mean']:.3f}, "
              f"chance {row['chance_dice']['mean']:.3f}", flush=True)
    if "uniform" in payload["results"]:
        paired_against(payload["results"], "uniform")
    model, config = load_segmenter(args.segmenter, "best")
    real = evaluate_records(model, {"real": masks}, config.image_size, config.channels, config.threshold).per_image["real"]
    dice = mean_std(r["dice"] for r in real)
    payload["real_reference"] = {"dice": {"mean": dice[0], "std": dice[1]}, "count": len(real),
                                 "what": "the frozen segmenter on the real test images of the same masks"}
    seg = load_run_config(args.segmenter)
    best = json.loads((Path(args.segmenter) / "run.json").read_text()).get("best_metric")
    payload["segmenter"] = args.segmenter
    payload["segmenter_recipe"] = (f"{seg.model} at {seg.image_size}², {seg.loop.epochs} epochs, lr {seg.loop.lr}, "
                                   f"trained on the real training images (best val Dice {best:.3f}): laworder seg train "
                                   f"--data {seg.data} --model {seg.model} --image-size {seg.image_size} --epochs {seg.loop.epochs} "
                                   f"--set loop.monitor=val_dice --set loop.monitor_mode=max -o {args.segmenter}")
    payload["rescore_command"] = "python bench/synth_polyps.py " + " ".join(sys.argv[1:])
    summary.write_text(json.dumps(payload, indent=2))
    (out.parent / "synth_polyps.md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


def pool_for(args: argparse.Namespace, run_dir: Path, masks: list, pool_dir: Path, steps: int) -> tuple[Path, float | None]:
    """Sample a pool, or with ``--resume`` reuse a finished one of the same masks and steps."""
    from laworder.synth.sampler import sample_pool

    manifest = pool_dir / "manifest.json"
    if args.resume and manifest.is_file():
        made = json.loads(manifest.read_text())
        if made.get("count") == len(masks) and made.get("steps") == steps:
            return pool_dir, None
    t0 = time.time()
    pool = sample_pool(run_dir, masks, pool_dir, steps=steps, guidance_scale=args.guidance, seed=0, batch_size=16,
                       overwrite=True)
    return pool, time.time() - t0


def write_summary(args: argparse.Namespace, out: Path, rows: dict, started: float) -> None:
    """Merge ``rows`` into bench/results/synth_polyps.{json,md} (runs with the same settings add up)."""
    from laworder.experiments.figures import plot_training_curves

    command = "python bench/synth_polyps.py " + " ".join(sys.argv[1:])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "objectives", "resume", "train_pool_objectives")}
    summary = out.parent / "synth_polyps.json"
    commands = [command]
    if summary.is_file():  # a later run adds objectives (same settings) to the earlier ones
        earlier = json.loads(summary.read_text())
        if earlier.get("settings") == settings:
            rows = {**earlier["results"], **rows}
            commands = [c for c in earlier.get("commands", [earlier.get("command")]) if c != command] + commands
    runs = {name: row["run_dir"] for name, row in rows.items()}
    plot_training_curves(runs, out / "curves.png", keys=("loss",))
    picture_grid(rows, out / "grid.png")
    payload = {"command": " && ".join(commands), "commands": commands, "settings": settings,
               "pool_masks": f"first {args.per_subset} test masks of Kvasir and of CVC-ClinicDB",
               "train_pool_masks": f"{args.train_pool} training masks (seeded permutation, seed 0), DDIM {args.train_pool_steps} steps",
               "results": rows, "seconds": time.time() - started}
    summary.write_text(json.dumps(payload, indent=2))
    (out.parent / "synth_polyps.md").write_text(markdown(payload))


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
             "| Objective | Mask-recovery Dice | Mask-recovery IoU | Chance Dice (shuffled masks) | Paired Δ Dice vs uniform (p) | train s | sample s |",
             "|---|---|---|---|---|---|---|"]
    for name, row in payload["results"].items():
        rec, chance = row.get("mask_recovery"), row.get("chance_dice")
        dice = f"{rec['dice']['mean']:.3f} ± {rec['dice']['std']:.3f}" if rec else "–"
        iou = f"{rec['iou']['mean']:.3f} ± {rec['iou']['std']:.3f}" if rec else "–"
        dice_chance = f"{chance['mean']:.3f}" if chance else "–"
        paired = row.get("paired_vs")
        delta = (f"{paired['mean_diff']:+.3f} (p={paired['wilcoxon_p']:.2f}; {paired['better']} better, {paired['worse']} worse)"
                 if paired else "–")
        sample = f"{row['sample_seconds']:.0f}" if row.get("sample_seconds") is not None else "reused"
        lines.append(f"| {name} | {dice} | {iou} | {dice_chance} | {delta} | {row['train_seconds']:.0f} | {sample} |")
    real = payload.get("real_reference")
    if real:
        lines += ["", f"Reference: {real['what']}: Dice {real['dice']['mean']:.3f} ± {real['dice']['std']:.3f} "
                      f"({real['count']} images); frozen segmenter: {payload['segmenter_recipe']}; re-scored with "
                      f"`{payload['rescore_command']}`."]
    if payload.get("provenance"):
        lines += ["", payload["provenance"]]
    lines += ["", "![curves](synth_polyps/curves.png)", "", "![grid](synth_polyps/grid.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

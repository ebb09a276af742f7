"""Output-head init at the Table 12 learning rate: does the non-negative head floor the background logit?

    OMP_NUM_THREADS=1 python bench/head_init_ab.py            # 96², 8 epochs, lr 1e-4, seeds 0 2
    (rerun the same command to continue: finished runs are reused)

Question: the polyp protocol runs (head_init=nonnegative, lr 1e-4) ended with every head weight
positive and a bias near -0.48, so no background logit could go below it (p >= 0.38). Does an
init that gives the head both signs (``balanced``) train better under the same recipe, and how
does either compare with the reference (PyTorch default) draw on seeds where that draw is alive?

One thing changes between arms: ``model_kwargs.head_init``. Same data, split, seeds (so every
other parameter's init is identical: each init only rewrites the head's draw), steps, recipe
(AdEMAMix lr 1e-4, wd 1e-4, cosine, BCE + Dice, flips/rotations, best-validation weights).
Seeds 0 and 2 are those whose reference draw is alive for both models (seed 1 of mk_unet is dead).
Per run: test mean Dice (Kvasir, CVC-ClinicDB), the head's final weights and bias, the median
and 99th percentile of the background logits on the test images, and the final validation loss.
Decision rule (written before the runs): ``balanced`` replaces ``nonnegative`` as the default if
its test mean Dice is higher on every (model, seed) pair and its background logits are no longer
floored (median background logit below the nonnegative arm's bias).

Writes bench/results/head_init_ab.{json,md}; runs under bench/results/head_init_ab/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/ holds profile.py, which would shadow the standard library's ``profile`` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "src"))

INITS = ["nonnegative", "balanced", "reference"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "polyps"))
    parser.add_argument("--models", nargs="+", default=["mk_unet", "order"])
    parser.add_argument("--inits", nargs="+", default=INITS, choices=INITS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_init_ab"))
    return parser.parse_args()


def background_logits(model, subsets: dict, image_size: int, channels: int = 3) -> dict[str, float]:
    """Median and 99th percentile of the logits on background pixels of the test images, fed
    exactly as the evaluator feeds them (``PairDataset``: same resize and scaling)."""
    import numpy as np
    import torch

    from laworder.data.dataset import PairDataset

    values = []
    model.eval()
    with torch.no_grad():
        for records in subsets.values():
            for item in PairDataset(records, image_size, channels):
                logits = model(item["image"][None])
                logits = logits[0] if isinstance(logits, (list, tuple)) else logits
                values.append(logits[0, 0][item["mask"][0] < 0.5].numpy())
    flat = np.concatenate(values)
    return {"median": float(np.median(flat)), "p99": float(np.percentile(flat, 99)),
            "share_p_above_0.3": float((flat > np.log(0.3 / 0.7)).mean())}


def run_one(args: argparse.Namespace, model: str, init: str, seed: int) -> dict:
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.evaluate import evaluate_records, evaluation_subsets
    from laworder.seg.loading import load_segmenter
    from laworder.seg.protocol import run_finished
    from laworder.seg.train import train_segmenter
    from laworder.training import LoopConfig

    folder = Path(args.out) / model / init / f"seed{seed}"
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    loop = LoopConfig(output_dir=str(folder), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=1e-4, optimizer="ademamix", scheduler="cosine", min_lr=1e-6, seed=seed,
                      monitor="val_dice", monitor_mode="max", resume=True, overwrite=False, progress=False, log_every=20)
    config = SegTrainConfig(data=args.data, model=model, model_kwargs={"head_init": init},
                            image_size=args.image_size, split_seed=seed, loop=loop)
    if not run_finished(folder / "run.json"):
        train_segmenter(config)
    network, saved = load_segmenter(folder, "best")
    subsets = evaluation_subsets(saved.data, saved.layout)
    scores = evaluate_records(network, subsets, saved.image_size, saved.channels, saved.threshold)
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [row for row in logged if "val_loss" in row]
    result = {"model": model, "init": init, "seed": seed, "test_mean_dice": scores.mean["dice"],
              "test_dice": {k: v["dice"] for k, v in scores.subsets.items()},
              "head_weight": network.head.weight.flatten().tolist(), "head_bias": network.head.bias.flatten().tolist(),
              "background_logit": background_logits(network, subsets, saved.image_size, saved.channels),
              "final_val_loss": val[-1]["val_loss"] if val else None,
              "best_val_dice": max((row["val_dice"] for row in val), default=None)}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def write(args: argparse.Namespace, results: list[dict], started: float) -> None:
    lines = [f"# Output-head init at lr {args.lr:g} ({args.image_size}², {args.epochs} epochs, polyps)", "",
             f"Command: `OMP_NUM_THREADS=1 python bench/head_init_ab.py --epochs {args.epochs} --image-size "
             f"{args.image_size} --lr {args.lr:g} --seeds {' '.join(map(str, args.seeds))}` "
             f"({(time.time() - started) / 60:.0f} min this session, 1 thread). See the script's docstring for the "
             "question and the decision rule.", "",
             "| model | seed | head init | test mean Dice % | Kvasir | CVC-ClinicDB | head bias | head weights | "
             "background logit median / p99 | background share p > 0.3 | final val loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        bg = r["background_logit"]
        lines.append(f"| {r['model']} | {r['seed']} | {r['init']} | {100 * r['test_mean_dice']:.1f} | "
                     + " | ".join(f"{100 * r['test_dice'].get(s, float('nan')):.1f}" for s in ("Kvasir", "CVC-ClinicDB"))
                     + f" | {r['head_bias'][0]:+.3f} | {' '.join(f'{w:+.2f}' for w in r['head_weight'])} | "
                     f"{bg['median']:+.2f} / {bg['p99']:+.2f} | {100 * bg['share_p_above_0.3']:.1f} % | "
                     f"{r['final_val_loss']:.3f} |")
    lines += ["", "Paired differences in test mean Dice (points) against `nonnegative`, same model and seed:", ""]
    by = {(r["model"], r["seed"], r["init"]): r for r in results}
    for init in [i for i in args.inits if i != "nonnegative"]:
        diffs = [(m, s, 100 * (by[(m, s, init)]["test_mean_dice"] - by[(m, s, "nonnegative")]["test_mean_dice"]))
                 for m in args.models for s in args.seeds if (m, s, init) in by and (m, s, "nonnegative") in by]
        if diffs:
            lines.append(f"- {init} − nonnegative: " + ", ".join(f"{m} seed {s}: {d:+.1f}" for m, s, d in diffs)
                         + f"; mean {sum(d for *_, d in diffs) / len(diffs):+.1f}")
    out = Path(args.out)
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")
    (out.parent / f"{out.name}.json").write_text(json.dumps({"protocol": vars(args), "results": results}, indent=2))


def main() -> None:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    results = []
    for seed in args.seeds:  # seeds outer, so a run cut short compares the same seeds
        for model in args.models:
            for init in args.inits:
                print(f"[head_init_ab] {time.strftime('%H:%M:%S')} {model} {init} seed {seed}", flush=True)
                results.append(run_one(args, model, init, seed))
                write(args, results, started)
    print((Path(args.out).parent / f"{Path(args.out).name}.md").read_text())


if __name__ == "__main__":
    main()

"""Dead output heads over seeds 0-9: short real-polyp runs of ``mk_unet`` and ``order`` (issue 11).

    .venv/bin/python bench/head_seeds.py            # 96², 3 epochs, lr 1e-3, seeds 0-9, 1 thread
    (rerun the same command to continue a killed run: finished seeds are reused)

With the models' default head init (or ``--model-kwargs '{"head_init": ...}'`` with another
``--out``), every seed is trained with the
bench/polyps.py protocol (group-aware 90/10 split per seed, AdEMAMix, cosine, BCE+Dice,
best-validation weights tested on Kvasir and CVC-ClinicDB). A run "collapsed" if its test mean
Dice is 0 or its validation never predicted a positive pixel. For the confound, the reference
init (PyTorch's default head, ``model_kwargs.head_init=reference``) is only built, not trained:
how many of the same seeds draw an all-negative head (every weight and the bias < 0, so every
logit of post-ReLU features is negative).

Writes bench/results/<out>.{json,md} (default head_seeds); runs under <out>/runs/.
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


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "polyps"))
    parser.add_argument("--models", nargs="+", default=["mk_unet", "order"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help='JSON dict passed to every model, e.g. \'{"head_init": "reference"}\'')
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_seeds"))
    return parser.parse_args()


HEAD_INIT_COLUMNS = ("reference", "nonnegative", "balanced")  # the construction table's columns


def reference_dead_heads(models: list[str], seeds: list[int]) -> dict[str, dict]:
    """Per model: which seeds draw an all-negative head with the reference vs the default init."""
    from accelerate.utils import set_seed

    from laworder.models import create_model

    found = {}
    for model in models:
        rows = {}
        for init in HEAD_INIT_COLUMNS:
            dead = []
            for seed in seeds:
                set_seed(seed)  # as seg train does before building the model
                head = create_model(model, head_init=init).head
                if (head.weight < 0).all() and (head.bias < 0).all():
                    dead.append(seed)
            rows[init] = {"dead_seeds": dead, "count": len(dead), "of": len(seeds)}
        found[model] = rows
    return found


def val_positive(run_dir: Path) -> list[float]:
    """``val_positive_fraction`` of every validation in the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["val_positive_fraction"] for r in records if "val_positive_fraction" in r]


def main() -> dict:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.protocol import run_protocol
    from laworder.training import LoopConfig

    started = time.time()
    out = Path(args.out)
    construction = reference_dead_heads(args.models, args.seeds)
    print(f"[head_seeds] all-negative heads at construction: {json.dumps(construction)}", flush=True)
    trained: dict[str, list[dict]] = {model: [] for model in args.models}
    # Seeds outer, models inner, and the table rewritten after every run: a run cut short by the
    # session still reports every finished (seed, model) pair, side by side.
    for seed in args.seeds:
        for model in args.models:
            loop = LoopConfig(output_dir=str(out / "runs" / model), epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, monitor="val_dice", monitor_mode="max",
                              resume=True,  # finished seeds are reused, killed ones continue
                              progress=False, log_every=20)
            config = SegTrainConfig(data=args.data, model=model, image_size=args.image_size,
                                    model_kwargs=dict(args.model_kwargs), loop=loop)
            t0 = time.time()
            row = run_protocol(config, seeds=[seed]).per_seed[0]
            positive = val_positive(out / "runs" / model / f"seed{seed}")
            test_dice = row["mean"]["dice"]
            trained[model].append({"seed": seed, "test_mean_dice": test_dice,
                                   "test_subsets": {k: v["dice"] for k, v in row["subsets"].items()},
                                   "val_positive_fraction": positive,
                                   "collapsed": test_dice == 0.0 or max(positive, default=0.0) == 0.0,
                                   "seconds": time.time() - t0})
            print(f"[head_seeds] {model} seed {seed}: test mean Dice {100 * test_dice:.1f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            write(args, out, construction, trained, started)


def write(args: argparse.Namespace, out: Path, construction: dict, trained: dict[str, list[dict]], started: float) -> dict:
    from laworder.metrics.overlap import mean_std
    from laworder.models.mk_unet import DEFAULT_HEAD_INIT

    summary = {}
    for model, rows in trained.items():
        mean, std = mean_std([r["test_mean_dice"] for r in rows]) if rows else (float("nan"), float("nan"))
        summary[model] = {"per_seed": rows, "seeds_done": len(rows), "collapses": sum(r["collapsed"] for r in rows),
                          "mean_dice": {"mean": mean, "std": std}}
    command = "python bench/head_seeds.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command,
        "protocol": {"seeds": args.seeds, "epochs": args.epochs, "image_size": args.image_size,
                     "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
                     "model_kwargs": args.model_kwargs,
                     "head_init": args.model_kwargs.get("head_init", f"{DEFAULT_HEAD_INIT} (default)"), "collapse": "test mean Dice == 0 or no positive validation pixel ever"},
        "all_negative_heads_at_construction": construction,
        "trained": summary,
        "seconds": time.time() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # named after --out, so a second table (another head_init) does not overwrite the first
    (out.parent / f"{out.name}.json").write_text(json.dumps(payload, indent=2))
    (out.parent / f"{out.name}.md").write_text(format_markdown(payload))
    return payload


def format_markdown(payload: dict) -> str:
    p = payload["protocol"]
    construction = payload["all_negative_heads_at_construction"]
    inits = [i for i in HEAD_INIT_COLUMNS if all(i in rows for rows in construction.values())]
    lines = [f"Command: `{payload['command']}` ({payload['seconds'] / 60:.0f} min, {p['threads']} thread)", "",
             f"Real polyps, {p['image_size']}², {p['epochs']} epochs, batch {p['batch_size']}, lr {p['lr']}, "
             "AdEMAMix + cosine, BCE+Dice, best-validation weights tested on Kvasir and CVC-ClinicDB. "
             "Collapse: test mean Dice 0 or no positive validation pixel ever.", "",
             "**All-negative output heads at construction** (every weight and the bias < 0; seeds "
             f"{p['seeds'][0]}-{p['seeds'][-1]}):", "",
             "| model | " + " | ".join(f"`{init}`" for init in inits) + " |", "|---|" + "---|" * len(inits)]
    for model, rows in construction.items():
        cells = [f"{rows[i]['count']} / {rows[i]['of']}" + (f" (seeds {rows[i]['dead_seeds']})" if rows[i]["dead_seeds"] else "")
                 for i in inits]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "`reference`: PyTorch's default (the official MK-UNet); `nonnegative`: |w|, zero bias; "
              "`balanced`: alternating signs, zero bias."]
    lines += ["", f"**Trained with head_init = {p['head_init']}** (test mean Dice over the two subsets, %; "
              "seeds outer, models inner, so a table cut short compares the same seeds):", ""]
    models = list(payload["trained"])
    lines += ["| seed | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    seeds = sorted({r["seed"] for m in models for r in payload["trained"][m]["per_seed"]})
    for seed in seeds:
        cells = []
        for model in models:
            row = next((r for r in payload["trained"][model]["per_seed"] if r["seed"] == seed), None)
            cells.append("–" if row is None else
                         f"{100 * row['test_mean_dice']:.1f}" + (" (collapsed)" if row["collapsed"] else ""))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("| mean ± std | " + " | ".join(
        f"{100 * payload['trained'][m]['mean_dice']['mean']:.1f} ± {100 * payload['trained'][m]['mean_dice']['std']:.1f}"
        for m in models) + " |")
    lines.append("| collapses | " + " | ".join(
        f"{payload['trained'][m]['collapses']} / {payload['trained'][m]['seeds_done']}" for m in models) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

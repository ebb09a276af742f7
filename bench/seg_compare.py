"""Shared runner for the real-data segmentation comparisons (bench/polyps.py, bench/brisc.py).

A CPU-scale version of the paper's protocol (§4.2.2): for each seed a fresh group-aware
90/10 split of the training pool, training with best-validation checkpointing, evaluation
of the best weights on each test subset, mean ± std over seeds of the mean-over-subsets
scores. What is scaled down (resolution, epochs, seeds, learning rate) is recorded in the
JSON next to the numbers.
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


def parse(default_data: str, name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"{name}: ORDER vs MK-UNet and the SE/CBAM controls")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--models", nargs="+", default=["order", "mk_unet", "order_se", "order_cbam"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / name))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 keeps two benchmarks on 2 cores from thrashing")
    return parser.parse_args()


def run(args: argparse.Namespace, name: str) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(args.threads)
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.protocol import format_protocol, run_protocol
    from laworder.training import LoopConfig

    out = Path(args.out)
    results, started = [], time.time()
    for model in args.models:
        loop = LoopConfig(output_dir=str(out / "runs" / model), epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, monitor="val_dice", monitor_mode="max", resume=args.resume,
                          overwrite=not args.resume, progress=False, log_every=20)
        config = SegTrainConfig(data=args.data, model=model, image_size=args.image_size, loop=loop)
        t0 = time.time()
        result = run_protocol(config, seeds=args.seeds)
        print(f"[{name}] {model}: mean Dice {100 * result.summary['mean/dice']['mean']:.1f} "
              f"± {100 * result.summary['mean/dice']['std']:.1f} ({time.time() - t0:.0f} s)", flush=True)
        results.append(result)
    command = f"python bench/{name}.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command,
        "protocol": {"seeds": args.seeds, "epochs": args.epochs, "image_size": args.image_size,
                     "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "optimizer": "AdEMAMix (alpha=2, decoupled wd 1e-4)",
                     "schedule": "cosine to 1e-6", "val_fraction": 0.1, "augment": "h/v flips, rotation ±90°",
                     "paper_protocol": "256², 100 epochs, lr 1e-4, 5 seeds (configs/seg/polyps_paper.yaml, configs/exp/table7_8_seg_compare.yaml)"},
        "results": [r.to_json() for r in results],
        "seconds": time.time() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{name}.json").write_text(json.dumps(payload, indent=2))
    table = format_protocol(results)
    (out.parent / f"{name}.md").write_text(f"Command: `{command}`\n\nProtocol: {json.dumps(payload['protocol'])}\n\n{table}")
    print(table)
    return payload


def main(name: str, default_data: Path) -> dict:
    """Entry point of the per-dataset scripts (``bench/polyps.py``, ``bench/brisc.py``)."""
    return run(parse(str(default_data), name), name)

"""Table 9 on this machine + the foundation issue's performance targets, side by side in one run.

    .venv/bin/python bench/profile.py [--device cpu] [--out bench/results/profile_cpu.json]

Measures, for every registered segmenter at 256²: params, FLOPs in both conventions,
batch-1 latency, batch-16 throughput, peak forward memory, onnxruntime latency; then the
ORDER / MK-UNet latency and memory ratios (interleaved rounds, median of ratios), and the
training throughput of ``laworder.training.fit`` against a bare PyTorch loop on the same
model, data, optimizer and augmentation (interleaved as well).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the standard library's ``profile``; keep bench/ off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def interleaved_latency_ratio(a: str, b: str, image_size: int, rounds: int, device: str) -> dict:
    from laworder.models import create_model
    from laworder.seg.profile import peak_forward_mb

    dev = torch.device(device)
    models = {n: create_model(n).eval().to(dev) for n in (a, b)}
    x = torch.rand(1, 3, image_size, image_size, device=dev)
    times = {a: [], b: []}
    with torch.no_grad():
        for m in models.values():
            for _ in range(5):
                m(x)
        for _ in range(rounds):
            for name, m in models.items():
                start = time.perf_counter()
                for _ in range(5):
                    m(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / 5)
    ratios = [ta / tb for ta, tb in zip(times[a], times[b])]
    batch = torch.rand(16, 3, image_size, image_size, device=dev)
    peaks = {n: statistics.median([peak_forward_mb(m, batch) or 0.0 for _ in range(3)]) for n, m in models.items()}
    return {"models": [a, b], "latency_ms": {n: 1000 * statistics.median(t) for n, t in times.items()},
            "latency_ratio_median": statistics.median(ratios), "peak_mb_batch16": peaks,
            "peak_ratio": peaks[a] / peaks[b] if peaks[b] else None}


class InMemoryPairs(Dataset):
    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.masks = (torch.rand(n, 1, size, size, generator=g) > 0.9).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "index": i}


def bare_loop_seconds(model_name: str, data: InMemoryPairs, steps: int, batch_size: int) -> float:
    """The same work as ``fit`` + ``SegTask`` written as a plain PyTorch loop."""
    from laworder.data.transforms import augment_batch
    from laworder.models import create_model
    from laworder.seg.losses import bce_dice_loss
    from laworder.training.optim import OPTIMIZERS, SCHEDULERS

    torch.manual_seed(0)
    model = create_model(model_name).train()
    optimizer = OPTIMIZERS.create("ademamix", params=model.parameters(), lr=1e-4, weight_decay=1e-4)
    scheduler = SCHEDULERS.create("cosine", optimizer=optimizer, total_steps=steps, min_lr=1e-6)
    loss_fn = bce_dice_loss()
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    start = time.perf_counter()
    done = 0
    while done < steps:
        for batch in loader:
            g = torch.Generator().manual_seed(done)
            images, masks = augment_batch(batch["image"], batch["mask"], g)
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done >= steps:
                break
    return time.perf_counter() - start


def core_loop_seconds(model_name: str, data: InMemoryPairs, steps: int, batch_size: int) -> float:
    from laworder.models import create_model
    from laworder.seg.config import AugmentConfig
    from laworder.seg.task import SegTask
    from laworder.training import LoopConfig, fit

    torch.manual_seed(0)
    task = SegTask(create_model(model_name), AugmentConfig())
    with tempfile.TemporaryDirectory() as tmp:
        config = LoopConfig(output_dir=tmp + "/run", max_steps=steps, batch_size=batch_size, progress=False,
                            checkpoint_every=10**9, log_every=10, cpu=True)
        start = time.perf_counter()
        fit(task, data, config)
        # fit writes one checkpoint and the final weights; both are part of its cost.
        return time.perf_counter() - start


def training_throughput(model_name: str, rounds: int, steps: int, batch_size: int, size: int) -> dict:
    data = InMemoryPairs(batch_size * 8, size)
    bare, core = [], []
    for _ in range(rounds):
        bare.append(steps / bare_loop_seconds(model_name, data, steps, batch_size))
        core.append(steps / core_loop_seconds(model_name, data, steps, batch_size))
    return {"model": model_name, "steps": steps, "batch_size": batch_size, "image_size": size,
            "bare_steps_per_s": statistics.median(bare), "core_steps_per_s": statistics.median(core),
            "core_over_bare": statistics.median(core) / statistics.median(bare), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from laworder.seg.profile import format_table, profile_models, rows_to_json

    torch.manual_seed(0)
    rows = profile_models(image_size=args.image_size, device=args.device, repeats=args.repeats, onnx=args.device == "cpu")
    # Table 9's ORDER[2,1] row: attention at the H/4 skip (4096 tokens at 256²).
    from laworder.seg.profile import profile_model

    rows.insert(rows.index(next(r for r in rows if r.model == "order")) + 1, profile_model(
        "order", image_size=args.image_size, device=args.device, repeats=args.repeats, onnx=args.device == "cpu",
        model_kwargs={"skip_indices": (2, 1)}, label="order[2,1]"))
    print(format_table(rows))
    result = {
        "command": "python bench/profile.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device},
        "rows": rows_to_json(rows),
        "order_vs_mk_unet": interleaved_latency_ratio("order", "mk_unet", args.image_size, args.rounds, args.device),
    }
    by_name = {r.model: r for r in rows}
    result["targets"] = {
        "order_params": by_name["order"].params, "order_params_target": 42_000,
        "order_gflops_conv_linear": by_name["order"].flops_conv_linear / 1e9, "order_gflops_target": 0.11,
        "order_gflops_full": by_name["order"].flops_full / 1e9,
        "onnx_speedup": {r.model: r.ms_per_img / r.onnx_ms_per_img for r in rows if r.onnx_ms_per_img},
    }
    if args.device == "cpu":
        result["training_throughput"] = training_throughput("order", rounds=3, steps=args.train_steps, batch_size=16, size=args.image_size)
    print(json.dumps({k: result[k] for k in ("order_vs_mk_unet", "targets", "training_throughput") if k in result}, indent=2))
    out = Path(args.out or ROOT / "bench" / "results" / f"profile_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    (out.with_suffix(".md")).write_text(f"Command: `{result['command']}`\n\n" + format_table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

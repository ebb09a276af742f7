"""LAW overhead and CFG batching on the built-in backbone, side by side in one run.

    .venv/bin/python bench/synth_overhead.py [--device cpu] [--threads 1]

1. Train-step time and peak memory of ``law`` vs ``uniform`` on the same backbone, batch and
   data (interleaved rounds; median of per-round ratios). Target: ≤ 1.05× for both.
2. Images/s of DDIM with classifier-free guidance: conditional + unconditional passes batched
   into one forward vs two separate passes per step (interleaved). Target: batched not slower
   on CPU, ≤ 0.6× the two-pass time on a GPU.
Writes bench/results/synth_overhead_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/profile.py shadows stdlib
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from laworder.seg.profile import peak_memory_mb  # noqa: E402
from laworder.synth.config import SynthConfig  # noqa: E402
from laworder.synth.sampler import MaskConditionedSampler  # noqa: E402
from laworder.synth.task import SynthTask  # noqa: E402


def make_batch(batch_size: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, size, size, generator=g)
    masks = torch.zeros(batch_size, 1, size, size)
    for i in range(batch_size):  # a lesion of a few percent per sample
        r = 4 + i % 5
        masks[i, 0, size // 3 : size // 3 + r * 2, size // 2 : size // 2 + r * 2] = 1
    return {"image": images.to(device), "mask": masks.to(device), "index": torch.arange(batch_size)}


def make_task(objective: str, size: int, device: torch.device) -> tuple[SynthTask, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = SynthConfig(objective=objective, resolution=size)
    task = SynthTask(config)
    for module in task.modules.values():
        module.to(device).train()
    params = [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]
    return task, torch.optim.AdamW(params, lr=1e-4)


def train_step(task: SynthTask, optimizer: torch.optim.Optimizer, batch: dict, step: int) -> None:
    output = task.training_step(batch, torch.Generator().manual_seed(step))
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def law_overhead(device: torch.device, batch_size: int, size: int, rounds: int, steps_per_round: int) -> dict:
    batch = make_batch(batch_size, size, device)
    tasks = {name: make_task(name, size, device) for name in ("uniform", "law")}
    for task, opt in tasks.values():
        train_step(task, opt, batch, 0)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for r in range(rounds):
        for name, (task, opt) in tasks.items():
            sync(device)
            start = time.perf_counter()
            for s in range(steps_per_round):
                train_step(task, opt, batch, r * steps_per_round + s + 1)
            sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_round)
    ratios = [a / b for a, b in zip(times["law"], times["uniform"])]
    # A warm process reuses freed blocks, so each objective's peak is taken in a fresh one.
    peaks = {name: _peak_in_subprocess(name, device, batch_size, size) for name in tasks}
    params = {name: sum(p.numel() for m in task.modules.values() for p in m.parameters()) for name, (task, _) in tasks.items()}
    return {"batch_size": batch_size, "resolution": size, "rounds": rounds, "steps_per_round": steps_per_round,
            "step_seconds_median": {k: statistics.median(v) for k, v in times.items()},
            "time_ratio_law_over_uniform": statistics.median(ratios), "peak_mb": peaks,
            "memory_ratio_law_over_uniform": peaks["law"] / peaks["uniform"] if peaks["uniform"] else None,
            "trainable_params": params, "target": "<= 1.05 for time and memory"}


def peak_training_mb(objective: str, device: torch.device, batch_size: int, size: int, steps: int = 3) -> float | None:
    """Peak extra memory of ``steps`` training steps (activations, gradients, optimizer state)."""
    batch = make_batch(batch_size, size, device)
    task, opt = make_task(objective, size, device)

    def run() -> None:
        for step in range(steps):
            train_step(task, opt, batch, step)

    return peak_memory_mb(run, device)


def _peak_in_subprocess(objective: str, device: torch.device, batch_size: int, size: int) -> float | None:
    import subprocess

    cmd = [sys.executable, __file__, "--peak-only", objective, "--device", str(device),
           "--batch-size", str(batch_size), "--resolution", str(size), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def cfg_batching(device: torch.device, batch_size: int, size: int, steps: int, rounds: int) -> dict:
    task, _ = make_task("uniform", size, device)
    for module in task.modules.values():
        module.eval()
    masks = make_batch(batch_size, size, device)["mask"]
    seeds = list(range(batch_size))
    samplers = {"batched": MaskConditionedSampler(task.backbone, steps, 10.0, batched_cfg=True),
                "two_pass": MaskConditionedSampler(task.backbone, steps, 10.0, batched_cfg=False)}
    first = {k: s.sample(masks, seeds) for k, s in samplers.items()}  # warm-up + agreement check
    max_diff = float((first["batched"] - first["two_pass"]).abs().max())
    times: dict[str, list[float]] = {k: [] for k in samplers}
    for _ in range(rounds):
        for name, sampler in samplers.items():
            sync(device)
            start = time.perf_counter()
            sampler.sample(masks, seeds)
            sync(device)
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["batched"], times["two_pass"])]
    return {"batch_size": batch_size, "resolution": size, "ddim_steps": steps, "guidance": 10.0, "rounds": rounds,
            "images_per_s": {k: batch_size / statistics.median(v) for k, v in times.items()},
            "time_ratio_batched_over_two_pass": statistics.median(ratios), "max_abs_diff_between_modes": max_diff,
            "target": "CPU: <= 1.0 (not slower); GPU: <= 0.6"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--out")
    parser.add_argument("--peak-only", help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs="+", default=["law", "cfg"], choices=["law", "cfg"],
                        help="which measurements to (re)run; the others are kept from an existing --out file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.peak_only:
        print(json.dumps({"peak_mb": peak_training_mb(args.peak_only, device, args.batch_size, args.resolution)}))
        return 0
    result = {"command": "python bench/synth_overhead.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}}
    out = Path(args.out or ROOT / "bench" / "results" / f"synth_overhead_{device.type}.json")
    if set(args.parts) != {"law", "cfg"} and out.is_file():
        earlier = json.loads(out.read_text())
        result = {**earlier, "machine": result["machine"],
                  "command": earlier.get("command", "") + " ; " + result["command"]}
    if "law" in args.parts:
        result["law_overhead"] = law_overhead(device, args.batch_size, args.resolution, args.rounds, 3)
        print(json.dumps(result["law_overhead"], indent=2), flush=True)
    if "cfg" in args.parts:
        result["cfg_batching"] = cfg_batching(device, args.batch_size, args.resolution, args.sample_steps, max(2, args.rounds // 2))
        print(json.dumps(result["cfg_batching"], indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

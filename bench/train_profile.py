"""Where a CPU training step goes, by op (torch.profiler), for ORDER and MK-UNet.

    .venv/bin/python bench/train_profile.py                      # 128² and 256², batch 16, 1 thread
    .venv/bin/python bench/train_profile.py --sizes 128 --steps 3

One step = augmentation + forward + BCE/Dice + backward + AdEMAMix, as ``SegTask`` under
``laworder.training.fit`` does it; ``--fast`` profiles the channels_last variant. Writes
bench/results/train_profile_cpu.{json,md}: per (model, size) the top ops by self CPU time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/ holds profile.py, which would shadow the standard library's ``profile`` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

# Which family an aten op belongs to, for the summary line (first match wins).
FAMILIES = [
    ("depthwise/grouped conv backward", ("convolution_backward",)),
    ("conv forward", ("mkldnn_convolution", "convolution", "_convolution", "conv2d", "thnn_conv", "_slow_conv2d")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("attention (bmm/softmax/SDPA)", ("bmm", "softmax", "_softmax", "scaled_dot_product", "flash_attention")),
    ("interpolate / grid_sample (augment, upsampling)", ("upsample", "grid_sampler", "affine_grid")),
    ("pooling", ("max_pool", "max_pool2d_with_indices", "adaptive")),
    ("optimizer (AdEMAMix)", ("_foreach", "lerp", "addcdiv", "addcmul")),
]


def family(op: str) -> str:
    name = op.removeprefix("aten::")
    for label, keys in FAMILIES:
        if any(name == k or name.startswith(k) or (len(k) > 12 and k in name) for k in keys):
            return label
    return "other (elementwise, copies, reductions)"


def make_step(model_name: str, size: int, batch_size: int, channels_last: bool):
    from laworder.data.transforms import augment_batch
    from laworder.models import create_model
    from laworder.seg.losses import bce_dice_loss
    from laworder.training.optim import OPTIMIZERS

    torch.manual_seed(0)
    model = create_model(model_name).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = OPTIMIZERS.create("ademamix", params=model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = bce_dice_loss()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, size, size, generator=g)
    masks = (torch.rand(batch_size, 1, size, size, generator=g) > 0.9).float()

    def step(index: int) -> None:
        x, y = augment_batch(images, masks, torch.Generator().manual_seed(index))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def profile_step(model_name: str, size: int, batch_size: int, steps: int, channels_last: bool, top: int) -> dict:
    step = make_step(model_name, size, batch_size, channels_last)
    for i in range(2):
        step(i)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(2 + i)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    rows = [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "calls_per_step": e.count / steps} for e in events if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r["self_cpu_ms_per_step"])
    total = sum(r["self_cpu_ms_per_step"] for r in rows)
    families: dict[str, float] = {}
    for r in rows:
        r["share"] = r["self_cpu_ms_per_step"] / total
        families[family(r["op"])] = families.get(family(r["op"]), 0.0) + r["share"]
    return {"model": model_name, "image_size": size, "batch_size": batch_size, "channels_last": channels_last,
            "profiled_steps": steps, "wall_s_per_step_under_profiler": wall, "self_cpu_ms_per_step": total,
            "families": dict(sorted(families.items(), key=lambda kv: -kv[1])), "top_ops": rows[:top]}


def format_markdown(payload: dict) -> str:
    lines = [f"Command: `{payload['command']}`", "",
             f"torch {payload['machine']['torch']}, {payload['machine']['threads']} thread(s), "
             f"{payload['machine']['processor'] or payload['machine']['platform']}; machine shared and noisy: shares "
             "within a step are meaningful, absolute times only roughly.", ""]
    for r in payload["profiles"]:
        layout = "channels_last" if r["channels_last"] else "contiguous (eager default)"
        lines += [f"### {r['model']} at {r['image_size']}², batch {r['batch_size']}, {layout}: "
                  f"{r['self_cpu_ms_per_step']:.0f} ms self CPU per step", "",
                  "| op family | share |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} % |" for k, v in r["families"].items()]
        lines += ["", "| op | ms/step | calls/step | share |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['self_cpu_ms_per_step']:.1f} | {o['calls_per_step']:.0f} | {100 * o['share']:.1f} % |"
                  for o in r["top_ops"]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["order", "mk_unet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--fast", action="store_true", help="also profile the channels_last variant")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_profile_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profiles = []
    for size in args.sizes:
        for model in args.models:
            for channels_last in ([False, True] if args.fast else [False]):
                r = profile_step(model, size, args.batch_size, args.steps, channels_last, args.top)
                print(f"{model} {size}² cl={channels_last}: {r['self_cpu_ms_per_step']:.0f} ms/step "
                      + ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(r["families"].items())[:4]), flush=True)
                profiles.append(r)
    payload = {"command": "python bench/train_profile.py " + " ".join(sys.argv[1:]),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
               "profiles": profiles}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(format_markdown(payload))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

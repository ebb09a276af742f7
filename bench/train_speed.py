"""Training and inference speed of ORDER and MK-UNet on this CPU: before vs the fast path, side by side.

    .venv/bin/python bench/train_speed.py                  # 256², batch 16, 1 thread
    .venv/bin/python bench/train_speed.py --rounds 5 --latency-runs 40

"before" is the path as it was (contiguous memory, ORDER's explicit N×N attention, one sample at
a time at batch inference); "fast" is what ``laworder.training.fit`` and evaluation now do
(channels_last memory, two fused SDPA calls, batched; at inference also BatchNorm folded into
the convolutions, ``laworder.models.inference.inference_copy``). Every comparison is interleaved in
rounds (before, fast, before, fast, ...) in one process, so the machine's load hits both
alike; the speed-up of a round is its time ratio, reported as the median over rounds.
The ORDER/MK-UNet latency ratio at batch 1 is the ratio of the minima of ≥30 interleaved runs,
on 1 and on 2 threads. Writes bench/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/ holds profile.py, which would shadow the standard library's ``profile`` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from laworder.models.skip_attention import BidirectionalSkipAttention  # noqa: E402


def _explicit_attend(self, query_d, key_e, value_d, value_e):
    """The attention before the fused path: one materialised S, softmax along each axis."""
    similarity = (query_d * self.head_dim**-0.5) @ key_e.transpose(-2, -1)
    return similarity.softmax(dim=-1) @ value_e, similarity.transpose(-2, -1).softmax(dim=-1) @ value_d


def _per_sample_attend(self, query_d, key_e, value_d, value_e):
    """Before, no-grad batches ran the explicit attention one sample at a time (memory)."""
    if torch.is_grad_enabled() or query_d.shape[0] == 1:
        return _explicit_attend(self, query_d, key_e, value_d, value_e)
    reads = [_explicit_attend(self, *p) for p in zip(*(t.split(1) for t in (query_d, key_e, value_d, value_e)))]
    return torch.cat([r[0] for r in reads]), torch.cat([r[1] for r in reads])


@contextlib.contextmanager
def path(kind: str):
    """``before``: the old attention; ``fast``: the code as it is."""
    fused = BidirectionalSkipAttention._attend
    if kind == "before":
        BidirectionalSkipAttention._attend = _per_sample_attend
    try:
        yield
    finally:
        BidirectionalSkipAttention._attend = fused


def build(name: str, kind: str, train: bool):
    from laworder.models import create_model

    if kind == "compiled":  # the fast path under torch.compile (LoopConfig.compile / a compiled predictor)
        return torch.compile(build(name, "fast", train))
    torch.manual_seed(0)
    model = create_model(name).train(train)
    if kind == "fast" and not train:
        from laworder.models.inference import inference_copy

        return inference_copy(model)  # what evaluate/predict run: BN folded, channels_last
    if kind == "fast":
        model = model.to(memory_format=torch.channels_last)
    return model


def training_steps(name: str, kind: str, size: int, batch: int):
    """A closure running one SegTask-like step (augment, forward, BCE+Dice, backward, AdEMAMix)."""
    from laworder.data.transforms import augment_batch
    from laworder.seg.losses import bce_dice_loss
    from laworder.training.optim import OPTIMIZERS

    model = build(name, kind, True)
    optimizer = OPTIMIZERS.create("ademamix", params=model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = bce_dice_loss()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    masks = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float()
    count = [0]

    def step() -> None:
        with path(kind):
            x, y = augment_batch(images, masks, torch.Generator().manual_seed(count[0]))
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        count[0] += 1

    return step


def inference(name: str, kind: str, size: int, batch: int):
    model = build(name, kind, False)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))

    def run() -> None:
        with path(kind), torch.no_grad():
            model(x)

    return run


def onnx_inference(name: str, size: int, batch: int, tmp: Path):
    from laworder.seg.export import OnnxSegmenter, export_onnx

    model = build(name, "fast", False).to(memory_format=torch.contiguous_format)
    onnx_path = export_onnx(model, tmp / f"{name}.onnx", input_size=size, atol=1e-2).path
    session = OnnxSegmenter(onnx_path)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return lambda: session(x)


def interleaved(fns: dict, rounds: int, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``rounds`` times, in the order given, each round timing ``repeats`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[key].append((time.perf_counter() - start) / repeats)
    return times


def speedup(times: dict[str, list[float]], slow: str, quick: str) -> dict:
    ratios = [a / b for a, b in zip(times[slow], times[quick])]
    return {"median_of_round_ratios": statistics.median(ratios), "ratio_of_minima": min(times[slow]) / min(times[quick]),
            "round_ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["order", "mk_unet"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts for the latency ratio")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--parts", nargs="+", default=["training", "inference", "latency"],
                        help="measure only these; the others are kept from an existing --out file")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.json"))
    parser.add_argument("--conditions", default="shared 2-core machine under load",
                        help="how quiet the machine was, recorded with the numbers")
    args = parser.parse_args()
    size, batch = args.image_size, args.batch_size
    kinds = ("before", "fast", "compiled") if args.compile else ("before", "fast")
    torch.set_num_threads(1)
    result: dict = {"command": "python bench/train_speed.py " + " ".join(sys.argv[1:]),
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "torch": torch.__version__, "cores_visible": torch.get_num_interop_threads(),
                                "conditions": args.conditions},
                    "image_size": size, "batch_size": batch, "training": {}, "inference": {}, "latency": {}}

    out = Path(args.out)
    if set(args.parts) != {"training", "inference", "latency"} and out.is_file():
        kept = json.loads(out.read_text())
        for part in {"training", "inference", "latency"} - set(args.parts):
            result[part] = kept.get(part, {})
            result.setdefault("commands", {})[part] = kept.get("commands", {}).get(part, kept["command"])
    for part in args.parts:
        result.setdefault("commands", {})[part] = result["command"]

    for name in (args.models if "training" in args.parts else []):  # training throughput, 1 thread
        fns = {kind: training_steps(name, kind, size, batch) for kind in kinds}
        times = interleaved(fns, args.rounds, args.train_steps)
        key = f"{name}_{size}"
        result["training"][key] = {
            "model": name, "image_size": size, "batch_size": batch, "threads": 1,
            "images_per_s": {k: batch / min(t) for k, t in times.items()},
            "seconds_per_step": times, "speedup": speedup(times, "before", "fast"),
            **({"speedup_compiled": speedup(times, "before", "compiled")} if "compiled" in times else {})}
        print(f"train {key}: {result['training'][key]['images_per_s']} speedup "
              f"{result['training'][key]['speedup']['median_of_round_ratios']:.2f}", flush=True)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in (args.models if "inference" in args.parts else []):  # batch inference, 1 thread
            fns = {kind: inference(name, kind, size, batch) for kind in kinds}
            if not args.no_onnx:
                fns["onnxruntime"] = onnx_inference(name, size, batch, Path(tmp))
            times = interleaved(fns, args.rounds, 2)
            key = f"{name}_{size}"
            result["inference"][key] = {
                "model": name, "image_size": size, "batch_size": batch, "threads": 1,
                "ms_per_image": {k: 1000 * min(t) / batch for k, t in times.items()},
                "speedup": speedup(times, "before", "fast"),
                **({"speedup_compiled": speedup(times, "before", "compiled")} if "compiled" in times else {}),
                **({"speedup_onnxruntime": speedup(times, "before", "onnxruntime")} if "onnxruntime" in times else {})}
            print(f"infer {key}: {result['inference'][key]['ms_per_image']}", flush=True)

    for threads in (args.threads if "latency" in args.parts else []):  # ORDER / MK-UNet latency at batch 1
        torch.set_num_threads(threads)
        fns = {f"{name}_{kind}": inference(name, kind, size, 1) for kind in ("before", "fast") for name in ("order", "mk_unet")}
        times = interleaved(fns, args.latency_runs, 1, warmup=3)
        minima = {k: 1000 * min(t) for k, t in times.items()}
        result["latency"][f"threads_{threads}"] = {
            "threads": threads, "runs": args.latency_runs, "min_ms": minima,
            "order_over_mk_unet": {kind: minima[f"order_{kind}"] / minima[f"mk_unet_{kind}"] for kind in ("before", "fast")}}
        print(f"latency {threads} threads: {result['latency'][f'threads_{threads}']}", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(format_markdown(result))
    print(format_markdown(result))
    return 0


def format_markdown(r: dict) -> str:
    commands = r.get("commands", {})
    lines = [f"Command: `{r['command']}`" + "".join(f"; {k}: `{v}`" for k, v in commands.items() if v != r["command"]) + f" (torch {r['machine']['torch']}, "
             f"{r['machine'].get('conditions', 'shared 2-core machine under load')}: "
             "the ratios are side by side in one process)", "",
             "\"before\": contiguous memory, explicit N×N attention (one sample at a time in batch inference); "
             "\"fast\": channels_last + two fused SDPA calls, batched (what the training loop and evaluation now use); "
             "at inference also BatchNorm folded into the convolutions.", "",
             f"**Training** ({r['image_size']}², batch {r['batch_size']}, 1 thread, AdEMAMix step incl. augmentation):", "",
             "| model | before img/s | fast img/s | compiled img/s | speed-up fast | speed-up compiled |",
             "|---|---|---|---|---|---|"]

    def cell(t: dict, key: str, fmt: str, suffix: str = "") -> str:
        return format(t[key], fmt) + suffix if key in t else "–"

    for t in r["training"].values():
        ips, comp = t["images_per_s"], t.get("speedup_compiled", {})
        lines.append(f"| {t['model']} | {ips['before']:.2f} | {ips['fast']:.2f} | {cell(ips, 'compiled', '.2f')} | "
                     f"{t['speedup']['median_of_round_ratios']:.2f}× | {cell(comp, 'median_of_round_ratios', '.2f', '×')} |")
    lines += ["", f"**Batch inference** ({r['image_size']}², batch {r['batch_size']}, 1 thread, ms per image; "
              "speed-ups are medians of the round ratios):", "",
              "| model | before | fast | compiled | onnxruntime | speed-up fast | speed-up compiled | speed-up onnxruntime |",
              "|---|---|---|---|---|---|---|---|"]
    for t in r["inference"].values():
        ms = t["ms_per_image"]
        ratios = {k: cell(t.get(k, {}), "median_of_round_ratios", ".2f", "×") for k in ("speedup_compiled", "speedup_onnxruntime")}
        lines.append(f"| {t['model']} | {ms['before']:.1f} | {ms['fast']:.1f} | {cell(ms, 'compiled', '.1f')} | "
                     f"{cell(ms, 'onnxruntime', '.1f')} | {t['speedup']['median_of_round_ratios']:.2f}× | "
                     f"{ratios['speedup_compiled']} | {ratios['speedup_onnxruntime']} |")
    lines += ["", f"**ORDER / MK-UNet latency at batch 1** ({r['image_size']}², minimum of the interleaved runs):", "",
              "| threads | runs | ORDER ms (before / fast) | MK-UNet ms (before / fast) | ratio before | ratio fast |",
              "|---|---|---|---|---|---|"]
    for t in r["latency"].values():
        m = t["min_ms"]
        lines.append(f"| {t['threads']} | {t['runs']} | {m['order_before']:.1f} / {m['order_fast']:.1f} | "
                     f"{m['mk_unet_before']:.1f} / {m['mk_unet_fast']:.1f} | {t['order_over_mk_unet']['before']:.2f}× | "
                     f"{t['order_over_mk_unet']['fast']:.2f}× |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

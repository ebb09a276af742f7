"""UniSegDiff vs ORDER and MK-UNet on the real polyp data, with per-image inference cost.

Same CPU-scale protocol and splits as ``bench/polyps.py`` (per seed a fresh group-aware 90/10
split with ``split_seed = seed``, best-validation weights, Kvasir and CVC-ClinicDB tested
separately): UniSegDiff trains its two stages one after the other (the CFENet for segmentation,
then the DNet on the frozen CFENet), each for ``--epochs`` epochs. Validation during the
diffusion stage fuses ``--val-samples`` masks per image to stay affordable; the test uses the
paper's 20. ORDER and MK-UNet rows are read from ``bench/results/polyps.json`` (same protocol,
same seeds) when its settings match, else trained here.

    .venv/bin/python bench/unisegdiff_polyps.py --epochs 10 --image-size 96 --seeds 0 1

Inference cost: batch-1 latency per image (median of repeats, 1 thread, side by side in one
process), FLOPs of one forward (conv/linear convention) and the wall time of the test pass.
Writes bench/results/unisegdiff_polyps.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/profile.py shadows stdlib
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "polyps"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each UniSegDiff stage")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-samples", type=int, default=2, help="fused masks per image during validation")
    parser.add_argument("--eval-samples", type=int, default=20, help="fused masks per image at test (paper: 20)")
    parser.add_argument("--compare", default=str(ROOT / "bench" / "results" / "polyps.json"),
                        help="bench/polyps.py results holding the ORDER and MK-UNet rows")
    parser.add_argument("--baselines", nargs="+", default=["order", "mk_unet"])
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "unisegdiff_polyps"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    return parser.parse_args()


def seg_config(args: argparse.Namespace, model: str, output_dir: Path, seed: int, model_kwargs: dict):
    from laworder.seg.config import SegTrainConfig
    from laworder.training import LoopConfig

    loop = LoopConfig(output_dir=str(output_dir), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      monitor="val_dice", monitor_mode="max", resume=args.resume, overwrite=not args.resume,
                      progress=False, log_every=20, seed=seed)
    return SegTrainConfig(data=args.data, model=model, image_size=args.image_size, model_kwargs=model_kwargs,
                          split_seed=seed, loop=loop)


def train_unisegdiff(args: argparse.Namespace, out: Path, seed: int) -> tuple[Path, dict]:
    """Both stages for one seed; returns the diffusion run folder and the stages' wall times."""
    from laworder.seg.protocol import run_finished
    from laworder.seg.train import train_segmenter

    feature_dir, diffusion_dir = out / "runs" / "feature" / f"seed{seed}", out / "runs" / "diffusion" / f"seed{seed}"
    seconds = {}
    for name, run_dir, kwargs in (
        ("feature", feature_dir, {"stage": "feature"}),
        ("diffusion", diffusion_dir, {"stage": "diffusion", "feature_weights": str(feature_dir),
                                      "num_samples": args.val_samples}),
    ):
        t0 = time.time()
        if not (args.resume and run_finished(run_dir / "run.json")):
            train_segmenter(seg_config(args, "unisegdiff", run_dir, seed, kwargs))
        # run.json adds up the training time over resumes; a resumed, finished stage costs nothing new
        seconds[f"train_{name}"] = json.loads((run_dir / "run.json").read_text()).get("seconds", time.time() - t0)
        print(f"[unisegdiff] seed {seed} {name} stage: {seconds[f'train_{name}']:.0f} s", flush=True)
    return diffusion_dir, seconds


def latency_ms(model: torch.nn.Module, image_size: int, repeats: int) -> float:
    """Median batch-1 forward time in milliseconds (one warm-up call)."""
    from laworder.seg.profile import median_seconds

    x = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad():
        return 1000 * median_seconds(lambda: model(x), repeats, warmup=1)


def inference_cost(args: argparse.Namespace, diffusion_dir: Path) -> dict:
    """Per-image cost of each method side by side: latency, FLOPs, parameters."""
    from laworder.models import create_model
    from laworder.models.flops import conv_linear_flops, count_parameters
    from laworder.seg.loading import load_segmenter

    usd, _ = load_segmenter(diffusion_dir, "best")
    usd.num_samples = args.eval_samples
    models = {"unisegdiff": usd, **{name: create_model(name).eval() for name in args.baselines}}
    size = (1, 3, args.image_size, args.image_size)
    rows = {}
    for name, model in models.items():
        rows[name] = {"params": count_parameters(model), "gflops_per_image": conv_linear_flops(model, size) / 1e9,
                      "ms_per_image": latency_ms(model, args.image_size, 1 if name == "unisegdiff" else args.latency_repeats)}
    for name, row in rows.items():
        row["latency_vs_order"] = row["ms_per_image"] / rows["order"]["ms_per_image"] if "order" in rows else None
    return rows


@torch.no_grad()
def chain_diagnostics(diffusion_dir: Path, records: list, image_size: int, seed: int = 0) -> dict:
    """Where a staged chain loses accuracy: Dice of the CFENet alone, of the rapid x₀ jump from pure
    noise, of both chains' final masks, and of the DNet's x₀ head on q(x_t | x_0) at a few t
    (the true mask noised, as in training). One sampling run (two chains) per image."""
    from laworder.data.dataset import PairDataset
    from laworder.metrics.overlap import dice_iou_per_image
    from laworder.seg.loading import load_segmenter

    model, _ = load_segmenter(diffusion_dir, "best")
    model.num_samples = 2
    dataset = PairDataset(records, image_size)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))]) > 0.5

    def dice(pred: torch.Tensor) -> float:
        return float(dice_iou_per_image(pred, masks)[0].mean())

    condition = model.cfenet(images)
    first = model.plan.chain_timesteps()[0]
    start = model._sampling_noise(images, 1)[0]
    levels, temb = model.dnet.encode(start, model._timesteps(first, start), condition.features)
    samples = model.sample_masks(images, condition.features)
    out = {"images": len(records), "cfenet": dice(condition.logits > 0),
           "rapid_x0_from_noise": dice(model.dnet.decode_mask(levels, temb) > 0),
           "final_x0_chain": dice(samples[:, :1]), "final_eps_chain": dice(samples[:, 1:2]), "x0_head_on_q_sample": {}}
    target = masks.float() * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    for t in (900, 700, 500, 300, 100):
        alpha_bar = model._alpha_bar(t, target)
        noisy = alpha_bar.sqrt() * target + (1 - alpha_bar).sqrt() * torch.randn(target.shape, generator=generator)
        levels, temb = model.dnet.encode(noisy, model._timesteps(t, noisy), condition.features)
        out["x0_head_on_q_sample"][str(t)] = dice(model.dnet.decode_mask(levels, temb) > 0)
    return out


def baseline_results(args: argparse.Namespace, out: Path) -> tuple[list, str]:
    """ORDER / MK-UNet rows: from bench/polyps.py when its protocol matches, else trained here."""
    from laworder.seg.evaluate import EvalResult
    from laworder.seg.protocol import run_protocol, summarise

    compare = Path(args.compare)
    if compare.is_file():
        payload = json.loads(compare.read_text())
        p = payload["protocol"]
        same = (set(args.seeds) <= set(p["seeds"]) and p["epochs"] == args.epochs and p["image_size"] == args.image_size
                and p["batch_size"] == args.batch_size and p["lr"] == args.lr)
        rows = [r for r in payload["results"] if r["model"] in args.baselines]
        if same and len(rows) == len(args.baselines):  # the same seeds' runs, re-summarised
            results = [summarise(r["model"], list(args.seeds), [EvalResult(subsets=s["subsets"], mean=s["mean"])
                                                                for s in r["per_seed"] if s["seed"] in args.seeds])
                       for r in rows]
            return results, f"seeds {args.seeds} of {compare.relative_to(ROOT)} ({payload['command']})"
    results = []
    for name in args.baselines:
        config = seg_config(args, name, out / "runs" / name, 0, {})
        results.append(run_protocol(config, seeds=args.seeds))
    return results, "trained by this run"


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    from laworder.seg.evaluate import EvalResult, evaluate_records, evaluation_subsets, write_eval
    from laworder.seg.loading import load_segmenter
    from laworder.seg.protocol import format_protocol, summarise

    out = Path(args.out)
    started = time.time()
    test_sets = evaluation_subsets(args.data)
    evals, feature_evals, timings = [], [], {}
    diffusion_dir = None
    for seed in args.seeds:
        diffusion_dir, seconds = train_unisegdiff(args, out, seed)
        eval_json, cost_json = diffusion_dir / "eval.json", diffusion_dir / "eval_seconds.json"
        if args.resume and eval_json.is_file() and cost_json.is_file():  # a killed run keeps finished tests
            ev = EvalResult(**json.loads(eval_json.read_text()))
            seconds.update(json.loads(cost_json.read_text()))
        else:
            model, _ = load_segmenter(diffusion_dir, "best")
            model.num_samples = args.eval_samples
            t0 = time.time()
            ev = evaluate_records(model, test_sets, args.image_size)
            test_seconds = time.time() - t0
            seconds.update(test=test_seconds, test_per_image=test_seconds / sum(len(r) for r in test_sets.values()))
            write_eval(ev, diffusion_dir, f"unisegdiff seed {seed} ({args.eval_samples} samples)")
            cost_json.write_text(json.dumps({k: seconds[k] for k in ("test", "test_per_image")}))
        evals.append(ev)
        timings[f"seed{seed}"] = seconds
        # the stage-1 CFENet is a segmenter on its own: how much does the diffusion stage add?
        feature_dir = diffusion_dir.parent.parent / "feature" / f"seed{seed}"
        if not (args.resume and (feature_dir / "eval.json").is_file()):
            write_eval(evaluate_records(load_segmenter(feature_dir, "best")[0], test_sets, args.image_size),
                       feature_dir, f"unisegdiff CFENet (stage 1) seed {seed}")
        feature_evals.append(EvalResult(**json.loads((feature_dir / "eval.json").read_text())))
        print(f"[unisegdiff] seed {seed}: mean Dice {100 * ev.mean['dice']:.1f}, test {seconds['test']:.0f} s", flush=True)
    usd = summarise("unisegdiff", list(args.seeds), evals)
    cfenet = summarise("unisegdiff CFENet only (stage 1)", list(args.seeds), feature_evals)
    baselines, source = baseline_results(args, out)
    cost = inference_cost(args, diffusion_dir)
    diagnostics = chain_diagnostics(diffusion_dir, test_sets["Kvasir"][:32] if "Kvasir" in test_sets
                                    else next(iter(test_sets.values()))[:32], args.image_size)
    command = "python bench/unisegdiff_polyps.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command,
        "protocol": {"seeds": args.seeds, "epochs_per_stage": args.epochs, "image_size": args.image_size,
                     "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
                     "val_samples": args.val_samples, "eval_samples": args.eval_samples,
                     "optimizer": "AdEMAMix (alpha=2, decoupled wd 1e-4)", "schedule": "cosine to 1e-6",
                     "baselines": source},
        "results": [usd.to_json(), cfenet.to_json()] + [r.to_json() for r in baselines],
        "unisegdiff_seconds": timings,
        "inference_cost": cost,
        "note": args.note,
        "chain_diagnostics": {"run": str(diffusion_dir), **diagnostics},
        "seconds": time.time() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / "unisegdiff_polyps.json").write_text(json.dumps(payload, indent=2))
    md = markdown(payload, format_protocol([usd, cfenet] + baselines))
    (out.parent / "unisegdiff_polyps.md").write_text(md)
    print(md)
    return 0


def markdown(payload: dict, table: str) -> str:
    p = payload["protocol"]
    lines = [f"Command: `{payload['command']}`", "",
             f"CPU scale: {p['image_size']}², {p['epochs_per_stage']} epochs per UniSegDiff stage (CFENet, then DNet), "
             f"batch {p['batch_size']}, lr {p['lr']}, seeds {p['seeds']}; UniSegDiff validates with "
             f"{p['val_samples']} fused samples and is tested with {p['eval_samples']}. ORDER / MK-UNet: {p['baselines']}.",
             "", table, "", "Inference cost per image (batch 1, 1 thread, measured side by side):", "",
             "| Method | Params | GFLOPs / image | ms / image | × ORDER |", "|---|---|---|---|---|"]
    for name, row in payload["inference_cost"].items():
        r = row["latency_vs_order"]
        ratio = "–" if not r else f"{r:.0f}×" if r >= 10 else f"{r:.2f}×"
        lines.append(f"| {name} | {row['params']:,} | {row['gflops_per_image']:.3f} | {row['ms_per_image']:.1f} | {ratio} |")
    lines += ["", "UniSegDiff wall time per seed (s): " + ", ".join(
        f"{seed}: feature {t['train_feature']:.0f}, diffusion {t['train_diffusion']:.0f}, test {t['test']:.0f} "
        f"({t['test_per_image']:.2f} s/image)" for seed, t in payload["unisegdiff_seconds"].items()), ""]
    diag = payload["chain_diagnostics"]
    lines += [f"Where the staged chain loses accuracy (`{diag['run']}`, first {diag['images']} test images, one run = two chains): "
              f"CFENet alone {diag['cfenet']:.3f} Dice; rapid x₀ jump from pure noise {diag['rapid_x0_from_noise']:.3f}; "
              f"final x₀-chain {diag['final_x0_chain']:.3f}, ε-chain {diag['final_eps_chain']:.3f}; DNet x₀ head on the "
              "noised true mask: " + ", ".join(f"t={t}: {v:.3f}" for t, v in diag["x0_head_on_q_sample"].items()) + ".", ""]
    if payload.get("note"):
        lines += [payload["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The synthesis half of ``laworder demo``.

Two parts, reported apart so that neither claims what its images cannot carry:

- the generators shipped in the package (``laworder.synth.load_pretrained``), sampled on a few
  of the demo's test masks: what real synthesis looks like (a picture in the report);
- LAW vs uniform trained for minutes on procedural data, pools from the test masks, mask
  recovery with the demo's frozen ORDER against the chance level, and a small augmentation run.
  Minutes of training do not make images that follow their masks; when the pools do not beat
  chance recovery the section is labelled a plumbing check (it shows the loop runs, not what the
  objectives can do) and the augmentation rows are marked as no evidence of a gain.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from laworder.data.io import read_image, read_mask
from laworder.data.layouts import load_dataset
from laworder.experiments.figures import plot_mask_image_rows, plot_training_curves
from laworder.experiments.mask_recovery import mask_recovery, recovery_per_image
from laworder.seg.evaluate import evaluate_records
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter
from laworder.synth.config import SynthConfig
from laworder.synth.sampler import sample_pool
from laworder.synth.task import train_synth

#: pictures show this many masks
FIGURE_MASKS = 6


def _test_masks(test_dir: Path, count: int) -> tuple[list[str], np.ndarray]:
    files = sorted((Path(test_dir) / "masks").glob("*.png"))[:count]
    return [f.stem for f in files], np.stack([read_mask(f) > 0 for f in files]).astype(np.uint8)


def shipped_section(config, root: Path, test_dir: Path) -> dict[str, Any]:
    """Sample the shipped generators (those of ``config.shipped_generators`` present) on the first
    ``config.shipped_masks`` test masks; a figure and the report lines."""
    from laworder.synth.pretrained import list_generators, load_pretrained

    available = {g.name: g for g in list_generators()}
    names = [name for name in config.shipped_generators if name in available]
    lines = ["## Synthesis with the shipped generators", ""]
    section: dict[str, Any] = {"generators": {}}
    if not names or config.shipped_masks < 1:
        lines += [f"No shipped generator in this install ({', '.join(config.shipped_generators) or 'none asked for'}; "
                  f"found: {', '.join(available) or 'none'}; see `laworder synth list`), so the demo shows no "
                  "synthesis that follows its masks: the procedural run below is a plumbing check.", ""]
        section["markdown"] = lines
        return section
    stems, masks = _test_masks(test_dir, config.shipped_masks)
    rows = {}
    for name in names:
        print(f"[demo] sampling the shipped generator {name} on {len(stems)} test masks")
        started = time.time()
        generator = load_pretrained(name)
        images = generator.generate(masks, seed=config.seed, steps=config.shipped_steps)
        rows[name] = images.permute(0, 2, 3, 1).numpy()
        meta = generator.weights.meta
        section["generators"][name] = {"seconds": time.time() - started, "resolution": generator.resolution,
                                       "dtype": meta.get("dtype"), "sampling": generator.weights.sampling,
                                       "metrics": meta.get("metrics", {}), "card": str(generator.weights.folder / "card.md")}
    size = max(generator.resolution for generator in [available[n] for n in names])
    from laworder.synth.pretrained import masks_to_tensor

    shown = masks_to_tensor(masks, size)[:, 0].numpy()
    figure = plot_mask_image_rows(shown, rows, root / "figures" / "shipped_samples.png", titles=stems)
    section["figure"] = str(figure)
    first = section["generators"][names[0]]
    lines += [f"The generators shipped in the package ({', '.join(f'`{n}`' for n in names)}; trained on real polyp "
              f"images, {first['resolution']}², model cards: `laworder synth list`) on the demo's first {len(stems)} "
              f"procedural test masks (blob shapes, not polyp masks), seed {config.seed}, DDIM "
              f"{first['sampling']['steps'] if config.shipped_steps is None else config.shipped_steps} steps, "
              f"CFG {first['sampling']['guidance_scale']:g}, mask guidance {first['sampling']['mask_guidance']:g}:", "",
              "![shipped generators](figures/shipped_samples.png)", ""]
    for name, row in section["generators"].items():
        scores = "; ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in _flat(row["metrics"])[:6])
        lines.append(f"- `{name}`: {row['seconds']:.0f} s for {len(stems)} images here"
                     f"{f'; its card reports {scores}' if scores else ''}.")
    section["markdown"] = lines + [""]
    return section


def _flat(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key} / ")
        elif isinstance(value, (int, float, str)):
            out.append((f"{prefix}{key}", value))
    return out


def beats_chance(per_image: list[dict]) -> dict[str, Any]:
    """Recovery Dice against the chance Dice (each prediction scored against another pair's mask):
    the mean paired difference with a normal 95 % interval; ``follows_masks`` when it lies above 0."""
    dice = np.array([r["dice"] for r in per_image])
    chance = np.array([r["chance_dice"] for r in per_image])
    diff = dice - chance
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    return {"dice": float(dice.mean()), "chance_dice": float(chance.mean()), "difference": float(diff.mean()),
            "ci95": [float(diff.mean() - half), float(diff.mean() + half)], "follows_masks": bool(diff.mean() - half > 0)}


def _pool_pixels(pool: Path, stems: list[str]) -> np.ndarray:
    return np.stack([read_image(pool / "images" / f"{stem}.png", 3).astype(np.float32) / 255.0 for stem in stems])


def run_synth_demo(config, root: Path, train_dir: Path, test_dir: Path, segmenter_run: Path) -> dict[str, Any]:
    """Returns the report section (numbers + markdown lines)."""
    section: dict[str, Any] = {"objectives": {}, "augmentation": {}}
    runs = {}
    for objective in config.synth_objectives:
        print(f"[demo] training the diffusion backbone with '{objective}' weighting ({config.synth_steps} steps)")
        synth = SynthConfig(data=str(train_dir), objective=objective, resolution=config.synth_resolution,
                            backbone_kwargs=dict(config.synth_backbone_kwargs))
        synth.loop.output_dir = str(root / "synth" / objective)
        synth.loop.max_steps = config.synth_steps
        synth.loop.batch_size = config.synth_batch_size
        synth.loop.lr = config.synth_lr
        synth.loop.seed = config.seed
        synth.loop.checkpoint_every = 0
        synth.loop.snapshot_every = max(1, config.synth_steps // 2)
        synth.loop.progress = config.progress
        synth.loop.overwrite = config.overwrite
        run_dir = train_synth(synth)
        runs[objective] = run_dir
        print(f"[demo] sampling a pool for '{objective}' from {config.num_test} test masks "
              f"(DDIM {config.sample_steps} steps, CFG {config.guidance_scale})")
        pool = sample_pool(run_dir, str(test_dir), root / "pools" / objective, steps=config.sample_steps,
                           guidance_scale=config.guidance_scale, seed=config.seed, batch_size=16,
                           overwrite=True, progress=config.progress)
        recovery = mask_recovery(segmenter_run, pool)
        recovery.pop("per_image", None)
        chance = beats_chance(recovery_per_image(segmenter_run, pool))
        section["objectives"][objective] = {"run_dir": str(run_dir), "pool": str(pool), "mask_recovery": recovery,
                                            "chance": chance}
    plot_training_curves(runs, root / "figures" / "synth_curves.png", keys=("loss",))
    stems, masks = _test_masks(test_dir, FIGURE_MASKS)
    rows = {f"{name} ({config.synth_steps} steps)": _pool_pixels(Path(row["pool"]), stems)
            for name, row in section["objectives"].items()}
    plot_mask_image_rows(masks, rows, root / "figures" / "synth_pool_samples.png", titles=stems)
    section["follows_masks"] = any(row["chance"]["follows_masks"] for row in section["objectives"].values())

    # Downstream augmentation: the same segmenter on real only vs real + the LAW pool.
    base_config = json.loads((Path(segmenter_run) / "data.json").read_text())
    test_sets = {"procedural-test": load_dataset(str(test_dir)).train}
    from laworder.seg.loading import load_run_config

    seg_config = load_run_config(segmenter_run)
    seg_config.loop.progress = config.progress
    seg_config.loop.overwrite = True
    seg_config.loop.resume = False
    pool_name = "law" if "law" in section["objectives"] else next(iter(section["objectives"]))
    # The augmentation pool is conditioned on *training* masks: a pool drawn from the test masks
    # would leak the test set's lesion shapes into training.
    print(f"[demo] sampling a '{pool_name}' augmentation pool from {config.augment_pool_size} training masks")
    augment_pool = sample_pool(runs[pool_name], str(train_dir), root / "pools" / f"{pool_name}_train",
                               steps=config.sample_steps, guidance_scale=config.guidance_scale, seed=config.seed,
                               batch_size=16, limit=config.augment_pool_size, overwrite=True, progress=config.progress)
    section["augmentation_pool"] = str(augment_pool)
    section["augmentation_pool_follows_masks"] = section["objectives"][pool_name]["chance"]["follows_masks"]
    for arm, extra in (("real", []), (f"real+{pool_name}", [str(augment_pool)])):
        if not extra and not seg_config.extra_train:
            # real only is the segmenter trained above: the same config and seed give the same run
            # (checked: bit-identical losses), so it is scored, not trained a second time (~80 s)
            print(f"[demo] augmentation arm '{arm}': the segmenter trained above ({segmenter_run})")
            model, _ = load_segmenter(segmenter_run, "best")
            result = evaluate_records(model, test_sets, seg_config.image_size)
            section["augmentation"][arm] = {"test": result.mean, "num_train": base_config.get("num_train"), "num_extra": 0,
                                            "run_dir": str(segmenter_run)}
            continue
        arm_config = copy.deepcopy(seg_config)
        arm_config.extra_train = extra
        arm_config.loop.output_dir = str(root / "augmentation" / arm.replace("+", "_plus_"))
        print(f"[demo] augmentation arm '{arm}'")
        run = train_segmenter(arm_config)
        model, _ = load_segmenter(run.run_dir, "best")
        result = evaluate_records(model, test_sets, seg_config.image_size)
        section["augmentation"][arm] = {"test": result.mean, "num_train": run.num_train, "num_extra": run.num_extra,
                                        "run_dir": str(run.run_dir)}
    section["segmenter_train_size"] = base_config.get("num_train")
    section["markdown"] = _markdown(section, config)
    return section


def _markdown(section: dict[str, Any], config) -> list[str]:
    plumbing = not section["follows_masks"]
    title = ("## Synthesis plumbing check (built-in backbone, minutes of training on procedural data)" if plumbing else
             "## Synthesis trained here (built-in ControlNet backbone, procedural data)")
    lines = [title, ""]
    if plumbing:
        lines += [f"**Not a comparison of the objectives.** {config.synth_steps} training steps at "
                  f"{config.synth_resolution}² give images that do not follow their masks: no objective's mask recovery "
                  "beats chance (the same predictions scored against another image's mask). This part shows that "
                  "training, sampling, mask recovery and augmentation run end to end, nothing more; the shipped "
                  "generators above show what trained synthesis looks like.", ""]
    lines += [f"{config.synth_steps} training steps at {config.synth_resolution}² per objective; pools sampled from the "
              f"{config.num_test} held-out test masks with DDIM {config.sample_steps} steps, CFG {config.guidance_scale}. "
              "Mask recovery: the demo's frozen ORDER (trained on real images only) segments the generated images; "
              "Dice/IoU against the conditioning masks (paper Table 3 protocol); chance: the same predictions against "
              "the next image's mask; 95 % interval of the paired difference.", "",
              "| Objective | Mask-recovery Dice | Mask-recovery IoU | Chance Dice | Dice − chance [95 % CI] | Follows its masks | n |",
              "|---|---|---|---|---|---|---|"]
    for name, row in section["objectives"].items():
        r, c = row["mask_recovery"], row["chance"]
        lines.append(f"| {name} | {r['dice']['mean']:.3f} ± {r['dice']['std']:.3f} | {r['iou']['mean']:.3f} ± "
                     f"{r['iou']['std']:.3f} | {c['chance_dice']:.3f} | {c['difference']:+.3f} [{c['ci95'][0]:+.3f}, "
                     f"{c['ci95'][1]:+.3f}] | {'yes' if c['follows_masks'] else 'no (chance level)'} | {r['count']} |")
    lines += ["", "Generated images (first row: the conditioning test masks):", "",
              "![pool samples](figures/synth_pool_samples.png)", "",
              "![diffusion training loss](figures/synth_curves.png)", ""]
    arms = list(section["augmentation"].items())
    follows = section["augmentation_pool_follows_masks"]
    if follows:
        lines += ["## Downstream augmentation (one seed; validation on real images only)", "",
                  f"The synthetic pool is sampled from {config.augment_pool_size} *training* masks (never the test masks). "
                  "One training seed per row: a difference smaller than the spread between seeds is no evidence.", ""]
    else:
        lines += ["## Augmentation plumbing check (not a result)", "",
                  f"The synthetic pool ({config.augment_pool_size} images from *training* masks) does not follow its masks, "
                  "so these rows only show that training on real + synthetic pairs runs. They cannot show a gain: "
                  "a difference between them is the noise of one more training run with other data, not an effect of "
                  "synthesis.", ""]
    lines += ["| Training set | Train pairs (real + synthetic) | Test Dice | Test IoU |", "|---|---|---|---|"]
    for arm, row in arms:
        label = arm if follows else f"{arm} (synthetic images at chance: plumbing)" if row["num_extra"] else arm
        lines.append(f"| {label} | {row['num_train']} + {row['num_extra']} | {100 * row['test']['dice']:.1f} | "
                     f"{100 * row['test']['iou']:.1f} |")
    lines.append("")
    return lines

"""The synthesis half of ``laworder demo``: LAW vs uniform on the built-in backbone, pools,
mask recovery with the demo's frozen segmenter, and a small augmentation run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from laworder.experiments.figures import plot_training_curves
from laworder.seg.evaluate import evaluate_records
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter
from laworder.synth.config import SynthConfig
from laworder.synth.sampler import sample_pool
from laworder.synth.task import train_synth
from laworder.data.layouts import load_dataset
from laworder.experiments.mask_recovery import mask_recovery


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
        section["objectives"][objective] = {"run_dir": str(run_dir), "pool": str(pool), "mask_recovery": recovery}
    plot_training_curves(runs, root / "figures" / "synth_curves.png", keys=("loss",))

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
    for arm, extra in (("real", []), (f"real+{pool_name}", [str(augment_pool)])):
        arm_config = copy.deepcopy(seg_config)
        arm_config.extra_train = extra
        arm_config.loop.output_dir = str(root / "augmentation" / arm.replace("+", "_plus_"))
        print(f"[demo] augmentation arm '{arm}'")
        run = train_segmenter(arm_config)
        model, _ = load_segmenter(run.run_dir, "best")
        result = evaluate_records(model, test_sets, seg_config.image_size)
        section["augmentation"][arm] = {"test": result.mean, "num_train": run.num_train, "num_extra": run.num_extra}
    section["segmenter_train_size"] = base_config.get("num_train")
    section["markdown"] = _markdown(section, config)
    return section


def _markdown(section: dict[str, Any], config) -> list[str]:
    lines = ["## Synthesis (built-in ControlNet backbone, procedural data)", "",
             f"{config.synth_steps} training steps at {config.synth_resolution}² per objective; pools sampled from the "
             f"{config.num_test} held-out test masks with DDIM {config.sample_steps} steps, CFG {config.guidance_scale}. "
             "Mask recovery: the demo's frozen ORDER (trained on real images only) segments the generated images; "
             "Dice/IoU against the conditioning masks (paper Table 3 protocol).", "",
             "| Objective | Mask-recovery Dice | Mask-recovery IoU | n |", "|---|---|---|---|"]
    for name, row in section["objectives"].items():
        r = row["mask_recovery"]
        lines.append(f"| {name} | {r['dice']['mean']:.3f} ± {r['dice']['std']:.3f} | {r['iou']['mean']:.3f} ± {r['iou']['std']:.3f} | {r['count']} |")
    lines += ["", "![diffusion training loss](figures/synth_curves.png)", "",
              "## Downstream augmentation (one seed; validation on real images only)", "",
             f"The synthetic pool is sampled from {config.augment_pool_size} *training* masks (never the test masks).", "",
              "| Training set | Train pairs (real + synthetic) | Test Dice | Test IoU |", "|---|---|---|---|"]
    for arm, row in section["augmentation"].items():
        lines.append(f"| {arm} | {row['num_train']} + {row['num_extra']} | {100 * row['test']['dice']:.1f} | {100 * row['test']['iou']:.1f} |")
    lines.append("")
    return lines

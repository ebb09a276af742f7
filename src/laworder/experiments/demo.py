"""``laworder demo`` (what ``make demo`` runs): the whole loop on built-in procedural data, on CPU.

Segmentation: MK-UNet and ORDER trained with the paper recipe (shortened) and scored on a
held-out procedural test set. Synthesis (when the synth stage is installed): the default
diffusion backbone with ``uniform`` and ``law`` weighting, pools sampled from the test
masks, mask recovery with the trained ORDER, and a small augmentation run. Ends with a
report (markdown + JSON + PNG) whose path it prints.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laworder.config import save_config, to_dict
from laworder.data.layouts import load_dataset
from laworder.data.procedural import generate_procedural
from laworder.experiments.figures import plot_training_curves
from laworder.experiments.plots import predictions_grid
from laworder.experiments.report import REPORT_HTML, markdown_page
from laworder.seg.config import SegTrainConfig
from laworder.seg.evaluate import EvalResult, evaluate_records, format_markdown
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig


#: a segmenter below this test Dice is reported as having learned nothing
LEARNED_NOTHING_DICE = 0.1


@dataclass
class DemoConfig:
    output_dir: str = "demo_runs"
    image_size: int = 64
    num_train: int = 200
    num_test: int = 48
    data_seed: int = 0
    seg_models: list[str] = field(default_factory=lambda: ["mk_unet", "order"])
    seg_epochs: int = 20
    seg_batch_size: int = 16
    seg_lr: float = 3e-3  # the paper's 1e-4 is for 100 epochs on ~1.8K images; the demo has minutes
    # MK-UNet's default `nonnegative` head init starts every logit >= 0 on ReLU features; at the demo's
    # lr the first steps push those features to zero and the model predicts nothing for the whole run
    # (measured: val Dice 0.04 after 20 epochs, loss flat at 1.48); `balanced` learns (0.45 by epoch 9)
    seg_model_kwargs: dict[str, dict[str, Any]] = field(default_factory=lambda: {"mk_unet": {"head_init": "balanced"}})
    seed: int = 0
    synth: bool = True
    synth_objectives: list[str] = field(default_factory=lambda: ["uniform", "law"])
    synth_resolution: int = 32
    # A 1.45M-parameter variant of the built-in backbone keeps the demo within minutes on 2 cores.
    synth_backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "block_out_channels": [16, 32, 64], "attention_levels": [2]})
    synth_steps: int = 150
    synth_batch_size: int = 8
    synth_lr: float = 5e-4
    augment_pool_size: int = 64
    # generators shipped in the package, sampled on the first `shipped_masks` test masks (those present)
    shipped_generators: list[str] = field(default_factory=lambda: ["polyps/law", "polyps/uniform"])
    shipped_masks: int = 6
    shipped_steps: int | None = None  # None: the card's (DDIM 50)
    sample_steps: int = 20  # the paper samples with 50; fewer keep the demo within minutes
    guidance_scale: float = 3.0  # the paper's 10.0 saturates a backbone trained for minutes
    progress: bool = True
    overwrite: bool = True


def _seg_config(demo: DemoConfig, model: str, data: Path, out: Path) -> SegTrainConfig:
    loop = LoopConfig(output_dir=str(out), epochs=demo.seg_epochs, batch_size=demo.seg_batch_size, lr=demo.seg_lr,
                      seed=demo.seed, monitor="val_dice", monitor_mode="max", progress=demo.progress,
                      overwrite=demo.overwrite, log_every=5)
    return SegTrainConfig(data=str(data), model=model, image_size=demo.image_size, loop=loop,
                          model_kwargs=dict(demo.seg_model_kwargs.get(model, {})))


def run_demo(config: DemoConfig | None = None) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    config = config or DemoConfig()
    from laworder.config import check_seed
    from laworder.data.procedural import check_procedural_args

    check_seed("seed", config.seed)  # before the output folder is made
    check_seed("data_seed", config.data_seed)
    check_procedural_args(config.num_train, config.image_size, config.data_seed, where="data")
    started = time.time()
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if config.overwrite:
        # the generated data follows the config: regenerate it, but delete only folders the demo
        # generated (procedural.json inside), never a data/ folder of the user's
        for sub in ("train", "test"):
            folder = root / "data" / sub
            if (folder / "procedural.json").is_file() and set(p.name for p in folder.iterdir()) <= {
                    "images", "masks", "procedural.json", "labels.json"}:
                shutil.rmtree(folder)
    save_config(config, root / "demo_config.yaml")
    train_dir = generate_procedural(root / "data" / "train", config.num_train, config.image_size, config.data_seed)
    # Test images continue the training sequence: disjoint by construction, distinct stems.
    test_dir = generate_procedural(root / "data" / "test", config.num_test, config.image_size, config.data_seed,
                                   start_index=config.num_train)
    test_sets = {"procedural-test": load_dataset(str(test_dir)).train}

    report: dict = {"config": to_dict(config), "segmentation": {}, "commands": ["laworder demo"]}
    models, runs = {}, {}
    for name in config.seg_models:
        print(f"[demo] training {name} on {config.num_train} procedural images ({config.seg_epochs} epochs)")
        run = train_segmenter(_seg_config(config, name, train_dir, root / "seg" / name))
        model, _ = load_segmenter(run.run_dir, "best")
        result: EvalResult = evaluate_records(model, test_sets, config.image_size)
        report["segmentation"][name] = {"test": result.mean, "best_val_dice": run.fit.best_metric,
                                        "params": sum(p.numel() for p in model.parameters()), "run_dir": str(run.run_dir),
                                        "model_kwargs": dict(config.seg_model_kwargs.get(name, {}))}
        models[name], runs[name] = model, run.run_dir
    figures = root / "figures"
    plot_training_curves(runs, figures / "seg_curves.png", keys=("loss", "val_dice"))
    predictions_grid(models, load_dataset(str(test_dir)).train[:4], config.image_size, figures / "seg_qualitative.png")

    if config.synth:
        from laworder.experiments.demo_synth import run_synth_demo, shipped_section  # needs the synth stage

        report["shipped"] = shipped_section(config, root, test_dir)

        report["synthesis"] = run_synth_demo(config, root, train_dir, test_dir, runs.get("order") or next(iter(runs.values())))
    report["seconds"] = time.time() - started
    (root / "report.json").write_text(json.dumps(report, indent=2, default=str))
    path = root / "report.md"
    path.write_text(_markdown(report))
    (root / REPORT_HTML).write_text(markdown_page(path.read_text(), "laworder demo"), encoding="utf-8")
    return path


def _markdown(report: dict) -> str:
    lines = ["# laworder demo report", "",
             "Made by `laworder demo` (config: `demo_config.yaml`); built-in procedural data, CPU.", "",
             "## Segmentation (held-out procedural test set, threshold 0.5)", "",
             "| Model | Params | Test Dice | Test IoU | Best val Dice |", "|---|---|---|---|---|"]
    for name, row in report["segmentation"].items():
        kwargs = ", ".join(f"{k}={v}" for k, v in row.get("model_kwargs", {}).items())
        lines.append(f"| {name}{f' ({kwargs})' if kwargs else ''} | {row['params']:,} | {100 * row['test']['dice']:.1f} | "
                     f"{100 * row['test']['iou']:.1f} | {100 * (row['best_val_dice'] or 0):.1f} |")
    lines.append("")
    for name, row in report["segmentation"].items():
        if row["test"]["dice"] < LEARNED_NOTHING_DICE:
            lines.append(f"**{name} learned nothing in this run** (test Dice {100 * row['test']['dice']:.1f} %, below "
                         f"{100 * LEARNED_NOTHING_DICE:.0f} %): it predicts (almost) no lesion pixel. Its curves are "
                         "below; a flat loss with no positive validation pixel usually means a dead output head "
                         "(try `model_kwargs.head_init=balanced`) or a learning rate too high or too low.")
            lines.append("")
    lines += ["![training curves](figures/seg_curves.png)", "", "![qualitative](figures/seg_qualitative.png)", ""]
    if report.get("shipped"):
        lines += report["shipped"].get("markdown", [])
    synth = report.get("synthesis")
    if synth:
        lines += synth.get("markdown", [])
    lines += ["", f"Total time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)

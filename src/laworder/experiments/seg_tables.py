"""Segmentation tables: ``seg_compare`` (Tables 7, 8, 10) and ``runtime`` (Table 9)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laworder.errors import ConfigError
from laworder.experiments.base import (
    EXPERIMENTS, Experiment, RunContext, markdown_table, protocol_subsets, seed_run_dirs, seg_row, summary_cell,
)
from laworder.models import MODELS, create_model
from laworder.seg.config import SegTrainConfig


@dataclass
class SegVariant:
    """One table row: a registered segmenter and its keyword arguments (e.g. ORDER's skip_indices)."""

    name: str = ""
    model: str = "order"
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def check_variants(variants: list[SegVariant]) -> None:
    """Unique, non-empty names and registered models (the error lists the known ones)."""
    if not variants:
        raise ConfigError("variants: give at least one {name, model, model_kwargs} row")
    names = [v.name for v in variants]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"variants need distinct non-empty names, got {names}")
    for variant in variants:
        MODELS.get(variant.model)


@dataclass
class SegCompareConfig:
    """Several segmenters (or one segmenter with several skip placements) under the seeded protocol.

    ``seg`` is the shared recipe (data, image size, loop: paper Table 12 defaults); each variant
    replaces ``seg.model`` / ``seg.model_kwargs``. ``test_data`` defaults to ``seg.data``'s test subsets.
    """

    output_dir: str = "runs/exp/seg_compare"
    description: str = ""
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    variants: list[SegVariant] = field(default_factory=lambda: [
        SegVariant("MK-UNet", "mk_unet"), SegVariant("ORDER[0,1]", "order", {"skip_indices": [0, 1]})])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_data: str | None = None
    subsets: list[str] | None = None


def model_cost(variant: SegVariant, image_size: int, channels: int) -> dict[str, float]:
    """Parameters and conv/linear GFLOPs (the paper's convention) at ``image_size``²."""
    from laworder.models.flops import conv_linear_flops, count_parameters

    model = create_model(variant.model, in_channels=channels, **variant.model_kwargs)
    return {"params": count_parameters(model),
            "gflops_conv_linear": conv_linear_flops(model, (1, channels, image_size, image_size)) / 1e9}


@EXPERIMENTS.register("seg_compare")
class SegCompare(Experiment):
    """Tables 7, 8 and 10: segmenters or skip placements, seeds × test subsets, mean ± std."""

    config_class = SegCompareConfig
    title = "Segmentation comparison (paper Tables 7, 8, 10)"

    def validate(self, config: SegCompareConfig) -> None:
        from laworder.seg.validate import check_seg_config

        check_variants(config.variants)
        if not config.seeds:
            raise ConfigError("seeds: give at least one seed")
        for variant in config.variants:  # each row's recipe (image size against its model too)
            check_seg_config(dataclasses.replace(config.seg, model=variant.model, model_kwargs=dict(variant.model_kwargs)))

    def run(self, config: SegCompareConfig, context: RunContext) -> dict:
        rows = []
        for variant in config.variants:
            seg = dataclasses.replace(config.seg, model=variant.model, model_kwargs=dict(variant.model_kwargs))
            row = seg_row(context, variant.name, seg, config.seeds, config.test_data, config.subsets)
            row.update(model=variant.model, model_kwargs=variant.model_kwargs,
                       **model_cost(variant, config.seg.image_size, config.seg.channels))
            rows.append(row)
        return {"rows": rows, "image_size": config.seg.image_size}

    def tables(self, results: dict) -> list[str]:
        rows = results["rows"]
        subsets = protocol_subsets(rows[0]["protocol"])
        head = ["Method", "Params", f"GFLOPs ({results['image_size']}², conv/linear)"]
        head += [f"{s} {m}" for s in subsets for m in ("Dice", "IoU")] + ["Mean Dice", "Mean IoU"]
        keys = [f"{s}/{m}" for s in subsets for m in ("dice", "iou")] + ["mean/dice", "mean/iou"]
        cells = [[r["label"], f"{r['params']:,}", f"{r['gflops_conv_linear']:.3f}"]
                 + [summary_cell(r["protocol"], k) for k in keys] for r in rows]
        seeds = rows[0]["seeds"]
        return markdown_table(head, cells) + [
            "", f"Dice/IoU in %, mean ± std over seeds {seeds} (one 90/10 train/val split per seed, best-val "
            "checkpoint, test subsets scored separately, mean over subsets)."]

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        from laworder.experiments.figures import plot_training_curves
        from laworder.experiments.plots import plot_gate_values, gate_values_of_runs

        runs = seed_run_dirs(results["rows"])
        figures = [("Training curves (first seed)", plot_training_curves(runs, figure_dir / "training_curves.png"))]
        gates = gate_values_of_runs(runs)
        if gates:
            figures.append(("ORDER confidence gates on test images (first seed)",
                            plot_gate_values(gates, figure_dir / "gate_values.png")))
        return figures


@dataclass
class RuntimeConfig:
    """Table 9: params, FLOPs (two conventions), latency, throughput and peak memory per model."""

    output_dir: str = "runs/exp/runtime"
    description: str = ""
    variants: list[SegVariant] = field(default_factory=lambda: [
        SegVariant("MK-UNet", "mk_unet"), SegVariant("ORDER[0,1]", "order", {"skip_indices": [0, 1]}),
        SegVariant("ORDER[2,1]", "order", {"skip_indices": [2, 1]})])
    image_size: int = 256
    batch_size: int = 16
    device: str = "cpu"
    repeats: int = 20
    warmup: int = 5
    onnx: bool = False


@EXPERIMENTS.register("runtime")
class Runtime(Experiment):
    """Table 9: runtime profile of each variant (relative comparisons on one machine)."""

    config_class = RuntimeConfig
    title = "Runtime profile (paper Table 9)"

    def validate(self, config: RuntimeConfig) -> None:
        check_variants(config.variants)

    def run(self, config: RuntimeConfig, context: RunContext) -> dict:
        import platform

        import torch

        from laworder.seg.profile import profile_model

        torch.manual_seed(0)
        rows = []
        for variant in config.variants:
            row = profile_model(variant.model, image_size=config.image_size, batch_size=config.batch_size,
                                device=config.device, repeats=config.repeats, warmup=config.warmup,
                                onnx=config.onnx, model_kwargs=variant.model_kwargs)
            rows.append({**dataclasses.asdict(row), "label": variant.name, "model_kwargs": variant.model_kwargs})
        machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
        return {"rows": rows, "machine": machine, "image_size": config.image_size}

    def tables(self, results: dict) -> list[str]:
        from laworder.seg.profile import ProfileRow, format_table

        fields = {f.name for f in dataclasses.fields(ProfileRow)}
        rows = [ProfileRow(**{**{k: v for k, v in r.items() if k in fields}, "model": r["label"]}) for r in results["rows"]]
        first = results["rows"][0]
        relative = ", ".join(f"{r['label']} {r['ms_per_img'] / first['ms_per_img']:.2f}×" for r in results["rows"])
        return format_table(rows).rstrip("\n").splitlines() + [
            "", f"Latency relative to {first['label']}: {relative}. {results['image_size']}² inputs on "
            f"{first['device']} ({results['machine']['platform']}, torch {results['machine']['torch']}, "
            f"{results['machine']['threads']} threads); timings are medians and only comparable side by side."]


__all__ = ["RuntimeConfig", "SegCompareConfig", "SegVariant", "check_variants", "model_cost"]

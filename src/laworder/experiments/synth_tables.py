"""Synthesis tables: ``mask_recovery`` (Table 3) and ``law_ablation`` (Table 6).

Both score synthetic pools with one frozen segmenter trained on the real training images
(``segmenter``: a finished ``laworder seg train`` run, or trained here from ``seg``), on the
conditioning masks that produced each image (``laworder.experiments.mask_recovery``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from laworder.config import deep_merge
from laworder.data.io import write_mask
from laworder.data.layouts import load_dataset
from laworder.errors import ConfigError, NonFiniteLossError
from laworder.experiments.base import EXPERIMENTS, Experiment, RunContext, fmt, markdown_table, slug
from laworder.experiments.pools import (
    Pool, SampleSettings, pool_summary, resolve_pools, sample_recipe_pool, synth_config, train_pool_model,
    validate_pools,
)
from laworder.experiments.mask_recovery import filter_pool, mask_recovery
from laworder.metrics.overlap import mean_std
from laworder.models import MODELS
from laworder.seg.config import SegTrainConfig


def _held_out_sample() -> SampleSettings:
    return SampleSettings(split="test")


def frozen_segmenter(context: RunContext, segmenter: str, seg: SegTrainConfig) -> str:
    """The frozen segmenter's run folder: ``segmenter`` as given, or one trained now from ``seg``
    on the real training images (``<run_dir>/segmenter``; reused with ``--resume``)."""
    if segmenter:
        return segmenter
    from laworder.seg.train import train_segmenter

    config = copy.deepcopy(seg)
    config.loop.output_dir = str(context.path("segmenter"))
    config.extra_train, config.extra_limit = [], None
    weights = context.path("segmenter", "model", "best", "model.safetensors")
    if not (context.resume and weights.is_file()):
        config.loop.overwrite = context.overwrite and not context.resume
        config.loop.resume = context.resume
        config.loop.progress = config.loop.progress and context.progress
        train_segmenter(config)
    return config.loop.output_dir


def _save_predictions(segmenter: str, pool: Pool, stems: list[str], out_dir: Path, image_size: int) -> None:
    """The frozen segmenter's masks for a few pool images (for the report's qualitative grid)."""
    from laworder.data.dataset import PairDataset
    from laworder.seg.loading import load_segmenter

    model, config = load_segmenter(segmenter, "best")
    wanted = set(stems)
    records = [r for r in load_dataset(str(pool.path), "pairs").train if r.stem in wanted]
    dataset = PairDataset(records, image_size, config.channels)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        predictions = torch.sigmoid(model(images))[:, 0] >= config.threshold
    for record, prediction in zip(records, predictions.numpy()):
        write_mask(out_dir / f"{record.stem}.png", prediction)


def score_pools(context: RunContext, segmenter: str, pools: list[Pool], image_size: int | None,
                qualitative: int) -> list[dict]:
    """One row per label: per pool (sampling run) Dice/IoU over images; with several pools per
    label, mean ± std over the sampling runs."""
    by_label: dict[str, list[Pool]] = {}
    for pool in pools:
        by_label.setdefault(pool.label, []).append(pool)
    rows = []
    for label, group in by_label.items():
        runs = [mask_recovery(segmenter, pool.path, image_size) for pool in group]
        if len(runs) > 1:
            dice, iou, spread = mean_std(r["dice"]["mean"] for r in runs), mean_std(r["iou"]["mean"] for r in runs), "sampling runs"
        else:
            dice, iou, spread = (runs[0]["dice"]["mean"], runs[0]["dice"]["std"]), (runs[0]["iou"]["mean"], runs[0]["iou"]["std"]), "images"
        predictions = context.path("qualitative", slug(label))
        stems = [row["stem"] for row in runs[0]["per_image"][:qualitative]]
        if stems:
            _save_predictions(segmenter, group[0], stems, predictions, runs[0]["image_size"])
        rows.append({"label": label, "method": runs[0]["method"], "pools": [pool_summary(p) for p in group],
                     "runs": runs, "dice": {"mean": dice[0], "std": dice[1]}, "iou": {"mean": iou[0], "std": iou[1]},
                     "spread": spread, "count": sum(r["count"] for r in runs), "qualitative_dir": str(predictions),
                     "image_size": runs[0]["image_size"]})
    return rows


def real_reference(segmenter: str) -> dict:
    """The frozen segmenter on the real test images: the ceiling mask recovery can reach."""
    from laworder.seg.evaluate import evaluate_records, evaluation_subsets
    from laworder.seg.loading import load_segmenter

    model, config = load_segmenter(segmenter, "best")
    result = evaluate_records(model, evaluation_subsets(config.data, config.layout), config.image_size,
                              config.channels, config.threshold)
    return {"data": config.data, "subsets": result.subsets, "mean": result.mean}


@dataclass
class MaskRecoveryConfig:
    """Table 3: mask-recovery Dice/IoU of each pool under one frozen segmenter.

    ``pools``: label -> pool folder, list of folders (several sampling runs) or recipe (see
    ``laworder.experiments.pools``; recipes sample held-out masks by default, ``sample.split: test``,
    once per ``sampling_seeds``). ``filter_min_dice`` (beyond the paper): also write each pool
    filtered at that Dice and report how many pairs survive.
    """

    output_dir: str = "runs/exp/mask_recovery"
    description: str = ""
    segmenter: str = ""
    seg: SegTrainConfig = field(default_factory=lambda: SegTrainConfig(model="mk_unet"))
    pools: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    sample: SampleSettings = field(default_factory=_held_out_sample)
    sampling_seeds: list[int] = field(default_factory=lambda: [0])
    image_size: int | None = None
    filter_min_dice: float | None = None
    real_reference: bool = True
    qualitative: int = 4


def _check_segmenter(segmenter: str, seg: SegTrainConfig) -> None:
    if segmenter:
        from laworder.seg.loading import load_run_config

        load_run_config(segmenter)  # MissingWeightsError naming the folder
    else:
        MODELS.get(seg.model)


@EXPERIMENTS.register("mask_recovery")
class MaskRecovery(Experiment):
    """Table 3: do generated lesions land where the conditioning masks say?"""

    config_class = MaskRecoveryConfig
    title = "Mask recovery (paper Table 3)"

    def validate(self, config: MaskRecoveryConfig) -> None:
        _check_segmenter(config.segmenter, config.seg)
        if not config.pools:
            raise ConfigError("pools: give at least one pool folder or recipe")
        validate_pools(config.pools, config.synth, config.sample)
        if config.filter_min_dice is not None and not 0.0 <= config.filter_min_dice <= 1.0:
            raise ConfigError(f"filter_min_dice must be in [0, 1], got {config.filter_min_dice}")

    def run(self, config: MaskRecoveryConfig, context: RunContext) -> dict:
        segmenter = frozen_segmenter(context, config.segmenter, config.seg)
        pools = resolve_pools(context, config.pools, config.synth, config.sample, config.seg.data, config.sampling_seeds)
        rows = score_pools(context, segmenter, pools, config.image_size, config.qualitative)
        results: dict[str, Any] = {"segmenter": segmenter, "rows": rows}
        if config.filter_min_dice is not None:
            results["filtered"] = [self._filtered(context, segmenter, config.filter_min_dice, row) for row in rows]
        if config.real_reference:
            results["reference"] = real_reference(segmenter)
        return results

    @staticmethod
    def _filtered(context: RunContext, segmenter: str, min_dice: float, row: dict) -> dict:
        first = row["runs"][0]
        out = filter_pool(first["pool"], segmenter, min_dice, context.path("pools_filtered", slug(row["label"])),
                          overwrite=True, scores=first)
        kept = [r for r in first["per_image"] if r["dice"] >= min_dice]
        dice = mean_std(r["dice"] for r in kept) if kept else (math.nan, math.nan)
        return {"label": row["label"], "min_dice": min_dice, "path": str(out), "kept": len(kept),
                "of": first["count"], "dice": {"mean": dice[0], "std": dice[1]}}

    def tables(self, results: dict) -> list[str]:
        head = ["Method", "Mask Dice ↑", "Mask IoU ↑", "Pairs", "± over"]
        cells = [[r["label"], fmt(r["dice"]["mean"], r["dice"]["std"], 1.0, 3), fmt(r["iou"]["mean"], r["iou"]["std"], 1.0, 3),
                  str(r["count"]), r["spread"]] for r in results["rows"]]
        lines = markdown_table(head, cells) + [
            "", f"Frozen segmenter `{results['segmenter']}` (trained on the real training images only) predicts on "
            "every generated image; Dice/IoU against the conditioning mask (fractions)."]
        reference = results.get("reference")
        if reference:
            lines.append(f"Same segmenter on the real test images ({reference['data']}): Dice "
                         f"{reference['mean']['dice']:.3f}, IoU {reference['mean']['iou']:.3f} (the ceiling for mask recovery).")
        if results.get("filtered"):
            lines += ["", "Mask-recovery filter (beyond the paper):", ""]
            lines += markdown_table(["Pool", "Min Dice", "Kept", "Dice of kept pairs", "Filtered pool"], [
                [f["label"], f"{f['min_dice']:g}", f"{f['kept']} / {f['of']}", fmt(f["dice"]["mean"], f["dice"]["std"], 1.0, 3),
                 f"`{f['path']}`"] for f in results["filtered"]])
        return lines + _pool_provenance(results["rows"])

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        return pool_grids(results["rows"], figure_dir)


def pool_grids(rows: list[dict], figure_dir: Path) -> list[tuple[str, Path]]:
    from laworder.experiments.plots import pool_qualitative

    figures = []
    for row in rows:
        if not row.get("runs"):
            continue
        grid = pool_qualitative(row["runs"][0]["pool"], row["qualitative_dir"], figure_dir / f"pool_{slug(row['label'])}.png",
                                row["image_size"])
        if grid:
            figures.append((f"{row['label']}: generated image / conditioning mask / frozen-segmenter prediction / overlay", grid))
    return figures


def _pool_provenance(rows: list[dict]) -> list[str]:
    lines = ["", "Pools:"]
    for row in rows:
        for pool in row.get("pools", []):
            made = ", ".join(f"{k} {pool[k]}" for k in ("method", "count", "split", "steps", "guidance_scale", "seed") if k in pool)
            lines.append(f"- {row['label']}: `{pool['path']}` ({made})")
    return lines


TABLE6_VARIANTS: dict[str, dict[str, Any]] = {
    "Adaptive Distillation": {"objective": "adaptive_distillation"},
    "+ Delta map (no norm)": {"objective": "law", "objective_kwargs": {
        "normalise": False, "clamp_min": False, "clamp_max": False, "dice": False}},
    "+ Normalization": {"objective": "law", "objective_kwargs": {"clamp_min": False, "clamp_max": False, "dice": False}},
    "+ Min-weight clamp": {"objective": "law", "objective_kwargs": {"dice": False}},
    "+ Dice regularizer (LAW)": {"objective": "law"},
    "LAW w/o max-weight clamp": {"objective": "law", "objective_kwargs": {"clamp_max": False}},
}


@dataclass
class LawAblationConfig:
    """Table 6: train the diffusion backbone once per LAW variant, sample, score each pool.

    ``synth`` is the shared diffusion recipe (data = ``seg.data``); ``variants`` maps a row label
    to ``synth`` overrides (``objective``, ``objective_kwargs``). The rows are cumulative as in the
    paper: the max clamp enters with the min clamp (eq. 7 is one clamp) and the last row removes it
    alone. ``fid_weights`` (``default``: the installed TF Inception weights, or a weight file) adds
    FID/KID against the real images of the sampled masks at the pool's resolution (matched counts)
    with the real test-vs-train floor beside it; ``clip_model`` (a local folder) adds CLIP-I;
    stability = training finished with finite losses.
    """

    output_dir: str = "runs/exp/law_ablation"
    description: str = ""
    segmenter: str = ""
    seg: SegTrainConfig = field(default_factory=lambda: SegTrainConfig(model="mk_unet"))
    synth: dict[str, Any] = field(default_factory=dict)
    sample: SampleSettings = field(default_factory=_held_out_sample)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(TABLE6_VARIANTS))
    fid_weights: str = ""
    clip_model: str = ""
    qualitative: int = 4


def _training_stability(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    losses = [json.loads(line).get("loss") for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    losses = [v for v in losses if v is not None]
    finite = all(math.isfinite(v) for v in losses)
    return {"stable": finite, "final_loss": losses[-1] if losses else None, "logged_steps": len(losses)}


def _real_images_for(pool: Pool, data: str, split: str) -> list[Path]:
    """The real image of each pool pair's conditioning mask, in the pool's stem order."""
    collection = load_dataset(data)
    records = collection.train if split == "train" else [r for subset in collection.test.values() for r in subset]
    by_mask = {str(Path(r.mask)): r.image for r in records}
    source = {item["stem"]: item.get("source_mask", "") for item in pool.manifest.get("items", [])}
    stems = sorted(r.stem for r in load_dataset(str(pool.path), "pairs").train)
    return [by_mask[source[s]] for s in stems if source.get(s) in by_mask]


def image_quality(pool: Pool, data: str, split: str, fid_weights: str, clip_model: str) -> dict:
    """FID/KID (with the real-vs-real floor) and paired CLIP-I of a pool against the real images
    of its masks, when weights are given (``fid_weights``: ``default`` or a file)."""
    from laworder.metrics import clip_image_similarity, load_clip_image_encoder

    real = _real_images_for(pool, data, split)
    fake = sorted(r.image for r in load_dataset(str(pool.path), "pairs").train)
    quality: dict[str, Any] = {"reference": f"{data} ({split} images of the conditioning masks)", "n": len(real)}
    if fid_weights:
        from laworder.experiments.image_quality import pool_fid

        quality.update(pool_fid(pool.path, data, split, weights=fid_weights))
    if clip_model and len(real) == len(fake):
        quality["clip"] = clip_image_similarity(real, fake, load_clip_image_encoder(clip_model),
                                                reference=quality["reference"]).to_dict()
    return quality


def fid_cell(quality: dict) -> str:
    """``FID (floor F)`` for a table cell, ``–`` without FID."""
    if "fid" not in quality:
        return "–"
    floor = quality.get("floor")
    return f"{quality['fid']['fid']:.2f}" + (f" (floor {floor['fid']:.2f})" if floor else "")


def fid_note(rows: list[dict]) -> str:
    """The sentence under a table that says which weights computed its FIDs."""
    labels = sorted({r["quality"]["weights"] for r in rows if "fid" in r.get("quality", {})})
    if not labels:
        return ""
    return (" FID/KID weights: " + "; ".join(labels) + ". Floor = FID of real test vs real train images at the "
            "generator's resolution and the same count.")


@EXPERIMENTS.register("law_ablation")
class LawAblation(Experiment):
    """Table 6: LAW components switched on one by one (each variant trains its own diffusion model)."""

    config_class = LawAblationConfig
    title = "LAW component ablation (paper Table 6)"

    def validate(self, config: LawAblationConfig) -> None:
        _check_segmenter(config.segmenter, config.seg)
        if not config.variants:
            raise ConfigError("variants: give at least one {objective, objective_kwargs} row")
        for overrides in config.variants.values():
            synth_config(deep_merge(config.synth, overrides), config.seg.data, Path("."))
        if config.fid_weights:
            from laworder.metrics import resolve_fid_weights

            resolve_fid_weights(None if config.fid_weights == "default" else config.fid_weights)

    def run(self, config: LawAblationConfig, context: RunContext) -> dict:
        segmenter = frozen_segmenter(context, config.segmenter, config.seg)
        rows = []
        for label, overrides in config.variants.items():
            synth = deep_merge(config.synth, overrides)
            row: dict[str, Any] = {"label": label, "objective": synth.get("objective", "law"),
                                   "objective_kwargs": synth.get("objective_kwargs", {})}
            try:
                run_dir = train_pool_model(context, label, synth, config.seg.data)
            except NonFiniteLossError as err:
                rows.append({**row, "stable": False, "error": str(err)})
                continue
            pool = sample_recipe_pool(context, label, run_dir, config.sample, config.seg.data)
            scored = score_pools(context, segmenter, [pool], None, config.qualitative)[0]
            row.update(_training_stability(run_dir), synth_run=str(run_dir), **{k: scored[k] for k in (
                "dice", "iou", "count", "pools", "runs", "qualitative_dir", "image_size", "spread")})
            if config.fid_weights or config.clip_model:
                row["quality"] = image_quality(pool, config.seg.data, config.sample.split, config.fid_weights, config.clip_model)
            rows.append(row)
        return {"segmenter": segmenter, "rows": rows}

    def tables(self, results: dict) -> list[str]:
        head = ["Configuration", "FID ↓", "CLIP-I ↑", "Mask Dice ↑", "Mask IoU ↑", "Stability"]
        cells = []
        for r in results["rows"]:
            quality = r.get("quality", {})
            fid = fid_cell(quality)
            clip = f"{quality['clip']['clip_i']:.3f}" if "clip" in quality else "–"
            dice = fmt(r["dice"]["mean"], r["dice"]["std"], 1.0, 3) if "dice" in r else "–"
            iou = fmt(r["iou"]["mean"], r["iou"]["std"], 1.0, 3) if "iou" in r else "–"
            cells.append([r["label"], fid, clip, dice, iou, "Stable" if r.get("stable") else "Unstable"])
        return markdown_table(head, cells) + [
            "", "One diffusion run per row (as the paper); mask Dice/IoU ± std over images with the frozen segmenter "
            f"`{results['segmenter']}`. Stable = training finished with finite losses. FID/CLIP-I only when "
            "weights were given (fid_weights: default or a file; clip_model)." + fid_note(results["rows"])]

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        from laworder.experiments.plots import latest_snapshot

        figures = pool_grids(results["rows"], figure_dir)
        for row in results["rows"]:
            snapshot = latest_snapshot(row.get("synth_run", ""), figure_dir / f"delta_{slug(row['label'])}.png") \
                if row.get("synth_run") else None
            if snapshot:
                figures.append((f"{row['label']}: last weight-map snapshot (image | mask | w_ratio | δ | w_final)", snapshot))
        return figures

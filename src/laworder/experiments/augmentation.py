"""Downstream augmentation (Table 4) and dose-response (Table 5).

The protocol is explicit: the same segmenter recipe (``seg``) is trained once per row and seed;
a row adds synthetic pairs to the *training side only* (``SegTrainConfig.extra_train``); each
seed draws its own 90/10 train/val split of the real training pool, validation and the test
subsets stay real; rows report mean ± std over seeds of the mean-over-subsets Dice/IoU.

Dose-response subsamples the pool once, nested (a seeded permutation: the 250 pairs are part of
the 500, ...), writes each subset as its own pool folder (``<run_dir>/doses/<n>/`` with a
manifest recording the draw), and adds it to the real training pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laworder.data.layouts import load_dataset
from laworder.errors import ConfigError, DataError
from laworder.experiments.base import (
    EXPERIMENTS, Experiment, RunContext, fmt, markdown_table, protocol_subsets, seed_run_dirs, seg_row, slug,
    summary_cell,
)
from laworder.experiments.pools import Pool, SampleSettings, pool_summary, resolve_pools, validate_pools
from laworder.experiments.mask_recovery import filter_pool, mask_recovery, sample_stems, subset_pool
from laworder.models import MODELS
from laworder.seg.config import SegTrainConfig

REAL_ONLY = "Real only"


def _pool_size(path: str | Path) -> int:
    return len(load_dataset(str(path), "pairs").train)


def _num_real_train(row: dict) -> int | None:
    """Real training images of a row's first seed (after its train/val split)."""
    runs = seed_run_dirs([row])
    path = Path(runs[row["label"]]) / "data.json" if runs else None
    return json.loads(path.read_text())["num_train"] if path and path.is_file() else None


@dataclass
class AugmentationConfig:
    """Table 4: the same segmenter on real only vs real + each synthetic pool.

    ``pools``: row label -> pool folder or recipe (see ``laworder.experiments.pools``).
    ``filter_min_dice`` (beyond the paper): also train on each pool filtered by mask recovery
    (pairs whose frozen-segmenter Dice ≥ the threshold), reported beside the unfiltered row. The
    frozen segmenter is ``filter_segmenter`` (a run folder) or the first seed of the real-only row.
    """

    output_dir: str = "runs/exp/augmentation"
    description: str = ""
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_data: str | None = None
    subsets: list[str] | None = None
    real_only: bool = True
    pools: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    sample: SampleSettings = field(default_factory=SampleSettings)
    filter_min_dice: float | None = None
    filter_segmenter: str = ""


def _validate_common(config: Any) -> None:
    MODELS.get(config.seg.model)
    if not config.seeds:
        raise ConfigError("seeds: give at least one seed")


def _row_cells(row: dict, subsets: list[str]) -> list[str]:
    cells = [summary_cell(row["protocol"], "mean/dice"), summary_cell(row["protocol"], "mean/iou")]
    if len(subsets) > 1:
        cells += [summary_cell(row["protocol"], f"{s}/dice") for s in subsets]
    return cells


def _protocol_note(rows: list[dict]) -> str:
    return (f"Dice/IoU in %, mean ± std over seeds {rows[0]['seeds']}; synthetic pairs are added to the training "
            "side only, every seed's validation split and the test subsets are real.")


@EXPERIMENTS.register("augmentation")
class Augmentation(Experiment):
    """Table 4: downstream segmentation with real only vs real + synthetic pool(s)."""

    config_class = AugmentationConfig
    title = "Downstream augmentation (paper Table 4)"

    def validate(self, config: AugmentationConfig) -> None:
        _validate_common(config)
        validate_pools(config.pools, config.synth, config.sample)
        if not config.pools and not config.real_only:
            raise ConfigError("nothing to train: no pools and real_only is false")
        if config.filter_min_dice is not None:
            if not 0.0 <= config.filter_min_dice <= 1.0:
                raise ConfigError(f"filter_min_dice must be in [0, 1], got {config.filter_min_dice}")
            if not (config.filter_segmenter or config.real_only):
                raise ConfigError("filter_min_dice needs filter_segmenter or the real-only row (real_only: true)")

    def run(self, config: AugmentationConfig, context: RunContext) -> dict:
        pools = resolve_pools(context, config.pools, config.synth, config.sample, config.seg.data)
        rows = []
        if config.real_only:
            rows.append(seg_row(context, REAL_ONLY, config.seg, config.seeds, config.test_data, config.subsets))
        for pool in pools:
            row = seg_row(context, f"Real + {pool.label}", config.seg, config.seeds, config.test_data,
                          config.subsets, extra=[str(pool.path)])
            rows.append({**row, "pool": pool.label, "synthetic": _pool_size(pool.path)})
        filtered = self._filtered_rows(config, context, pools, rows) if config.filter_min_dice is not None else []
        for row in rows + filtered:
            row["num_real_train"] = _num_real_train(row) if "protocol" in row else None
        return {"rows": rows + filtered, "pools": [pool_summary(p) for p in pools]}

    def _filtered_rows(self, config: AugmentationConfig, context: RunContext, pools: list[Pool],
                       rows: list[dict]) -> list[dict]:
        segmenter = config.filter_segmenter or str(seed_run_dirs(rows)[REAL_ONLY])
        filtered = []
        for pool in pools:
            scores = mask_recovery(segmenter, pool.path)
            kept_dir = filter_pool(pool.path, segmenter, config.filter_min_dice, context.path("pools_filtered", slug(pool.label)),
                                   overwrite=True, scores=scores)
            kept = sum(1 for r in scores["per_image"] if r["dice"] >= config.filter_min_dice)
            summary = {"min_dice": config.filter_min_dice, "segmenter": segmenter, "pool_mask_dice": scores["dice"],
                       "kept": kept, "of": scores["count"], "path": str(kept_dir)}
            label = f"Real + {pool.label} (filtered, Dice ≥ {config.filter_min_dice:g})"
            if not kept:  # nothing left to add: the row would equal real only
                filtered.append({"label": label, "pool": pool.label, "synthetic": 0, "filter": summary, "skipped": True})
                continue
            row = seg_row(context, label, config.seg, config.seeds, config.test_data, config.subsets, extra=[str(kept_dir)])
            filtered.append({**row, "pool": pool.label, "synthetic": kept, "filter": summary})
        return filtered

    def tables(self, results: dict) -> list[str]:
        rows = results["rows"]
        trained = [r for r in rows if "protocol" in r]
        subsets = protocol_subsets(trained[0]["protocol"])
        head = ["Training data", "Synthetic pairs", "mDice", "mIoU"]
        if len(subsets) > 1:
            head += [f"{s} Dice" for s in subsets]
        cells = [[r["label"], str(r.get("synthetic", 0))] + _row_cells(r, subsets) for r in trained]
        lines = markdown_table(head, cells) + ["", _protocol_note(trained)]
        filtered = [r for r in rows if "filter" in r]
        if filtered:
            lines += ["", "Mask-recovery filter (beyond the paper): "
                      + "; ".join(f"{r['pool']}: kept {r['filter']['kept']} of {r['filter']['of']} pairs "
                                  f"(pool mask Dice {fmt(r['filter']['pool_mask_dice']['mean'], None, 1.0, 3)})"
                                  + (", row not trained" if r.get("skipped") else "") for r in filtered)
                      + f", frozen segmenter `{filtered[0]['filter']['segmenter']}`."]
        return lines + _pool_lines(results["pools"])

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        from laworder.experiments.figures import plot_training_curves
        from laworder.experiments.plots import seg_qualitative

        runs = seed_run_dirs(results["rows"])
        figures = [("Training curves (first seed)", plot_training_curves(runs, figure_dir / "training_curves.png"))]
        grid = seg_qualitative(runs, figure_dir / "qualitative.png")
        if grid:
            figures.append(("Test images: mask and each row's prediction (first seed)", grid))
        return figures


def _pool_lines(pools: list[dict]) -> list[str]:
    if not pools:
        return []
    lines = ["", "Pools:"]
    for pool in pools:
        made = ", ".join(f"{k} {pool[k]}" for k in ("method", "count", "split", "steps", "guidance_scale", "seed") if k in pool)
        lines.append(f"- {pool['label']}: `{pool['path']}` ({made})")
    return lines


@dataclass
class DoseResponseConfig:
    """Table 5: real + 250 / 500 / 1000 / all synthetic pairs from one pool (nested subsamples).

    ``pool``: a pool folder or a recipe (see ``laworder.experiments.pools``); ``doses``: pair
    counts and/or ``all``; ``subsample_seed`` fixes the draw.
    """

    output_dir: str = "runs/exp/dose_response"
    description: str = ""
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_data: str | None = None
    subsets: list[str] | None = None
    label: str = "LAW"
    pool: Any = ""
    doses: list[Any] = field(default_factory=lambda: [250, 500, 1000, "all"])
    real_only: bool = True
    subsample_seed: int = 0
    synth: dict[str, Any] = field(default_factory=dict)
    sample: SampleSettings = field(default_factory=SampleSettings)


def resolve_doses(doses: list[Any], pool_size: int | None = None, pool: str = "") -> list[int]:
    """Sorted distinct pair counts (``all`` = the pool size).

    Raises:
        ConfigError: a dose that is neither a positive integer nor ``all``.
        DataError: a dose larger than the pool (both numbers named).
    """
    counts = []
    for dose in doses:
        if dose == "all":
            if pool_size is not None:
                counts.append(pool_size)
            continue
        if isinstance(dose, bool) or not isinstance(dose, int) or dose < 1:
            raise ConfigError(f"doses must be positive pair counts or 'all', got {dose!r}")
        if pool_size is not None and dose > pool_size:
            raise DataError(f"dose {dose} is larger than the pool: {pool} holds {pool_size} pairs; "
                            f"lower the dose or use 'all'")
        counts.append(dose)
    return sorted(set(counts))


@EXPERIMENTS.register("dose_response")
class DoseResponse(Experiment):
    """Table 5: downstream Dice against the number of synthetic pairs added."""

    config_class = DoseResponseConfig
    title = "Dose-response (paper Table 5)"

    def validate(self, config: DoseResponseConfig) -> None:
        _validate_common(config)
        if not config.pool:
            raise ConfigError("pool: give a pool folder or a recipe ({synth: {...}})")
        validate_pools({config.label: config.pool}, config.synth, config.sample)
        if not config.doses:
            raise ConfigError("doses: give at least one pair count or 'all'")
        resolve_doses(config.doses)
        if isinstance(config.pool, str):  # a too-large dose fails before training
            resolve_doses(config.doses, _pool_size(config.pool), config.pool)

    def run(self, config: DoseResponseConfig, context: RunContext) -> dict:
        pool = resolve_pools(context, {config.label: config.pool}, config.synth, config.sample, config.seg.data)[0]
        total = _pool_size(pool.path)
        doses = resolve_doses(config.doses, total, str(pool.path))
        rows = []
        if config.real_only:
            rows.append({**seg_row(context, REAL_ONLY, config.seg, config.seeds, config.test_data, config.subsets),
                         "dose": 0})
        for dose in doses:
            extra = pool.path
            if dose < total:
                stems = sample_stems(pool.path, dose, config.subsample_seed)
                extra = subset_pool(pool.path, stems, context.path("doses", str(dose)), overwrite=True, manifest_update={
                    "subsample": {"count": dose, "of": total, "seed": config.subsample_seed, "rule": "nested permutation"}})
            row = seg_row(context, f"Real + {config.label} ({dose})", config.seg, config.seeds, config.test_data,
                          config.subsets, extra=[str(extra)])
            rows.append({**row, "dose": dose})
        for row in rows:
            row["num_real_train"] = _num_real_train(row)
        return {"rows": rows, "label": config.label, "pool_size": total, "pools": [pool_summary(pool)],
                "subsample_seed": config.subsample_seed}

    def tables(self, results: dict) -> list[str]:
        rows = results["rows"]
        subsets = protocol_subsets(rows[0]["protocol"])
        head = ["Training control", "Synthetic images", "Synthetic : real", "Mean Dice", "Mean IoU"]
        if len(subsets) > 1:
            head += [f"{s} Dice" for s in subsets]
        cells = []
        for row in rows:
            real = row.get("num_real_train")
            ratio = f"{row['dose'] / real:.2f}" if real else "–"
            control = REAL_ONLY if row["dose"] == 0 else f"Real + {results['label']}"
            cells.append([control, str(row["dose"]), ratio] + _row_cells(row, subsets))
        return markdown_table(head, cells) + [
            "", _protocol_note(rows), f"Subsets drawn once from the {results['pool_size']}-pair pool "
            f"(nested, seed {results['subsample_seed']}); 'Synthetic : real' uses the first seed's real training count."
        ] + _pool_lines(results["pools"])

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        from laworder.experiments.figures import plot_training_curves
        from laworder.experiments.plots import plot_dose_response

        rows = results["rows"]
        curve = plot_dose_response([r["dose"] for r in rows],
                                   [r["protocol"]["summary"]["mean/dice"]["mean"] for r in rows],
                                   [r["protocol"]["summary"]["mean/dice"]["std"] for r in rows],
                                   figure_dir / "dose_response.png", label=f"Real + {results['label']}")
        curves = plot_training_curves(seed_run_dirs(rows), figure_dir / "training_curves.png")
        return [("Dose-response: mean Dice ± std over seeds", curve), ("Training curves (first seed)", curves)]

"""Report figures built from experiment run folders: dose-response curve, ORDER gate values,
qualitative grids (image / mask / prediction / overlay) for real test sets and synthetic pools,
and LAW delta-map snapshots. Matplotlib (Agg) through ``laworder.experiments.figures``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from laworder.data.dataset import PairDataset
from laworder.data.io import read_mask
from laworder.data.layouts import load_dataset
from laworder.data.records import PairRecord
from laworder.errors import LaworderError
from laworder.experiments.figures import plot_qualitative_grid, plt
from laworder.experiments.figures import save_figure as _save


def plot_dose_response(doses: Sequence[int], means: Sequence[float], stds: Sequence[float], out: str | Path,
                       label: str = "Real + synthetic", ylabel: str = "Mean Dice (%)") -> Path:
    """Mean Dice (± std error bars) against the number of synthetic pairs; dose 0 = real only."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    values = np.asarray(means, dtype=float) * 100
    errors = np.nan_to_num(np.asarray(stds, dtype=float) * 100)
    ax.errorbar(doses, values, yerr=errors, marker="o", capsize=4, label=label)
    if doses and doses[0] == 0:
        ax.axhline(values[0], color="grey", lw=0.8, ls="--", label="real only")
    ax.set_xlabel("synthetic pairs added to training")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _batch(records: list[PairRecord], size: int, channels: int = 3) -> tuple[torch.Tensor, np.ndarray]:
    dataset = PairDataset(records, size, channels)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])[:, 0].numpy() > 0.5
    return images, masks


def _test_records(data: str, layout: str, count: int) -> list[PairRecord]:
    collection = load_dataset(data, layout)
    records = [r for subset in collection.test.values() for r in subset] or collection.train
    return records[:count]


def gate_values_of_runs(runs: dict[str, Path], num_images: int = 16) -> dict[str, dict[int, list[float]]]:
    """``{label: {skip index: gate per image}}`` for the runs whose model has confidence gates
    (ORDER), on the first ``num_images`` test images of each run's dataset. Runs without
    weights or gates are left out."""
    from laworder.seg.loading import load_segmenter

    gates = {}
    for label, run_dir in runs.items():
        try:
            model, config = load_segmenter(run_dir, "best")
        except LaworderError:
            continue
        if not hasattr(model, "gate_values"):
            continue
        images, _ = _batch(_test_records(config.data, config.layout, num_images), config.image_size, config.channels)
        with torch.no_grad():
            model(images)
        values = {index: gate.flatten().tolist() for index, gate in model.gate_values.items()}
        if values:
            gates[label] = values
    return gates


def plot_gate_values(gates: dict[str, dict[int, list[float]]], out: str | Path) -> Path:
    """One box per (run, skip index): the per-sample confidence gate c in (0, 1)."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * sum(len(v) for v in gates.values()), 3.6))
    data, names = [], []
    for label, by_skip in gates.items():
        for index, values in sorted(by_skip.items()):
            data.append(values)
            names.append(f"{label}\nskip {index}")
    ax.boxplot(data)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=7)
    ax.set_ylabel("confidence gate c")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out)


def seg_qualitative(runs: dict[str, Path], out: str | Path, num_images: int = 4) -> Path | None:
    """Test images of the first run's dataset: image / mask / each run's prediction / overlay."""
    from laworder.seg.loading import load_segmenter

    models = {}
    for label, run_dir in runs.items():
        try:
            models[label] = load_segmenter(run_dir, "best")
        except LaworderError:
            continue
    if not models:
        return None
    config = next(iter(models.values()))[1]
    records = _test_records(config.data, config.layout, num_images)
    return predictions_grid({label: model for label, (model, _) in models.items()}, records, config.image_size, out,
                            config.channels, {label: c.threshold for label, (_, c) in models.items()})


def predictions_grid(models: dict[str, torch.nn.Module], records: list[PairRecord], image_size: int, out: str | Path,
                     channels: int = 3, thresholds: dict[str, float] | None = None) -> Path:
    """Image / mask / each model's thresholded prediction / overlay for ``records`` at ``image_size``²."""
    images, masks = _batch(records, image_size, channels)
    predictions = {}
    with torch.no_grad():
        for label, model in models.items():
            threshold = (thresholds or {}).get(label, 0.5)
            predictions[label] = (torch.sigmoid(model.eval()(images))[:, 0] >= threshold).numpy()
    pixels = images.permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return plot_qualitative_grid(pixels, masks, predictions, out, titles=[r.stem for r in records])


def pool_qualitative(pool_dir: str | Path, predictions_dir: str | Path, out: str | Path, size: int,
                     label: str = "frozen segmenter") -> Path | None:
    """Generated image / conditioning mask / frozen-segmenter prediction / overlay, for the pool
    pairs whose predictions were saved in ``predictions_dir`` (``<stem>.png``)."""
    predictions_dir = Path(predictions_dir)
    saved = sorted(predictions_dir.glob("*.png")) if predictions_dir.is_dir() else []
    if not saved:
        return None
    records = {r.stem: r for r in load_dataset(str(pool_dir), "pairs").train}
    stems = [p.stem for p in saved if p.stem in records]
    if not stems:
        return None
    images, masks = _batch([records[s] for s in stems], size)
    predictions = np.stack([read_mask(predictions_dir / f"{s}.png") for s in stems])
    if predictions.shape[1:] != masks.shape[1:]:
        return None
    pixels = images.permute(0, 2, 3, 1).numpy()
    return plot_qualitative_grid(pixels, masks, {label: predictions}, out, titles=stems)


def latest_snapshot(synth_run: str | Path, out: str | Path) -> Path | None:
    """Copy the last delta-map snapshot grid of a diffusion run (paper Fig. 8) to ``out``."""
    snapshots = sorted(Path(synth_run).glob("snapshots/step_*.png"))
    if not snapshots:
        return None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(snapshots[-1], out)
    return out

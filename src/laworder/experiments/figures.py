"""PNG figures with matplotlib (Agg): training curves and qualitative grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, out: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(runs: dict[str, str | Path], out: str | Path, keys: Sequence[str] = ("loss", "val_dice")) -> Path:
    """One panel per key, one line per run (label -> run folder)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, run_dir in runs.items():
            records = [r for r in read_metrics(run_dir) if key in r]
            if records:
                ax.plot([r["step"] for r in records], [r[key] for r in records], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, dpi=110)


def _overlay(image: np.ndarray, mask: np.ndarray, color=(1.0, 0.25, 0.0), alpha=0.45) -> np.ndarray:
    out = image.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array(color)
    return out


def plot_qualitative_grid(images: np.ndarray, masks: np.ndarray, predictions: dict[str, np.ndarray],
                          out: str | Path, titles: Sequence[str] | None = None) -> Path:
    """Rows = samples; columns = image, ground truth, each model's prediction, overlay of the last.

    ``images``: ``N×H×W×3`` float in [0,1]; ``masks`` and each prediction: ``N×H×W`` bool.
    """
    names = list(predictions)
    cols = 2 + len(names) + 1
    n = len(images)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n), squeeze=False)
    headers = ["image", "mask"] + names + [f"overlay ({names[-1]})" if names else "overlay"]
    for row in range(n):
        panels = [images[row], masks[row]] + [predictions[k][row] for k in names]
        last = predictions[names[-1]][row] if names else masks[row]
        panels.append(_overlay(images[row], last))
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[col], fontsize=8)
        if titles:
            axes[row][0].set_ylabel(titles[row], fontsize=7)
    return save_figure(fig, out, dpi=100)


def plot_probe(runs: dict[str, str | Path] | str | Path, out: str | Path) -> Path | None:
    """One panel per region: the gap (shuffled − true ε-MSE) over training steps, one line per run.

    ``runs``: a run folder, or label -> run folder. Returns the PNG, or None when no run has
    probe records.
    """
    from laworder.synth.probe import REGIONS, read_probe

    runs = runs if isinstance(runs, dict) else {Path(runs).name: runs}
    curves = {label: read_probe(run) for label, run in runs.items()}
    if not any(curves.values()):
        return None
    regions = REGIONS[:3]
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.4), squeeze=False, sharey=True)
    for ax, region in zip(axes[0], regions):
        for label, records in curves.items():
            if records:
                ax.plot([r["step"] for r in records], [r[f"probe_gap_{region}"] for r in records], marker=".", label=label)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{region}: shuffled − true ε-MSE", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gap (> 0: the mask is used)")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, out, dpi=110)


def plot_mask_image_rows(masks: np.ndarray, rows: dict[str, np.ndarray], out: str | Path,
                         titles: Sequence[str] | None = None, size: float = 1.4) -> Path:
    """Columns = samples; first row the conditioning masks, then one row per label (e.g. a generator).

    ``masks``: ``N×H×W`` bool or {0, 1}; each row: ``N×H×W×3`` float in [0, 1] (any H, W).
    """
    labels = list(rows)
    n = len(masks)
    fig, axes = plt.subplots(1 + len(labels), n, figsize=(size * n + 0.8, size * (1 + len(labels))), squeeze=False)
    for col in range(n):
        panels = [masks[col].astype(float)] + [rows[label][col] for label in labels]
        for row, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(np.clip(panel, 0, 1), cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel((["mask"] + labels)[row], fontsize=7)
        if titles:
            axes[0][col].set_title(titles[col], fontsize=6)
    return save_figure(fig, out, dpi=100)

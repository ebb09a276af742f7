"""What every paper-table experiment shares: the ``EXPERIMENTS`` registry, the ``Experiment``
interface, the run context, seeded segmentation rows and markdown helpers.

An experiment kind is one class with one decorator::

    @EXPERIMENTS.register("augmentation")
    class Augmentation(Experiment):
        config_class = AugmentationConfig      # a dataclass with the paper's defaults
        def validate(self, config): ...         # cheap checks before anything is trained
        def run(self, config, context): ...     # -> JSON-able results
        def tables(self, results): ...          # -> markdown lines in the paper's layout
        def figures(self, results, run_dir, figure_dir): ...   # -> [(caption, png path)]

``laworder.experiments.runner.run_experiment`` picks the class from the config's ``kind:``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laworder.registry import Registry
from laworder.seg.config import SegTrainConfig

RESULTS = "results.json"  # an experiment folder's numbers (``runner.run_experiment`` writes it)
CONFIG = "experiment.yaml"  # its resolved config


class Experiment:
    """One experiment kind (see the module docstring)."""

    config_class: type = object
    title: str = ""

    def validate(self, config: Any) -> None:
        """Raise ``ConfigError`` / ``DataError`` for what can be checked before any training."""

    def run(self, config: Any, context: "RunContext") -> dict:
        raise NotImplementedError

    def tables(self, results: dict) -> list[str]:
        raise NotImplementedError

    def figures(self, results: dict, run_dir: Path, figure_dir: Path) -> list[tuple[str, Path]]:
        return []


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


@dataclass
class RunContext:
    """Where an experiment writes and whether it continues (``resume``) or replaces (``overwrite``)
    the sub-runs a previous attempt left there."""

    run_dir: Path
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)


def slug(label: str) -> str:
    """A folder-safe version of a row label (``"Real + LAW"`` -> ``real_law``)."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "row"


def fmt(mean: float | None, std: float | None = None, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` scaled (percent by default); a single run (std nan) shows the mean alone."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def seg_row(context: RunContext, label: str, seg: SegTrainConfig, seeds: list[int], test_data: str | None = None,
            subsets: list[str] | None = None, extra: list[str] | None = None, folder: str = "rows") -> dict:
    """Train/evaluate one table row with the seeded protocol (``laworder.seg.protocol.run_protocol``).

    ``extra`` pool folders are added to the training side only (``SegTrainConfig.extra_train``):
    every seed's validation split and the test subsets stay real. Runs go to
    ``<run_dir>/<folder>/<slug(label)>/seed<k>``.
    """
    from laworder.seg.protocol import run_protocol

    config = copy.deepcopy(seg)
    config.extra_train = list(extra or [])
    config.extra_limit = None
    config.loop.output_dir = str(context.path(folder, slug(label)))
    config.loop.resume = context.resume
    config.loop.overwrite = context.overwrite and not context.resume
    config.loop.progress = config.loop.progress and context.progress
    result = run_protocol(config, seeds=seeds, test_data=test_data, subsets=subsets)
    return {"label": label, "run_dir": config.loop.output_dir, "extra": config.extra_train,
            "seeds": list(seeds), "protocol": result.to_json()}


def protocol_subsets(protocol: dict) -> list[str]:
    """Test subsets of a ``ProtocolResult.to_json()`` summary, in their order."""
    return list(dict.fromkeys(k.split("/")[0] for k in protocol["summary"] if not k.startswith("mean/")))


def summary_cell(protocol: dict, key: str, scale: float = 100.0) -> str:
    value = protocol["summary"].get(key)
    return fmt(value["mean"], value["std"], scale) if value else "–"


def seed_run_dirs(rows: list[dict], seed_index: int = 0) -> dict[str, Path]:
    """``{row label: run folder of its first seed}`` (for training curves and qualitative grids)."""
    runs = {}
    for row in rows:
        seeds = row.get("seeds") or []
        if len(seeds) > seed_index:
            runs[row["label"]] = Path(row["run_dir"]) / f"seed{seeds[seed_index]}"
    return runs

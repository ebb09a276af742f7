"""The contract between the training core and a task (segmentation, synthesis, ...)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn


@dataclass
class StepOutput:
    """What a training step returns: the scalar loss to back-propagate and floats to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class TrainTask(abc.ABC):
    """A task owns its networks and says how one step and one validation pass work.

    ``fit`` wraps every entry of ``modules`` with ``accelerator.prepare`` and writes the
    wrapped module back, so ``training_step`` should always read ``self.modules[name]``;
    ``self.unwrapped(name)`` gives the bare module (for validation, saving, export).
    """

    modules: dict[str, nn.Module]
    accelerator: Any = None  # set by ``fit``
    global_step: int | None = None  # set by ``fit`` before every ``training_step`` (0-based)
    total_steps: int | None = None  # set by ``fit``: the run's total number of optimizer steps

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Modules moved to the device but never trained or saved (VAE, text encoder...)."""
        return {}

    def optimizer_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters the optimizer updates (default: every trainable parameter of ``modules``)."""
        for module in self.modules.values():
            yield from (p for p in module.parameters() if p.requires_grad)

    @abc.abstractmethod
    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        """One forward pass and loss. ``generator`` (CPU) is seeded per (seed, step, rank):
        draw every random number from it so that resume is exact."""

    def validate(self, loader: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Metrics on the validation set, keys prefixed ``val_`` (default: none)."""
        return {}

    def on_log(self, step: int, run_dir: Path, batch: dict[str, Any]) -> dict[str, Any] | None:
        """Called every ``snapshot_every`` steps on the main process (figures, snapshots).

        May return ``{"images": {tag: H×W×C float array in [0, 1]}, "scalars": {name: float}}``
        for the experiment trackers (``loop.report_to``)."""

    def periodic_logs(self, step: int, run_dir: Path) -> dict[str, float]:
        """Called after every step on the main process; what it returns (e.g. a probe on held-out
        data every K steps) is appended to ``metrics.jsonl`` at ``step`` (default: nothing)."""
        return {}

    # helpers -----------------------------------------------------------------
    def unwrapped(self, name: str) -> nn.Module:
        module = self.modules[name]
        return self.accelerator.unwrap_model(module) if self.accelerator is not None else module

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

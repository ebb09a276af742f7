"""Exponential moving average of the trained weights, with diffusers' warm-up.

``torch.optim.swa_utils.AveragedModel`` keeps the average (its ``n_averaged`` buffer travels
with the checkpoint, so a resumed run continues the same schedule). The decay follows
``diffusers.training_utils.EMAModel.get_decay``: the first update copies the weights, update
``k`` then uses ``min(decay, 1 − (1 + k / inv_gamma)^−power)`` with warm-up, or the fixed
``decay`` without. Without warm-up a 0.999 average of a ControlNet whose zero-initialised
outputs grow slowly keeps mostly the early, near-zero weights for the first thousands of steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(update: int, decay: float, warmup: bool = True, power: float = 2 / 3, inv_gamma: float = 1.0) -> float:
    """Decay used at the ``update``-th average (0 = the first one, a copy)."""
    if update <= 0:
        return 0.0
    if not warmup:
        return decay
    return min(decay, 1.0 - (1.0 + update / inv_gamma) ** -power)


def ema_multi_avg_fn(decay: float, warmup: bool = True, power: float = 2 / 3, inv_gamma: float = 1.0):
    """``AveragedModel(multi_avg_fn=...)``: averaged ← averaged + (1 − d_k)(current − averaged)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(int(num_averaged), decay, warmup, power, inv_gamma)
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # integer buffers (counters) follow the model
                a.copy_(c)

    return update


def make_ema(module: nn.Module, decay: float, warmup: bool = True, power: float = 2 / 3,
             inv_gamma: float = 1.0) -> AveragedModel:
    """An ``AveragedModel`` of ``module`` (buffers averaged too) with the schedule above."""
    if not 0.0 < decay < 1.0:
        from laworder.errors import ConfigError

        raise ConfigError(f"ema_decay must be in (0, 1), got {decay}")
    return AveragedModel(module, multi_avg_fn=ema_multi_avg_fn(decay, warmup, power, inv_gamma), use_buffers=True)

"""Uniform weighting: the plain ControlNet noise-prediction loss (paper eq. 2)."""

from __future__ import annotations

import torch

from laworder.synth.weighting.base import OBJECTIVES, Objective, ObjectiveOutput, check_norm, pixel_error


class UniformObjective(Objective):
    """L = mean(‖ε̂ − ε‖²) (eq. 2); ``norm="l1"`` for the absolute error.

    Args:
        norm: ``"l2"`` (default, ControlNet) or ``"l1"``.
    """

    def __init__(self, norm: str = "l2", channels: int | None = None) -> None:
        super().__init__(channels)
        self.norm = check_norm(norm)

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        loss = pixel_error(eps_pred, eps, self.norm).mean()
        return ObjectiveOutput(loss, {"loss_denoise": loss.detach()}, {"w_final": torch.ones_like(mask)})


@OBJECTIVES.register("uniform")
def uniform(**kwargs) -> UniformObjective:
    """Uniform per-pixel weights: plain ControlNet MSE (paper eq. 2)."""
    return UniformObjective(**kwargs)

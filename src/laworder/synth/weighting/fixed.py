"""Fixed lesion weight: what MONAI's MAISI ControlNet training does for tumour labels."""

from __future__ import annotations

from laworder.synth.weighting.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    check_norm,
    pixel_error,
    weight_stats,
    weighted_mean,
)


class FixedObjective(Objective):
    """w = ``lesion_weight`` on lesion pixels, 1 on background; L = mean(w ⊙ err).

    MAISI (MONAI ``scripts/train_controlnet.py``) multiplies the tumour voxels' loss by 100
    and does not renormalise; it uses an L1 error, here the default is L2 so that only the
    weighting differs from ``uniform`` (pass ``norm="l1"`` for MAISI's exact loss).

    Args:
        lesion_weight: weight on lesion pixels (> 0, default 100).
        norm: ``"l2"`` or ``"l1"``.
    """

    def __init__(self, lesion_weight: float = 100.0, norm: str = "l2", channels: int | None = None) -> None:
        super().__init__(channels)
        if not lesion_weight > 0:
            raise ValueError(f"lesion_weight must be > 0, got {lesion_weight}")
        self.lesion_weight = float(lesion_weight)
        self.norm = check_norm(norm)

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        weights = 1.0 + (self.lesion_weight - 1.0) * mask
        loss = weighted_mean(pixel_error(eps_pred, eps, self.norm), weights)
        logs = {"loss_denoise": loss.detach(), **weight_stats(weights, mask, "w_final")}
        return ObjectiveOutput(loss, logs, {"w_final": weights.detach()})


@OBJECTIVES.register("fixed")
def fixed(**kwargs) -> FixedObjective:
    """Constant lesion weight (default 100, as MONAI MAISI), background 1."""
    return FixedObjective(**kwargs)

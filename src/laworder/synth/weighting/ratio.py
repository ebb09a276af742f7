"""ArSDM ratio weighting (Du et al., 2023; paper eq. 3)."""

from __future__ import annotations

from laworder.synth.weighting.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    check_norm,
    pixel_error,
    ratio_prior,
    weight_stats,
    weighted_mean,
)


class RatioObjective(Objective):
    """w = m(1 − r) + (1 − m) r per sample (eq. 3); L = mean(w ⊙ err), *not* renormalised.

    This is what the public ArSDM code does: it multiplies the ratio weights into an L1
    noise loss, so the loss scale shrinks with the weights (mean weight 2r(1 − r)). An
    empty or full mask gives uniform weights for that sample.

    Args:
        norm: ``"l1"`` (default, ArSDM's code) or ``"l2"``.
    """

    def __init__(self, norm: str = "l1", channels: int | None = None) -> None:
        super().__init__(channels)
        self.norm = check_norm(norm)

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        w_ratio = ratio_prior(mask)
        loss = weighted_mean(pixel_error(eps_pred, eps, self.norm), w_ratio)
        logs = {"loss_denoise": loss.detach(), **weight_stats(w_ratio, mask, "w_final")}
        return ObjectiveOutput(loss, logs, {"w_ratio": w_ratio.detach(), "w_final": w_ratio.detach()})


@OBJECTIVES.register("ratio")
def ratio(**kwargs) -> RatioObjective:
    """ArSDM ratio prior m(1−r)+(1−m)r, not renormalised; L1 (default) or L2 (eq. 3)."""
    return RatioObjective(**kwargs)

"""Adaptive distillation (Qiu et al., 2025; paper earlier version eq. 10-12)."""

from __future__ import annotations

from laworder.synth.weighting.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    ratio_prior,
    weight_stats,
    weighted_mean,
)


class AdaptiveDistillationObjective(Objective):
    """Teacher-student ControlNet with ratio-weighted distillation.

    The training task runs a *teacher* branch that also sees the real image: a second
    ControlNet on the image adds ``image_control_scale`` × its residuals to the student's mask
    residuals (Qiu et al.'s public code: 1.0 · c_mask + 0.25 · c_image) and the same UNet
    predicts ε̂ᵀ (``extra["eps_teacher"]``). The student (mask only) is what sampling uses::

        L_S   = mean(‖ε̂ˢ − ε‖²)                          student denoising
        L_T   = mean(‖ε̂ᵀ − ε‖²)                          (10) teacher denoising
        L_S←T = mean(w_ratio ⊙ ‖ε̂ˢ − sg[ε̂ᵀ]‖²)            (11) ratio-weighted distillation
        L     = L_S + β_T L_T + β_D L_S←T                 (12) without LAW's Dice term

    The student term is unweighted and the ratio prior (eq. 3, not renormalised) weights the
    distillation term, as in Qiu et al.'s code; eq. 11 of the earlier LAW version puts
    LAW's w_final there instead.

    Args:
        beta_teacher: β_T (0.05). beta_distill: β_D (0.05).
        image_control_scale: weight of the image ControlNet's residuals in the teacher (0.25).
    """

    needs = ("eps_teacher",)

    def __init__(
        self,
        beta_teacher: float = 0.05,
        beta_distill: float = 0.05,
        image_control_scale: float = 0.25,
        channels: int | None = None,
    ) -> None:
        super().__init__(channels)
        if beta_teacher < 0 or beta_distill < 0:
            raise ValueError(f"beta_teacher and beta_distill must be >= 0, got {beta_teacher}, {beta_distill}")
        self.beta_teacher, self.beta_distill = float(beta_teacher), float(beta_distill)
        self.image_control_scale = float(image_control_scale)

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        eps_teacher = extra["eps_teacher"]
        w_ratio = ratio_prior(mask)
        loss_student = (eps_pred - eps).pow(2).mean()
        loss_teacher = (eps_teacher - eps).pow(2).mean()
        loss_distill = weighted_mean((eps_pred - eps_teacher.detach()).pow(2), w_ratio)
        loss = loss_student + self.beta_teacher * loss_teacher + self.beta_distill * loss_distill
        logs = {
            "loss_denoise": loss_student.detach(),
            "loss_teacher": loss_teacher.detach(),
            "loss_distill": loss_distill.detach(),
            **weight_stats(w_ratio, mask, "w_ratio"),
        }
        return ObjectiveOutput(loss, logs, {"w_ratio": w_ratio.detach(), "w_final": w_ratio.detach()})


@OBJECTIVES.register("adaptive_distillation")
def adaptive_distillation(**kwargs) -> AdaptiveDistillationObjective:
    """Teacher (image + mask) / student (mask) with ratio-weighted distillation (eq. 10-12)."""
    return AdaptiveDistillationObjective(**kwargs)

"""Siamese-Diffusion noise consistency (Qiu et al., CVPR 2025; eq. 5-9)."""

from __future__ import annotations

from laworder.synth.weighting.base import OBJECTIVES, Objective, ObjectiveOutput


class NoiseConsistencyObjective(Objective):
    """Mask-Diffusion and Image-Diffusion share one network; the image branch anchors the mask one.

    The training task runs the ControlNet on the mask (c_m) and on the image (c_i), mixes
    c_mix = w_i · c_i + w_m · sg[c_m] (eq. 5, w_i = k / N_iter ramping 0 → 1, w_m = 1) and
    predicts ε̂^mix with the same UNet (``extra["eps_image"]``)::

        L_m = mean(‖ε̂^m − ε‖²)                  (7) Mask-Diffusion, used for sampling
        L_i = mean(‖ε̂^mix − ε‖²)                (8) Image-Diffusion
        L_c = w_c · mean(‖ε̂^m − sg[ε̂^mix]‖²)    (9) noise consistency, w_c = 1
        L   = L_m + L_i + L_c                    (6) without Online-Augmentation's L_m'

    Args:
        consistency_weight: w_c (1.0). mask_control_weight: w_m (1.0).
        image_weight_ramp: w_i = k / N_iter (True, the paper) or constant 1 (False).
        image_branch_updates_unet: whether L_i also trains the UNet (True here); the paper's
            Image-Diffusion runs a deep copy θ′ of the UNet, so L_i reaches the ControlNet only
            (``siamese`` sets False).
    """

    needs = ("eps_image",)

    def __init__(
        self,
        consistency_weight: float = 1.0,
        mask_control_weight: float = 1.0,
        image_weight_ramp: bool = True,
        image_branch_updates_unet: bool = True,
        channels: int | None = None,
    ) -> None:
        super().__init__(channels)
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {consistency_weight}")
        self.consistency_weight = float(consistency_weight)
        self.mask_control_weight = float(mask_control_weight)
        self.image_weight_ramp = bool(image_weight_ramp)
        self.image_branch_updates_unet = bool(image_branch_updates_unet)

    def image_control_weight(self, step: int | None, total_steps: int | None) -> float:
        """w_i of eq. 5 at optimizer step ``step`` of ``total_steps``."""
        if not self.image_weight_ramp or step is None or not total_steps:
            return 1.0
        return min(1.0, max(0.0, step / total_steps))

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        eps_image = extra["eps_image"]
        loss_mask = (eps_pred - eps).pow(2).mean()
        loss_image = (eps_image - eps).pow(2).mean()
        loss_consistency = (eps_pred - eps_image.detach()).pow(2).mean()
        loss = loss_mask + loss_image + self.consistency_weight * loss_consistency
        logs = {
            "loss_denoise": loss_mask.detach(),
            "loss_image": loss_image.detach(),
            "loss_consistency": loss_consistency.detach(),
        }
        return ObjectiveOutput(loss, logs, {})


@OBJECTIVES.register("noise_consistency")
def noise_consistency(**kwargs) -> NoiseConsistencyObjective:
    """Siamese-Diffusion: image branch on the same network + noise consistency (eq. 5-9)."""
    return NoiseConsistencyObjective(**kwargs)

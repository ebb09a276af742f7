"""Siamese-Diffusion, the full method (Qiu et al., CVPR 2025; ``../shared/papers/siamese-diffusion.txt``).

``noise_consistency`` (eq. 5-9) plus what the paper adds around it:

- **Image-Diffusion through a copy θ′** of the UNet: L_i trains the ControlNet's image path,
  not the UNet (``image_branch_updates_unet=False``; ``Backbone.denoise(unet_grad=False)``).
- **Dense Hint Input** (§3.4): the backbone is built with ``hint_input="dense"`` unless the
  config says otherwise (``backbone_defaults``; see ``synth/backbones/dense_hint.py``).
- **Online-Augmentation** (§3.5, eq. 11-13): from one third of training on, for t ≤ 200, the
  image branch's clean estimate z′₀ = (z_t − √(1−ᾱ_t) sg[ε̂^mix]) / √ᾱ_t is re-noised with the
  same ε at the same t and the Mask-Diffusion branch is trained on it:
  L_m′ = w_a · mean(‖ε̂^m′ − ε‖²). The training task builds z′_t and ε̂^m′ for the rows
  ``augmentation_rows`` selects; w_a = 0 elsewhere, and the batch mean counts those rows as 0.

L = L_m + L_i + L_c + L_m′ (eq. 6). Sampling uses Mask-Diffusion only (``sample_pool`` builds
the backbone and loads its sampling modules; no image is ever read).

Where the paper and its code differ or are silent:

- eq. 13 says t < T_τ and the authors' code t ≤ 200; t ≤ 200 is used (``augment_max_timestep``).
- k > K_τ with k the 0-based optimizer step ``fit`` reports and K_τ = N_iter / 3.
- z′₀ is clipped to the scheduler's ``clip_sample_range`` when the scheduler clips samples
  (pixel-space ``builtin``); latents (``sd15``) are left unclipped, as in the authors' code.
"""

from __future__ import annotations

import torch

from laworder.synth.weighting.base import OBJECTIVES, ObjectiveOutput
from laworder.synth.weighting.noise_consistency import NoiseConsistencyObjective


@OBJECTIVES.register("siamese")
class SiameseObjective(NoiseConsistencyObjective):
    """Siamese-Diffusion (full): noise consistency + online augmentation + dense hint input.

    Args:
        consistency_weight: w_c (1.0). mask_control_weight: w_m (1.0).
        image_weight_ramp: w_i = k / N_iter (True).
        image_branch_updates_unet: False (θ′ is a copy: L_i trains the ControlNet only).
        augment_weight: weight of L_m′ when w_a = 1 (1.0).
        augment_start_fraction: K_τ / N_iter (1/3).
        augment_max_timestep: T_τ (200; rows with t ≤ T_τ are augmented).
    """

    needs = ("eps_image",)
    backbone_defaults = {"hint_input": "dense"}

    def __init__(
        self,
        consistency_weight: float = 1.0,
        mask_control_weight: float = 1.0,
        image_weight_ramp: bool = True,
        image_branch_updates_unet: bool = False,
        augment_weight: float = 1.0,
        augment_start_fraction: float = 1.0 / 3.0,
        augment_max_timestep: int = 200,
        channels: int | None = None,
    ) -> None:
        super().__init__(consistency_weight, mask_control_weight, image_weight_ramp, image_branch_updates_unet, channels)
        if augment_weight < 0 or not 0.0 <= augment_start_fraction <= 1.0 or augment_max_timestep < 0:
            raise ValueError(f"need augment_weight >= 0, augment_start_fraction in [0, 1], augment_max_timestep >= 0; "
                             f"got {augment_weight}, {augment_start_fraction}, {augment_max_timestep}")
        self.augment_weight = float(augment_weight)
        self.augment_start_fraction = float(augment_start_fraction)
        self.augment_max_timestep = int(augment_max_timestep)

    def augmentation_rows(self, timesteps: torch.Tensor, step: int | None, total_steps: int | None) -> torch.Tensor | None:
        """w_a of eq. 13 per sample: 1 once ``step > augment_start_fraction · total_steps`` and
        t ≤ ``augment_max_timestep``; ``None`` before that (or outside ``fit``)."""
        if step is None or not total_steps or step <= self.augment_start_fraction * total_steps:
            return None
        return timesteps <= self.augment_max_timestep

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        output = super().compute(eps_pred, eps, mask, **extra)
        index = extra.get("augmented_index")
        if index is None or index.numel() == 0:
            loss_augmented = eps_pred.new_zeros(())
            fraction = 0.0
        else:
            eps_augmented = extra["eps_augmented"]
            if eps_augmented.shape != (index.numel(), *eps.shape[1:]):
                raise ValueError(f"eps_augmented shape {tuple(eps_augmented.shape)} does not fit "
                                 f"{index.numel()} augmented rows of {tuple(eps.shape)}")
            per_row = (eps_augmented - eps[index]).pow(2).mean(dim=(1, 2, 3))
            loss_augmented = per_row.sum() / eps.shape[0]  # eq. 12-13: the other rows count with w_a = 0
            fraction = index.numel() / eps.shape[0]
        output.loss = output.loss + self.augment_weight * loss_augmented
        output.logs.update({"loss_augmented": loss_augmented.detach(), "augmented_fraction": fraction})
        return output

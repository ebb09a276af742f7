"""UniSegDiff's three timestep stages (paper §2.2): training targets, loss weights, inference chain.

=====================  ============  ==================  =====================  ===========
stage                  timesteps     network sees t as   loss weights α : β     inference
=====================  ============  ==================  =====================  ===========
rapid segmentation     t > 599       999                 1 : 3  (x₀ first)      one jump 999 → 599 (x₀ branch)
probabilistic model.   300 … 599     t                   1 : 1                  DDIM every 30 steps, both branches
denoising refinement   t ≤ 299       0                   3 : 1  (ε first)       one jump 299 → 0 (ε branch)
=====================  ============  ==================  =====================  ===========

with L = α·L_noise + β·(L_dice + L_ce) (eq. 1). The ratios are normalised to α + β = 1, so every
stage weighs the same in total and only the balance between the two targets moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from laworder.errors import ConfigError

STAGE_NAMES = ("rapid_segmentation", "probabilistic_modeling", "denoising_refinement")


@dataclass(frozen=True)
class StagePlan:
    """The paper's thresholds, loss ratios and jump interval in one place.

    Attributes:
        num_train_timesteps: T (1000); timesteps run 0 … T−1.
        high_threshold: t above it is the rapid segmentation stage (599).
        low_threshold: t at or below it is the denoising refinement stage (299).
        noise_ratio, mask_ratio: α and β per stage (rapid, probabilistic, refinement):
            1:3, 1:1, 3:1.
        ddim_interval: DDIM step between ``high_threshold`` and ``low_threshold`` (30).
    """

    num_train_timesteps: int = 1000
    high_threshold: int = 599
    low_threshold: int = 299
    noise_ratio: tuple[float, float, float] = (1.0, 1.0, 3.0)
    mask_ratio: tuple[float, float, float] = (3.0, 1.0, 1.0)
    ddim_interval: int = 30

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold < self.high_threshold < self.num_train_timesteps - 1:
            raise ConfigError(
                f"need 0 <= low_threshold < high_threshold < num_train_timesteps - 1, got "
                f"{self.low_threshold}, {self.high_threshold}, {self.num_train_timesteps}"
            )
        if self.ddim_interval < 1:
            raise ConfigError(f"ddim_interval must be >= 1, got {self.ddim_interval}")
        ratios = (*self.noise_ratio, *self.mask_ratio)
        if len(self.noise_ratio) != 3 or len(self.mask_ratio) != 3 or min(ratios) < 0:
            raise ConfigError(f"noise_ratio and mask_ratio need three non-negative values, got {self.noise_ratio}, {self.mask_ratio}")
        if any(a + b <= 0 for a, b in zip(self.noise_ratio, self.mask_ratio)):
            raise ConfigError(f"every stage needs alpha + beta > 0, got {self.noise_ratio}, {self.mask_ratio}")

    @property
    def max_timestep(self) -> int:
        return self.num_train_timesteps - 1

    def stage_of(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``B`` timesteps -> stage index 0 (rapid), 1 (probabilistic) or 2 (refinement)."""
        return (timesteps <= self.high_threshold).long() + (timesteps <= self.low_threshold).long()

    def network_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timestep the denoiser is told: 999 in the rapid stage, 0 in the refinement stage,
        ``t`` in between (the noise level itself stays ``t``)."""
        top = torch.full_like(timesteps, self.max_timestep)
        return torch.where(timesteps > self.high_threshold, top,
                           torch.where(timesteps <= self.low_threshold, torch.zeros_like(timesteps), timesteps))

    def loss_weights(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, β) per sample for eq. 1, normalised to α + β = 1."""
        noise = torch.tensor(self.noise_ratio, dtype=torch.float32, device=timesteps.device)
        mask = torch.tensor(self.mask_ratio, dtype=torch.float32, device=timesteps.device)
        stage = self.stage_of(timesteps)
        total = noise[stage] + mask[stage]
        return noise[stage] / total, mask[stage] / total

    def chain_timesteps(self) -> tuple[int, ...]:
        """Where one sampling chain stands: 999, 599, 569, …, 329, 299.

        The 11 moves between them are the paper's "eleven steps": the rapid jump and ten DDIM
        steps. Each chain then ends with the refinement jump 299 → 0 that produces a sample.
        """
        middle = list(range(self.high_threshold, self.low_threshold, -self.ddim_interval))
        return (self.max_timestep, *middle, self.low_threshold)

"""The DDIM sampler with classifier-free guidance on the image token and on the mask.

Below both ``synth.sampler`` (runs and pools on disk) and ``synth.pretrained`` (shipped
generators), which each build one.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
import torch

from laworder.errors import ConfigError, DataError
from laworder.synth.backbones import LESION_TOKEN, NULL_TOKEN, Backbone


def check_sampling_args(steps: int, guidance_scale: float, eta: float = 0.0, num_train_timesteps: int = 1000,
                        mask_guidance: float = 1.0) -> None:
    """Validate DDIM settings.

    ``guidance_scale`` g (classifier-free guidance on the image token) and ``mask_guidance`` s
    (guidance on the ControlNet's mask) must be finite and ≥ 0; 1 switches either off (see
    ``MaskConditionedSampler``), 0 drops its condition (g = 0: the null token only; s = 0:
    no ControlNet).

    Raises:
        ConfigError: steps outside 1..num_train_timesteps, a guidance scale < 0 or not finite,
            eta outside [0, 1].
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_train_timesteps:
        raise ConfigError(f"steps must be an integer in 1..{num_train_timesteps}, got {steps!r}")
    for name, value in (("guidance_scale", guidance_scale), ("mask_guidance", mask_guidance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0.0:
            raise ConfigError(f"{name} must be a finite number >= 0 (1 = off), got {value!r}")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta must be in [0, 1] (0 = deterministic DDIM), got {eta!r}")


def mask_seed(base_seed: int, stem: str) -> int:
    """The per-mask seed: ``base_seed + crc32(stem)`` (stable across runs and platforms)."""
    return int(base_seed) + zlib.crc32(stem.encode("utf-8"))


class MaskConditionedSampler:
    """DDIM (η = 0 by default) + classifier-free guidance on the image token and on the mask.

    With ε̂(c, m) the prediction for token c (``LESION_TOKEN`` or the null token ∅) with the
    ControlNet fed mask m, and ε̂(c, –) the UNet alone (no ControlNet residuals)::

        ε̂ = ε̂(c, m) + (g − 1)(ε̂(c, m) − ε̂(∅, m)) + (s − 1)(ε̂(c, m) − ε̂(c, –))

    The first two terms are the paper's CFG (= ε̂(∅, m) + g(ε̂(c, m) − ε̂(∅, m)), §4.1.2); the
    mask is in both of its branches, so g alone cannot strengthen mask following. The third
    term guides on the mask itself: s = 1 leaves today's sampler unchanged (no extra pass),
    s > 1 pushes away from what the base UNet predicts without the mask.

    Args:
        backbone: a backbone with its sampling modules loaded.
        steps: DDIM steps (50). guidance_scale: g ≥ 0 (10.0, paper §4.1.2). eta: DDIM η (0).
        batched_cfg: run the conditional and unconditional passes as one batch of 2B (True),
            or as two passes (False, for the benchmark).
        mask_guidance: s ≥ 0 (1 = off).
    """

    def __init__(self, backbone: Backbone, steps: int = 50, guidance_scale: float = 10.0, eta: float = 0.0,
                 batched_cfg: bool = True, mask_guidance: float = 1.0) -> None:
        num_train = int(backbone.scheduler_config.get("num_train_timesteps", 1000))
        check_sampling_args(steps, guidance_scale, eta, num_train, mask_guidance)
        self.backbone = backbone
        self.steps, self.guidance_scale, self.eta = int(steps), float(guidance_scale), float(eta)
        self.mask_guidance = float(mask_guidance)
        self.batched_cfg = batched_cfg

    def guided_noise(self, sample: torch.Tensor, timestep: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        eps, eps_cond = self._token_guided_noise(sample, timestep, hint)
        if self.mask_guidance == 1.0:
            return eps  # exactly the paper's sampler: no mask-free pass
        cond = torch.full((sample.shape[0],), LESION_TOKEN, device=sample.device)
        eps_no_mask = self.backbone.predict_noise(sample, timestep, None, cond)
        return eps + (self.mask_guidance - 1.0) * (eps_cond - eps_no_mask)

    def _token_guided_noise(self, sample: torch.Tensor, timestep: torch.Tensor, hint: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the paper's CFG ε̂(∅, m) + g(ε̂(c, m) − ε̂(∅, m)), the conditional ε̂(c, m))."""
        batch = sample.shape[0]
        cond = torch.full((batch,), LESION_TOKEN, device=sample.device)
        if self.guidance_scale == 1.0:
            eps_cond = self.backbone.predict_noise(sample, timestep, hint, cond)
            return eps_cond, eps_cond
        uncond = torch.full((batch,), NULL_TOKEN, device=sample.device)
        if self.batched_cfg:
            both = self.backbone.predict_noise(
                torch.cat([sample, sample]), timestep, torch.cat([hint, hint]), torch.cat([uncond, cond])
            )
            eps_uncond, eps_cond = both.chunk(2)
        else:
            eps_uncond = self.backbone.predict_noise(sample, timestep, hint, uncond)
            eps_cond = self.backbone.predict_noise(sample, timestep, hint, cond)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond), eps_cond

    @torch.no_grad()
    def sample(self, masks: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``B×1×H×W`` masks at the backbone resolution -> images ``B×C×H×W`` in [-1, 1]."""
        backbone = self.backbone
        size = backbone.resolution
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[-2:] != (size, size):
            raise DataError(f"masks must be B×1×{size}×{size}, got {tuple(masks.shape)}")
        if len(seeds) != masks.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {masks.shape[0]} masks")
        device = masks.device
        shape = (backbone.target_channels, backbone.target_size, backbone.target_size)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        scheduler = backbone.sampling_scheduler()
        scheduler.set_timesteps(self.steps)
        sample = noise * scheduler.init_noise_sigma
        hint = backbone.mask_hint(masks)
        for timestep in scheduler.timesteps:
            eps = self.guided_noise(sample, timestep.to(device), hint)
            step_generator = generators if self.eta > 0 else None
            sample = scheduler.step(eps, timestep, sample, eta=self.eta, generator=step_generator).prev_sample
        return backbone.decode(sample)

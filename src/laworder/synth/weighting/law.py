"""LAW: learnable adaptive weighting (paper §3.1.2, eq. 3-10)."""

from __future__ import annotations

import torch
from torch import nn

from laworder.synth.weighting.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    ratio_prior,
    weight_stats,
    weighted_mean,
)


class DeltaNet(nn.Module):
    """φ of eq. 4: three 3×3 convolutions (``hidden`` channels) on [ε̂, m] -> one logit map.

    The last convolution starts at zero, so δ = σ(0) = 0.5 and μ = 1 everywhere at the start:
    LAW begins as the normalised ratio prior, as paper Fig. 8 shows ("starts nearly uniform").
    """

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels + 1, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, prediction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([prediction, mask], dim=1))


def soft_dice_loss(delta: torch.Tensor, mask: torch.Tensor, smooth: float = 1e-6) -> torch.Tensor:
    """Eq. 9 per sample, averaged over the batch: 1 − (2Σδm + ε_s) / (Σδ + Σm + ε_s)."""
    dims = (1, 2, 3)
    overlap = (delta * mask).sum(dims)
    total = delta.sum(dims) + mask.sum(dims)
    return (1.0 - (2.0 * overlap + smooth) / (total + smooth)).mean()


class LawObjective(Objective):
    """LAW loss L_total = L_S + λ_dice · L_dice (eq. 10).

    Steps (equation numbers of paper §3.1.2)::

        w_ratio = m(1 − r) + (1 − m) r                          (3)  uniform for empty/full masks
        δ       = σ(φ(sg[ε̂], m) / τ)                            (4)  ε̂ enters φ detached
        μ       = 1 + γ(2δ − 1)                                 (5)
        w_adapt = w_ratio ⊙ μ                                   (6)
        w_final = clamp(w_adapt / mean_hw(w_adapt), w_min, w_max)  (7)  mean per sample
        L_S     = mean(w_final ⊙ (ε̂ − ε)²)                      (8)  broadcast over channels
        L_dice  = 1 − (2Σδm + ε_s) / (Σδ + Σm + ε_s)            (9)

    Gradients: the denoiser receives gradient only through (ε̂ − ε)² (φ sees ε̂ detached).
    φ is trained by L_dice and, as eq. 8 has no stop-gradient on w_final, by L_S through
    w_final (``weight_gradient=False`` stops that path: φ then learns from L_dice only).
    φ is a training-only module: sampling never builds it.

    Args:
        channels: channels of ε̂ (3 for the pixel-space built-in backbone, 4 for SD latents).
        hidden: hidden channels of φ (32).
        tau: temperature τ (3.0). gamma: multiplier scale γ in [0, 1) (0.2).
        w_min, w_max: clamp bounds (1e-3, 2.0). lambda_dice: λ_dice (1.0). dice_smooth: ε_s (1e-6).
        normalise, clamp_min, clamp_max, dice, use_delta: Table 6 ablation switches (all on =
            LAW). ``use_delta=False`` drops φ and δ (μ = 1), so also the Dice term.
        weight_gradient: let L_S train φ through w_final (True, eq. 8 as written).

    With a soft mask (``latent_mask=area``, values in [0, 1]) every step stays defined: eq. 3 is
    linear in m (r is the lesion fraction, exact under area averaging), φ sees the soft mask as its
    input channel, and eq. 9 is the soft Dice against it. Logs: ``w_clamped_fraction`` (share of
    all pixels the clamp changed) and ``w_at_max_lesion`` (share of the lesion at w_max).
    """

    def __init__(
        self,
        channels: int | None = 3,
        hidden: int = 32,
        tau: float = 3.0,
        gamma: float = 0.2,
        w_min: float = 1e-3,
        w_max: float = 2.0,
        lambda_dice: float = 1.0,
        dice_smooth: float = 1e-6,
        normalise: bool = True,
        clamp_min: bool = True,
        clamp_max: bool = True,
        dice: bool = True,
        use_delta: bool = True,
        weight_gradient: bool = True,
    ) -> None:
        super().__init__(channels)
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1) so that μ stays positive, got {gamma}")
        if not 0 < w_min < w_max:
            raise ValueError(f"need 0 < w_min < w_max, got w_min={w_min}, w_max={w_max}")
        if lambda_dice < 0:
            raise ValueError(f"lambda_dice must be >= 0, got {lambda_dice}")
        if use_delta and not (isinstance(channels, int) and channels > 0):
            raise ValueError(f"LAW needs the prediction's channel count to build φ, got channels={channels!r}")
        self.tau, self.gamma = float(tau), float(gamma)
        self.w_min, self.w_max = float(w_min), float(w_max)
        self.lambda_dice, self.dice_smooth = float(lambda_dice), float(dice_smooth)
        self.normalise, self.clamp_min, self.clamp_max = normalise, clamp_min, clamp_max
        self.use_dice = dice and use_delta
        self.weight_gradient = weight_gradient
        self.phi = DeltaNet(channels, hidden) if use_delta else None

    def weight_maps(self, eps_pred: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate of eq. 3-7 (``mask`` already at prediction resolution)."""
        w_ratio = ratio_prior(mask)
        maps: dict[str, torch.Tensor] = {"w_ratio": w_ratio}
        w_adapt = w_ratio
        if self.phi is not None:
            delta = torch.sigmoid(self.phi(eps_pred.detach(), mask) / self.tau)
            w_adapt = w_ratio * (1.0 + self.gamma * (2.0 * delta - 1.0))
            maps["delta"] = delta
        maps["w_adapt"] = w_adapt
        weights = w_adapt
        if self.normalise:
            # w_adapt > 0 (w_ratio > 0 after the empty/full fallback, μ ≥ 1 − γ > 0); the floor
            # only guards against underflow.
            weights = w_adapt / w_adapt.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        maps["w_normalised"] = weights
        if self.clamp_min or self.clamp_max:
            weights = weights.clamp(
                min=self.w_min if self.clamp_min else None, max=self.w_max if self.clamp_max else None
            )
        maps["w_final"] = weights
        return maps

    def compute(self, eps_pred, eps, mask, **extra) -> ObjectiveOutput:
        maps = self.weight_maps(eps_pred, mask)
        w_final = maps["w_final"] if self.weight_gradient else maps["w_final"].detach()
        loss_denoise = weighted_mean((eps_pred - eps).pow(2), w_final)
        loss = loss_denoise
        logs = {"loss_denoise": loss_denoise.detach()}
        if self.use_dice:
            loss_dice = soft_dice_loss(maps["delta"], mask, self.dice_smooth)
            loss = loss + self.lambda_dice * loss_dice
            logs["loss_dice"] = loss_dice.detach()
        logs.update(weight_stats(maps["w_final"], mask, "w_final"))
        if "delta" in maps:
            logs.update(weight_stats(maps["delta"], mask, "delta"))
        with torch.no_grad():
            clamped = (maps["w_final"] != maps["w_normalised"]).float().mean()
            # the clamp's share on the lesion: how much of the lesion sits at w_max (a soft mask
            # counts each cell by its lesion fraction); near 1, LAW is a fixed lesion weight
            at_max = (maps["w_normalised"] >= self.w_max).float() if self.clamp_max else torch.zeros_like(mask)
            lesion = mask.detach().float()
            logs["w_at_max_lesion"] = (at_max * lesion).sum() / lesion.sum().clamp_min(1.0)
        logs["w_clamped_fraction"] = clamped
        snapshot = {k: maps[k].detach() for k in ("w_ratio", "delta", "w_final") if k in maps}
        return ObjectiveOutput(loss, logs, snapshot)


@OBJECTIVES.register("law")
def law(**kwargs) -> LawObjective:
    """LAW: ratio prior modulated by a learned delta map, normalised, clamped, Dice (eq. 3-10)."""
    return LawObjective(**kwargs)

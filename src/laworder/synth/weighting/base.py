"""The interface every weighting objective implements, and the pieces they share.

An objective turns one denoiser prediction into the scalar training loss::

    out = objective(eps_pred, eps, mask, **extra)
    out.loss.backward()

Shapes (``h×w`` is the *prediction* resolution: pixels for the built-in backbone,
latents for Stable Diffusion):

- ``eps_pred``, ``eps``: ``B×C×h×w`` (prediction and regression target),
- ``mask``: ``B×1×H×W`` or ``B×K×H×W`` in {0, 1} at any resolution; reduced to one channel
  (any channel set) and resized to ``h×w`` by the objective's ``latent_mask`` mode
  (``LATENT_MASKS``; default ``nearest``, the paper's §3.1.2, keeps the mask binary; ``area``
  makes a soft mask in [0, 1], the fraction of lesion pixels in each prediction cell),
- ``extra``: what a method needs beyond that (``Objective.needs`` names the keys; the
  training task computes them: a teacher prediction, an image-branch prediction...).

Per-pixel weights are ``B×1×h×w`` and broadcast over the ``C`` channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError, DataError
from laworder.registry import Registry

OBJECTIVES: Registry["Objective"] = Registry("objective")

#: How a mask is resized to the prediction's ``h×w`` (``objective_kwargs.latent_mask``):
#: ``nearest``: ``F.interpolate(mode="nearest")``, the paper's and the default; it takes the top-left
#:     pixel of each cell (at ×4 the latent mask sits 1.5 px up-left of the image's);
#: ``center``: nearest sampling at each cell's centre (``mode="nearest-exact"``: pixel
#:     ``floor((i + ½)·H/h)``), binary and aligned with the image;
#: ``area``: the mean over each cell (``mode="area"``, i.e. adaptive average pooling), a soft mask
#:     in [0, 1]: the fraction of lesion pixels per cell when ``H`` is a multiple of ``h``.
LATENT_MASKS: dict[str, str] = {"nearest": "nearest", "center": "nearest-exact", "area": "area"}


@dataclass
class ObjectiveOutput:
    """``loss``: scalar to back-propagate; ``logs``: floats for metrics.jsonl (``compute`` may
    return 0-d tensors: ``Objective.forward`` converts them with one device sync);
    ``maps``: detached ``B×1×h×w`` maps for snapshots (``w_ratio``, ``delta``, ``w_final``)."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: validates and resizes the inputs, then calls ``compute``.

    Objectives are ``nn.Module`` s so that learned parts (LAW's φ) are trained and saved
    with the run; an objective without parameters is never handed to the optimizer.

    Args:
        channels: channels ``C`` of the prediction (objectives with learned parts need it).
    """

    #: keys of ``extra`` the training task must supply (e.g. ``("eps_teacher",)``).
    needs: ClassVar[tuple[str, ...]] = ()
    #: backbone keyword arguments this method implies unless the config sets them
    #: (read by ``objective_backbone_defaults``; e.g. Siamese-Diffusion's dense hint input).
    backbone_defaults: ClassVar[dict[str, Any]] = {}
    #: how ``forward`` resizes the mask to the prediction (a key of ``LATENT_MASKS``); set by
    #: ``create_objective(..., latent_mask=...)``, so every objective takes the option.
    latent_mask: str = "nearest"

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, **extra: Any) -> ObjectiveOutput:
        check_prediction_pair(eps_pred, eps)
        missing = [key for key in self.needs if key not in extra]
        if missing:
            raise ValueError(f"{type(self).__name__} needs extra input(s) {missing}; got {sorted(extra)}")
        for key in self.needs:
            check_prediction_pair(eps_pred, extra[key], name=key)
        mask = mask_at_prediction_resolution(mask, eps_pred, self.latent_mask)
        output = self.compute(eps_pred, eps, mask, **extra)
        output.logs = as_floats(output.logs)
        return output

    def compute(self, eps_pred: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, **extra: Any) -> ObjectiveOutput:
        raise NotImplementedError

    @property
    def has_parameters(self) -> bool:
        return any(True for _ in self.parameters())

    def augmentation_rows(self, timesteps: torch.Tensor, step: int | None, total_steps: int | None) -> torch.Tensor | None:
        """Samples (``B`` bool) the training task should also run through online augmentation
        at this step; ``None`` (the default) for methods without it."""
        return None


def create_objective(name: str, latent_mask: str = "nearest", **kwargs: Any) -> Objective:
    """``create_objective("law", channels=4, tau=3.0)``; unknown names list the known ones.

    ``latent_mask`` (every objective; ``objective_kwargs.latent_mask`` in a config) picks how the
    mask is resized to the prediction (``LATENT_MASKS``); ``nearest`` is the paper's.

    Raises:
        ConfigError: ``latent_mask`` is not one of ``LATENT_MASKS``.
    """
    mode = check_latent_mask(latent_mask)
    objective = OBJECTIVES.create(name, **kwargs)
    objective.latent_mask = mode
    return objective


def check_latent_mask(mode: Any) -> str:
    """``mode`` if it names a ``LATENT_MASKS`` entry, else ``ConfigError`` listing them."""
    if not isinstance(mode, str) or mode not in LATENT_MASKS:
        raise ConfigError(f"objective_kwargs.latent_mask must be one of {sorted(LATENT_MASKS)}, got {mode!r}")
    return mode


def objective_backbone_defaults(name: str) -> dict[str, Any]:
    """Backbone keyword arguments objective ``name`` implies (empty for most)."""
    return dict(getattr(OBJECTIVES.get(name), "backbone_defaults", {}))


# --- input checks ---------------------------------------------------------------------------
def check_prediction_pair(eps_pred: torch.Tensor, other: torch.Tensor, name: str = "eps") -> None:
    if eps_pred.ndim != 4:
        raise ValueError(f"eps_pred must be B×C×h×w, got shape {tuple(eps_pred.shape)}")
    if other.shape != eps_pred.shape:
        raise ValueError(f"{name} shape {tuple(other.shape)} does not match eps_pred shape {tuple(eps_pred.shape)}")


def mask_at_prediction_resolution(mask: torch.Tensor, eps_pred: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """``B×K×H×W`` binary mask -> ``B×1×h×w`` float mask at the prediction resolution, resized
    by ``mode`` (``LATENT_MASKS``: binary for ``nearest``/``center``, in [0, 1] for ``area``).

    Raises:
        DataError: the mask is not 4-D, its batch differs from the prediction's, or it holds
            values other than 0 and 1 (binarise masks when loading them, not here).
    """
    if mask.ndim != 4:
        raise DataError(f"mask must be B×1×H×W, got shape {tuple(mask.shape)}")
    if mask.shape[0] != eps_pred.shape[0]:
        raise DataError(f"mask batch {mask.shape[0]} differs from prediction batch {eps_pred.shape[0]}")
    mask = mask.to(eps_pred.dtype)
    not_binary = (mask != 0) & (mask != 1)
    if bool(not_binary.any()):
        values = torch.unique(mask[not_binary])[:5].tolist()
        raise DataError(f"mask must hold only 0 and 1; found values such as {values}")
    if mask.shape[1] > 1:
        mask = mask.amax(dim=1, keepdim=True)
    return resize_mask(mask, eps_pred.shape[-2:], mode)


def resize_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str = "nearest") -> torch.Tensor:
    """``B×1×H×W`` float mask -> ``B×1×h×w`` by ``mode`` (``LATENT_MASKS``); unchanged at ``h×w``."""
    if mask.shape[-2:] == tuple(size):
        return mask
    # paper §3.1.2 resizes with nearest-neighbour (the default); see LATENT_MASKS for the others
    return F.interpolate(mask, size=tuple(size), mode=LATENT_MASKS[check_latent_mask(mode)])


# --- shared pieces --------------------------------------------------------------------------
def lesion_ratio(mask: torch.Tensor) -> torch.Tensor:
    """r = |m| / (h·w) per sample, ``B×1×1×1``."""
    return mask.mean(dim=(1, 2, 3), keepdim=True)


def ratio_prior(mask: torch.Tensor) -> torch.Tensor:
    """w_ratio = m(1 − r) + (1 − m) r (paper eq. 3; ArSDM), ``B×1×h×w``.

    An all-background or all-lesion mask makes the prior zero everywhere: that sample falls
    back to uniform weights (1) instead of dividing by zero later.
    """
    ratio = lesion_ratio(mask)
    prior = mask * (1.0 - ratio) + (1.0 - mask) * ratio
    degenerate = (ratio <= 0) | (ratio >= 1)
    return torch.where(degenerate, torch.ones_like(prior), prior)


def pixel_error(eps_pred: torch.Tensor, target: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Unreduced ``B×C×h×w`` error: squared (``l2``) or absolute (``l1``)."""
    if norm == "l2":
        return (eps_pred - target).pow(2)
    if norm == "l1":
        return (eps_pred - target).abs()
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def check_norm(norm: str) -> str:
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    return norm


def weighted_mean(error: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean(w ⊙ error) over B, C, h, w with ``B×1×h×w`` weights broadcast over channels."""
    if weights is None:
        return error.mean()
    return (weights * error).mean()


def weight_stats(weights: torch.Tensor, mask: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """Mean / max / min weight, and mean on lesion and on background pixels (for metrics.jsonl);
    a soft mask (``latent_mask=area``) weights each pixel by its lesion fraction ``m`` (lesion)
    and ``1 − m`` (background)."""
    with torch.no_grad():
        weights = weights.detach().float()
        lesion = mask.detach().float().expand_as(weights)
        lesion_pixels = lesion.sum().clamp_min(1.0)
        background_pixels = (1 - lesion).sum().clamp_min(1.0)
        return {
            f"{prefix}_mean": weights.mean(),
            f"{prefix}_max": weights.max(),
            f"{prefix}_min": weights.min(),
            f"{prefix}_lesion": (weights * lesion).sum() / lesion_pixels,
            f"{prefix}_background": (weights * (1 - lesion)).sum() / background_pixels,
        }


def as_floats(logs: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Scalar tensors -> floats with a single device-to-host copy (one sync per step, not twenty)."""
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([logs[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
    return {**{k: float(v) for k, v in logs.items() if not isinstance(v, torch.Tensor)}, **dict(zip(keys, values))}

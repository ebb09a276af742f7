"""Boundary metrics: HD95 and normalised surface Dice (``seg evaluate``), boundary F-score and
lesion-size bins for mask recovery (``bench/synth_fair.py``).

HD95 and NSD (MONAI's ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice``,
as nnU-Net and the polyp benchmarks report them) are measured in pixels of the grid the masks are
given on (``seg evaluate``: the model's ``image_size``²), spacing 1 px per axis:

* HD95: the larger of the two directed 95th percentiles of the distances from each boundary pixel
  of one mask to the nearest boundary pixel of the other (lower is better);
* NSD at tolerance τ px: the fraction of both masks' boundary pixels lying within τ of the other
  mask's boundary (in [0, 1], higher is better).

Empty-mask rule (MONAI returns nan/inf there): both empty -> HD95 0, NSD 1 (nothing to find,
nothing found); exactly one empty -> HD95 = the image diagonal √(H² + W²) (a finite worst case,
so means over images stay finite), NSD 0.

Boundary F-score (the DAVIS / BF-score idea): the boundary pixels of the prediction and of the
reference (a mask pixel with a 4-neighbour outside the mask) are matched within ``tolerance``
px (Chebyshev distance, a (2·tol+1)² square); precision = predicted boundary pixels near a
reference boundary pixel, recall = the reverse, F = 2PR / (P + R). Empty-mask rule as for Dice
(``laworder.metrics.overlap``): both empty → 1, exactly one empty → 0.

Lesion-size bins by the reference's lesion ratio r = |m| / HW: ``small`` r < 0.05,
``medium`` 0.05 ≤ r ≤ 0.15, ``large`` r > 0.15.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from laworder.errors import DataError

DEFAULT_NSD_TOLERANCE = 2.0  # px; the surface-Dice tolerance ``seg evaluate`` uses unless told
HD_PERCENTILE = 95
SIZE_BINS = (("small", 0.0, 0.05), ("medium", 0.05, 0.15), ("large", 0.15, 1.0))


def _binary(mask: Tensor, name: str) -> Tensor:
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise DataError(f"{name} must be B×1×H×W, got {tuple(mask.shape)}")
    return (mask > 0.5).float()


def boundary_map(masks: Tensor) -> Tensor:
    """``B×1×H×W`` {0, 1} -> boolean map of mask pixels with a 4-neighbour outside the mask
    (pixels outside the image count as outside)."""
    padded = F.pad(masks, (1, 1, 1, 1), value=0.0)
    neighbours = torch.stack([padded[..., 1:-1, :-2], padded[..., 1:-1, 2:], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]])
    return (masks > 0.5) & (neighbours.amin(dim=0) < 0.5)


def boundary_f_score(pred: Tensor, target: Tensor, tolerance: int = 2) -> Tensor:
    """Per-image boundary F-score within ``tolerance`` px; ``B`` floats in [0, 1].

    Raises:
        DataError: shapes differ or are not ``B×1×H×W``; ValueError: ``tolerance`` < 0.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 px, got {tolerance}")
    pred, target = _binary(pred, "pred"), _binary(target, "target")
    if pred.shape != target.shape:
        raise DataError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred_edge, target_edge = boundary_map(pred), boundary_map(target)
    kernel = 2 * tolerance + 1
    near_target = F.max_pool2d(target_edge.float(), kernel, stride=1, padding=tolerance) > 0.5
    near_pred = F.max_pool2d(pred_edge.float(), kernel, stride=1, padding=tolerance) > 0.5
    pred_count, target_count = pred_edge.sum(dim=(1, 2, 3)).float(), target_edge.sum(dim=(1, 2, 3)).float()
    precision = (pred_edge & near_target).sum(dim=(1, 2, 3)) / pred_count.clamp(min=1)
    recall = (target_edge & near_pred).sum(dim=(1, 2, 3)) / target_count.clamp(min=1)
    score = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    both_empty = (pred_count == 0) & (target_count == 0)
    one_empty = (pred_count == 0) ^ (target_count == 0)
    return torch.where(both_empty, torch.ones_like(score), torch.where(one_empty, torch.zeros_like(score), score))


def hd95_nsd_per_image(pred: Tensor, target: Tensor, tolerance: float = DEFAULT_NSD_TOLERANCE) -> tuple[Tensor, Tensor]:
    """HD95 (px) and normalised surface Dice at ``tolerance`` px of every image in a batch.

    Args:
        pred: predicted masks ``B×1×H×W``, bool or values in {0, 1}.
        target: reference masks, same shape.
        tolerance: NSD tolerance in pixels (>= 0).

    Returns:
        ``(hd95, nsd)``: two float32 CPU tensors of shape ``B``, with the module's empty-mask rule.

    Raises:
        DataError: shapes differ, are not ``B×1×H×W``, or a mask is not binary;
        ValueError: ``tolerance`` < 0 or not finite.
    """
    from laworder.metrics.overlap import _as_binary

    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"NSD tolerance must be a finite number of pixels >= 0, got {tolerance}")
    if pred.shape != target.shape:
        raise DataError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise DataError(f"expected masks of shape B×1×H×W, got {tuple(pred.shape)}")
    # the distance transforms run on the CPU (scipy) wherever the masks were computed
    pred_bin = _as_binary(pred.detach().cpu(), "pred")
    target_bin = _as_binary(target.detach().cpu(), "target")
    pred_any, target_any = pred_bin.flatten(1).any(1), target_bin.flatten(1).any(1)
    height, width = pred.shape[-2:]
    # empty-mask rule first; MONAI only sees images where both masks hold a pixel
    hd95 = torch.where(pred_any | target_any, math.hypot(height, width), 0.0)
    nsd = torch.where(pred_any | target_any, 0.0, 1.0)
    both = pred_any & target_any
    if bool(both.any()):
        from monai.metrics.hausdorff_distance import compute_hausdorff_distance
        from monai.metrics.surface_dice import compute_surface_dice

        pair = (pred_bin[both].double(), target_bin[both].double())
        with warnings.catch_warnings():
            # MONAI's own deprecation notice about an argument it passes itself (not ours to fix)
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
            hd95[both] = compute_hausdorff_distance(*pair, include_background=True,
                                                    percentile=HD_PERCENTILE)[:, 0].float().cpu()
            nsd[both] = compute_surface_dice(*pair, [float(tolerance)], include_background=True)[:, 0].float().cpu()
    return hd95.float(), nsd.float()


def size_bin(lesion_ratio: float) -> str:
    """``small`` (r < 0.05), ``medium`` (0.05 ≤ r ≤ 0.15) or ``large`` (r > 0.15)."""
    if lesion_ratio < 0.05:
        return "small"
    return "medium" if lesion_ratio <= 0.15 else "large"

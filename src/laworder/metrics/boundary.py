"""Boundary F-score and lesion-size bins for mask recovery (``bench/synth_fair.py``).

Boundary F-score (the DAVIS / BF-score idea): the boundary pixels of the prediction and of the
reference (a mask pixel with a 4-neighbour outside the mask) are matched within ``tolerance``
px (Chebyshev distance, a (2·tol+1)² square); precision = predicted boundary pixels near a
reference boundary pixel, recall = the reverse, F = 2PR / (P + R). Empty-mask rule as for Dice
(``laworder.metrics.overlap``): both empty → 1, exactly one empty → 0.

Lesion-size bins by the reference's lesion ratio r = |m| / HW: ``small`` r < 0.05,
``medium`` 0.05 ≤ r ≤ 0.15, ``large`` r > 0.15.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from laworder.errors import DataError

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


def size_bin(lesion_ratio: float) -> str:
    """``small`` (r < 0.05), ``medium`` (0.05 ≤ r ≤ 0.15) or ``large`` (r > 0.15)."""
    if lesion_ratio < 0.05:
        return "small"
    return "medium" if lesion_ratio <= 0.15 else "large"

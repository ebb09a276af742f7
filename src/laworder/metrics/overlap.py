"""Binary overlap metrics: per-image Dice/IoU, per-subset means, mean ± std over seeds.

The paper (§4) defines, for a predicted binary mask ``ŷ`` and a reference mask ``y``::

    Dice(ŷ, y) = 2|ŷ ∩ y| / (|ŷ| + |y|)        IoU(ŷ, y) = |ŷ ∩ y| / |ŷ ∪ y|

Both are computed per image and then averaged ("mDice", "mIoU"). Polyp benchmarks report
them per test subset (Kvasir, CVC-ClinicDB, ...) and "Mean Dice/IoU are obtained by
averaging the per-subset metrics" (§4.2.2), i.e. every subset weighs the same whatever
its size. :func:`summarise_subsets` does exactly that.

Empty-mask rule (the denominators above are 0 when a mask is empty):

* prediction and reference both empty → Dice = IoU = 1 (the segmenter correctly found
  nothing);
* exactly one of them empty → Dice = IoU = 0.

This is the common convention of polyp / lesion segmentation benchmarks (and of MONAI's
``DiceMetric(ignore_empty=False)``); it keeps lesion-free images in the mean instead of
silently dropping them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from laworder.errors import DataError

__all__ = [
    "SegmentationMeter",
    "dice_iou_per_image",
    "mean_std",
    "summarise_subsets",
    "threshold_logits",
]

METRIC_NAMES = ("dice", "iou")


def threshold_logits(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Turn segmenter logits into a boolean mask: ``sigmoid(logits) > threshold``.

    Args:
        logits: ``B×1×H×W`` raw model outputs (any shape works).
        threshold: probability cut-off in (0, 1); 0.5 is the paper's "thresholded binary
            masks" (§4.2.3).

    Returns:
        Boolean tensor with the shape of ``logits``.

    Raises:
        ValueError: ``threshold`` outside (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return torch.sigmoid(logits) > threshold


def _as_binary(mask: Tensor, name: str) -> Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise DataError(f"{name} has unsupported dtype {mask.dtype}")
    not_binary = (mask != 0) & (mask != 1)
    if bool(not_binary.any()):
        bad = mask[not_binary].flatten()[:3].tolist()
        raise DataError(
            f"{name} must be binary (bool or values in {{0, 1}}), found values such as "
            f"{bad}; threshold probabilities/logits first (threshold_logits)"
        )
    return mask != 0


def dice_iou_per_image(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Dice and IoU of every image in a batch, with the module's empty-mask rule.

    Args:
        pred: predicted masks ``B×1×H×W``, bool or values in {0, 1}.
        target: reference masks, same shape and encoding as ``pred``.

    Returns:
        ``(dice, iou)``, two float32 tensors of shape ``B`` (on ``pred``'s device).

    Raises:
        DataError: shapes differ, are not ``B×1×H×W``, or a mask is not binary.
    """
    if pred.shape != target.shape:
        raise DataError(
            f"pred and target shapes differ: pred {tuple(pred.shape)} vs target "
            f"{tuple(target.shape)}"
        )
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise DataError(f"expected masks of shape B×1×H×W, got {tuple(pred.shape)}")
    from monai.metrics import compute_dice, compute_iou

    pred_bin = _as_binary(pred, "pred").double()
    target_bin = _as_binary(target.to(pred.device), "target").double()
    # MONAI with ignore_empty=False is the empty-mask rule above (both empty -> 1, one empty -> 0);
    # float64 keeps pixel counts exact up to 2^53 (tests/test_metrics.py checks it against counting).
    dice = compute_dice(pred_bin, target_bin, include_background=True, ignore_empty=False)[:, 0]
    iou = compute_iou(pred_bin, target_bin, include_background=True, ignore_empty=False)[:, 0]
    return dice.float(), iou.float()


def mean_std(values: Iterable[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation of repeated runs (seeds, sampling runs).

    The default is the sample standard deviation (``ddof=1``), which is what "mean ± std
    over five seeded runs" usually reports. With a single value the spread is undefined
    and ``nan`` is returned as std (shown as such in reports, never as a fake 0).

    Args:
        values: the per-run scores.
        ddof: delta degrees of freedom; 1 = sample std, 0 = population std.

    Raises:
        DataError: ``values`` is empty or holds a non-finite number.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise DataError("mean_std needs at least one value, got none")
    if not np.isfinite(array).all():
        raise DataError(f"mean_std got non-finite values: {array.tolist()}")
    if array.size - ddof <= 0:
        return float(array.mean()), math.nan
    return float(array.mean()), float(array.std(ddof=ddof))


def summarise_subsets(per_subset: Mapping[str, Mapping[str, Sequence[float]]]) -> dict:
    """Mean of each metric per subset, then the unweighted mean over subsets.

    Args:
        per_subset: ``{subset: {metric: [per-image values]}}``, e.g.
            ``{"Kvasir": {"dice": [...], "iou": [...]}, "CVC-ClinicDB": {...}}``.
            Every subset must carry the same metric names.

    Returns:
        ``{"per_subset": {subset: {metric: mean, ..., "n_images": n}},
        "mean_over_subsets": {metric: mean of the subset means}}``. Subsets weigh the
        same regardless of their size (paper §4.2.2).

    Raises:
        DataError: no subsets, a subset without values, or differing metric names.
    """
    if not per_subset:
        raise DataError("summarise_subsets got no subsets")
    metric_names: list[str] | None = None
    summary: dict[str, dict[str, float]] = {}
    for subset, metrics in per_subset.items():
        names = sorted(metrics)
        if metric_names is None:
            metric_names = names
        elif names != metric_names:
            raise DataError(
                f"subset {subset!r} has metrics {names}, expected {metric_names} "
                "like the other subsets"
            )
        lengths = {len(values) for values in metrics.values()}
        if lengths == {0} or len(lengths) != 1:
            raise DataError(
                f"subset {subset!r} needs the same, non-zero number of values per metric; "
                f"got lengths { {m: len(v) for m, v in metrics.items()} }"
            )
        summary[subset] = {name: float(np.mean(metrics[name])) for name in names}
        summary[subset]["n_images"] = lengths.pop()
    assert metric_names is not None
    over_subsets = {
        name: float(np.mean([summary[subset][name] for subset in summary]))
        for name in metric_names
    }
    return {"per_subset": summary, "mean_over_subsets": over_subsets}


class SegmentationMeter:
    """Collects per-image Dice/IoU by subset during evaluation.

    Example::

        meter = SegmentationMeter()
        for images, masks in loader:
            meter.update(threshold_logits(model(images)), masks, subset="Kvasir")
        meter.summary()["mean_over_subsets"]["dice"]
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[float]]] = {}
        self._names: dict[str, list[str]] = {}

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        subset: str = "all",
        names: Sequence[str] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Score a batch of binary masks and file the per-image values under ``subset``.

        Args:
            pred: predicted binary masks ``B×1×H×W`` (see :func:`dice_iou_per_image`).
            target: reference masks, same shape.
            subset: test subset the batch belongs to.
            names: optional image identifiers (length ``B``) kept for per-image export.

        Returns:
            The batch's ``(dice, iou)`` tensors.
        """
        dice, iou = dice_iou_per_image(pred, target)
        if names is not None and len(names) != dice.numel():
            raise DataError(f"got {len(names)} names for a batch of {dice.numel()} masks")
        store = self._values.setdefault(subset, {name: [] for name in METRIC_NAMES})
        store["dice"].extend(dice.tolist())
        store["iou"].extend(iou.tolist())
        start = len(self._names.setdefault(subset, []))
        self._names[subset].extend(
            list(names) if names is not None else [str(start + i) for i in range(len(dice))]
        )
        return dice, iou

    def reset(self) -> None:
        """Forget everything collected so far."""
        self._values.clear()
        self._names.clear()

    def per_subset(self) -> dict[str, dict[str, list[float]]]:
        """Copy of the collected ``{subset: {"dice": [...], "iou": [...]}}`` values."""
        return {s: {m: list(v) for m, v in metrics.items()} for s, metrics in self._values.items()}

    def per_image(self) -> list[dict]:
        """One record per image: ``{"subset", "name", "dice", "iou"}``."""
        return [
            {"subset": subset, "name": name, "dice": dice, "iou": iou}
            for subset, metrics in self._values.items()
            for name, dice, iou in zip(self._names[subset], metrics["dice"], metrics["iou"])
        ]

    def summary(self) -> dict:
        """:func:`summarise_subsets` of everything collected."""
        return summarise_subsets(self._values)

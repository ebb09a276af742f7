"""Multi-class segmentation (K > 2 declared classes): loss, prediction and per-class scores.

Binary runs never come here: they keep the sigmoid head, BCE + Dice and the ``threshold``.
With K classes the network has K output channels (softmax), the loss is MONAI's ``DiceCELoss``
(softmax, one-hot target, Dice over the foreground classes as nnU-Net does, cross-entropy over
all), the prediction is the arg-max, and each foreground class is scored on its own with the
binary Dice/IoU (the empty-mask rule of ``laworder.metrics.overlap``: an image where a class is
neither present nor predicted scores 1 for it); ``dice``/``iou`` are the means over classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laworder.data.labels import is_multiclass, output_channels
from laworder.metrics.boundary import hd95_nsd_per_image
from laworder.metrics.overlap import dice_iou_per_image


def model_class_kwargs(labels: list[str] | None) -> dict:
    """``num_classes`` for a multi-class run (K softmax channels); binary runs keep the model default (1)."""
    return {"num_classes": output_channels(labels)} if is_multiclass(labels) else {}


def dice_ce_loss(ce_weight: float = 1.0, dice_weight: float = 1.0) -> torch.nn.Module:
    """``loss(logits B×K×H×W, target B×1×H×W class indices)``: softmax Dice (foreground) + CE."""
    from monai.losses import DiceCELoss

    return DiceCELoss(softmax=True, to_onehot_y=True, include_background=False,
                      lambda_dice=dice_weight, lambda_ce=ce_weight)


def predict_labels(logits: Tensor) -> Tensor:
    """``B×K×H×W`` logits -> ``B×1×H×W`` class indices (arg-max)."""
    return logits.argmax(dim=1, keepdim=True)


def per_class_scores(pred: Tensor, target: Tensor, names: list[str],
                     nsd_tolerance: float | None = None) -> dict[str, dict[str, Tensor]]:
    """Per-image scores of every foreground class: ``{name: {"dice": B, "iou": B}}``, plus
    ``"hd95"``/``"nsd"`` (``laworder.metrics.boundary``) when ``nsd_tolerance`` (px) is given.

    ``pred`` and ``target`` are ``B×1×H×W`` class indices (any numeric dtype).
    """
    target = target.to(pred.device).round().long()
    pred = pred.long()
    scores = {}
    for value, name in enumerate(names):
        if value == 0:
            continue
        dice, iou = dice_iou_per_image(pred == value, target == value)
        scores[name] = {"dice": dice, "iou": iou}
        if nsd_tolerance is not None:
            hd95, nsd = hd95_nsd_per_image(pred == value, target == value, nsd_tolerance)
            scores[name].update(hd95=hd95.to(dice.device), nsd=nsd.to(dice.device))
    return scores


def score_rows(scores: dict[str, dict[str, Tensor]]) -> list[dict[str, float]]:
    """Per-image rows ``{dice, iou, dice_<class>, iou_<class>...}`` (and ``hd95``/``nsd`` likewise
    when scored); each plain metric is the mean over the classes."""
    names = list(scores)
    metrics = list(scores[names[0]])
    stacked = {m: torch.stack([scores[n][m] for n in names], dim=1) for m in metrics}
    rows = []
    for b in range(stacked[metrics[0]].shape[0]):
        row = {m: float(stacked[m][b].mean()) for m in metrics}
        for k, name in enumerate(names):
            row.update({f"{m}_{name}": float(stacked[m][b, k]) for m in metrics})
        rows.append(row)
    return rows

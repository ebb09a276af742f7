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


def per_class_scores(pred: Tensor, target: Tensor, names: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-image Dice and IoU of every foreground class: ``{name: (dice B, iou B)}``.

    ``pred`` and ``target`` are ``B×1×H×W`` class indices (any numeric dtype).
    """
    target = target.to(pred.device).round().long()
    pred = pred.long()
    return {name: dice_iou_per_image(pred == value, target == value) for value, name in enumerate(names) if value > 0}


def score_rows(scores: dict[str, tuple[Tensor, Tensor]]) -> list[dict[str, float]]:
    """Per-image rows ``{dice, iou, dice_<class>, iou_<class>...}``; ``dice``/``iou`` = mean over classes."""
    names = list(scores)
    dice = torch.stack([scores[n][0] for n in names], dim=1)
    iou = torch.stack([scores[n][1] for n in names], dim=1)
    rows = []
    for b in range(dice.shape[0]):
        row = {"dice": float(dice[b].mean()), "iou": float(iou[b].mean())}
        for k, name in enumerate(names):
            row[f"dice_{name}"] = float(dice[b, k])
            row[f"iou_{name}"] = float(iou[b, k])
        rows.append(row)
    return rows

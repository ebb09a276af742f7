"""BCE + Dice (paper eq. 18), from MONAI."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


def bce_dice_loss(bce_weight: float = 1.0, dice_weight: float = 1.0) -> torch.nn.Module:
    """``loss(logits B×1×H×W, target B×1×H×W in {0,1})``: BCE-with-logits + soft Dice.

    MONAI's Dice is computed per sample (``batch=False``) with 1e-5 smoothing, so an empty
    target and an empty prediction give a loss near 0 instead of NaN.
    """
    return DiceCELoss(sigmoid=True, lambda_dice=dice_weight, lambda_ce=bce_weight)

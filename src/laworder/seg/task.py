"""Segmentation as a ``TrainTask`` for the shared training core."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from laworder.data.transforms import augment_batch
from laworder.metrics.overlap import dice_iou_per_image
from laworder.data.labels import is_multiclass
from laworder.seg.classes import dice_ce_loss, per_class_scores, predict_labels, score_rows
from laworder.seg.config import AugmentConfig
from laworder.seg.losses import bce_dice_loss
from laworder.training.task import StepOutput, TrainTask

logger = logging.getLogger(__name__)

# Validations in a row without one predicted-positive pixel before training warns of a dead head.
NO_POSITIVE_WARN_AFTER = 3


class SegTask(TrainTask):
    """images ``B×C×H×W`` in [0,1], masks ``B×1×H×W`` -> BCE+Dice on the model's logits.

    ``labels`` with K > 2 class names: masks hold class indices, the loss is softmax Dice-CE and
    validation scores each class (``laworder.seg.classes``); ``val_dice`` is their mean.
    """

    def __init__(self, model: nn.Module, augment: AugmentConfig, bce_weight: float = 1.0,
                 dice_weight: float = 1.0, threshold: float = 0.5, labels: list[str] | None = None):
        self.modules = {"model": model}
        self.augment = augment
        self.labels = list(labels) if is_multiclass(labels) else None
        self.loss_fn = dice_ce_loss(bce_weight, dice_weight) if self.labels else bce_dice_loss(bce_weight, dice_weight)
        self.threshold = threshold
        self.no_positive_streak = 0  # consecutive validations that predicted no positive pixel

    @property
    def channels_last(self) -> bool:
        """Whether the loop should train in channels_last memory (``LoopConfig.channels_last=None``):
        the model's ``prefers_channels_last``, set where it was measured to pay."""
        return bool(getattr(self.unwrapped("model"), "prefers_channels_last", False))

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        images, masks = augment_batch(
            batch["image"], batch["mask"], generator,
            hflip=self.augment.hflip, vflip=self.augment.vflip, rotate_degrees=self.augment.rotate_degrees,
        )
        if hasattr(self.unwrapped("model"), "training_loss"):
            # a model with its own objective (diffusion segmenters); called through forward so
            # that DDP wrappers see the call
            loss, logs = self.modules["model"](images, masks=masks, generator=generator)
            return StepOutput(loss=loss, logs=logs)
        logits = self.modules["model"](images)
        loss = self.loss_fn(logits, masks)
        # ORDER's per-sample confidence gates (batch mean per skip) for metrics.jsonl and the trackers
        gates = getattr(self.unwrapped("model"), "gate_values", {})
        return StepOutput(loss=loss, logs={f"gate_{index}": float(gate.float().mean()) for index, gate in gates.items()})

    def validate(self, loader: Iterable[dict[str, Any]]) -> dict[str, float]:
        if self.labels:
            return self._validate_classes(loader)
        model = self.unwrapped("model")
        dices, ious, losses = [], [], []
        positive, pixels = 0, 0
        for batch in loader:
            logits = model(batch["image"])
            losses.append(float(self.loss_fn(logits, batch["mask"])) * len(logits))
            pred = torch.sigmoid(logits) >= self.threshold
            positive, pixels = positive + int(pred.sum()), pixels + pred.numel()
            dice, iou = dice_iou_per_image(pred, batch["mask"] > 0.5)
            dices.append(dice.cpu())
            ious.append(iou.cpu())
        dice_all, iou_all = torch.cat(dices), torch.cat(ious)
        # A model that predicts nothing scores Dice 0 on every foreground image; say so instead of
        # letting it pass for a slow start (the dead output head of issue 11 looked exactly like this).
        self.no_positive_streak = self.no_positive_streak + 1 if positive == 0 else 0
        streak = self.no_positive_streak
        # once when the streak reaches the threshold, then every 10th validation: not every epoch
        if streak == NO_POSITIVE_WARN_AFTER or (streak > NO_POSITIVE_WARN_AFTER and streak % 10 == 0):
            logger.warning(
                "validation predicted no positive pixel for %d evaluations in a row: the model may be stuck "
                "(dead output head or collapsed features); check the learning rate, the data's masks, "
                "or the output-head init (model_kwargs.head_init)", self.no_positive_streak)
        return {"val_dice": float(dice_all.mean()), "val_iou": float(iou_all.mean()),
                "val_loss": sum(losses) / len(dice_all),
                "val_positive_fraction": positive / max(1, pixels),
                "val_no_positive_streak": self.no_positive_streak}

    def _validate_classes(self, loader: Iterable[dict[str, Any]]) -> dict[str, float]:
        model = self.unwrapped("model")
        rows, loss_sum = [], 0.0
        for batch in loader:
            logits = model(batch["image"])
            loss_sum += float(self.loss_fn(logits, batch["mask"])) * len(logits)
            rows += score_rows(per_class_scores(predict_labels(logits), batch["mask"], self.labels))
        logs = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
        return {f"val_{key}": value for key, value in logs.items()} | {"val_loss": loss_sum / len(rows)}

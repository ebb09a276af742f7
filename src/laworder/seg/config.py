"""Segmentation run configuration: the paper's Table 12 recipe is the default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from laworder.training.config import LoopConfig


@dataclass
class AugmentConfig:
    """Random flips and rotations (paper §4.2.2), applied per sample inside the training step."""

    hflip: bool = True
    vflip: bool = True
    rotate_degrees: float = 90.0


@dataclass
class SegTrainConfig:
    """One segmentation training run.

    ``data`` is a dataset folder in any layout ``laworder.data.load_dataset`` knows (pairs,
    PraNet polyps, BRISC, KiTS19 prepared slices) or ``procedural[:N[:SIZE[:SEED]]]``.
    ``extra_train`` adds pair folders (e.g. synthetic pools) to the training side only;
    validation stays real.
    """

    data: str = "procedural"
    layout: str = "auto"
    model: str = "order"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 256
    channels: int = 3
    val_fraction: float = 0.1
    split_seed: int | None = None  # defaults to loop.seed (one split per seed, as in the paper)
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    threshold: float = 0.5
    # Class names, index = label value. Empty: taken from the dataset's labels.json / dataset.json
    # (binary when it declares none) and saved here with the run. K > 2 names = multi-class.
    labels: list[str] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache: bool = True
    check_data: bool = True
    extra_train: list[str] = field(default_factory=list)
    extra_limit: int | None = None  # use at most this many extra pairs (dose-response)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(monitor="val_dice", monitor_mode="max"))

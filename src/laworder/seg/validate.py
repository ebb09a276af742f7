"""``check_seg_config``: everything about a segmentation run that can be checked before writing.

Called first by ``train_segmenter`` and ``run_protocol``: ranges, the model name and its keyword
arguments, the image size against the model's input divisor, and the extra pool folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from laworder.config import check_seed
from laworder.data.source import check_data_source  # noqa: F401  (part of this module's checks)
from laworder.errors import ConfigError, DataError
from laworder.resources import check_batch
from laworder.seg.config import SegTrainConfig
from laworder.training.validate import at_least, between, check_loop_config, one_of

if TYPE_CHECKING:  # torch only for the annotations: the value checks run before torch is imported
    from torch import nn


def build_checked_model(config: SegTrainConfig) -> nn.Module:
    """``create_model(config.model, ...)`` with bad keyword arguments reported as a ``ConfigError``."""
    from laworder.models import create_model
    from laworder.seg.classes import model_class_kwargs

    try:
        return create_model(config.model, in_channels=config.channels, **model_class_kwargs(config.labels),
                            **config.model_kwargs)
    except TypeError as exc:
        raise ConfigError(f"model_kwargs={config.model_kwargs!r} not accepted by model {config.model!r} ({exc})") from None


def check_image_size(model: nn.Module, image_size: int, model_name: str, where: str = "image_size") -> None:
    """``image_size`` must be a positive multiple of the model's input divisor (32 for most)."""
    from laworder.models.base import nearest_valid_size

    divisor = int(getattr(model, "input_divisor", 1))
    if image_size < divisor or image_size % divisor:
        raise ConfigError(f"{where}={image_size} does not fit model {model_name!r}: it needs a multiple of {divisor} "
                          f"(nearest: {nearest_valid_size(image_size, divisor)})")


def check_seg_values(config: SegTrainConfig) -> None:
    """Every check of ``config`` that needs no model (and no torch): loop, ranges, data folders.

    The command line runs it before importing the training code, so a bad value or a missing
    folder is answered at once; ``check_seg_config`` runs it again with the model checks.
    """
    check_loop_config(config.loop)
    one_of("channels", config.channels, (1, 3))
    at_least("image_size", config.image_size, 1)
    check_batch("loop.batch_size, image_size", config.loop.batch_size, config.image_size, config.channels)
    between("val_fraction", config.val_fraction, 0, 1, "[)")
    between("threshold", config.threshold, 0, 1, "()")
    at_least("bce_weight", config.bce_weight, 0)
    at_least("dice_weight", config.dice_weight, 0)
    if config.bce_weight == 0 and config.dice_weight == 0:
        raise ConfigError("bce_weight and dice_weight are both 0: the loss would be constant; set one > 0")
    at_least("extra_limit", config.extra_limit, 0, optional=True)
    check_seed("split_seed", config.split_seed, optional=True)
    at_least("augment.rotate_degrees", config.augment.rotate_degrees, 0)
    check_data_source(config.data)
    for folder in config.extra_train:
        if not Path(folder).is_dir():
            raise DataError(f"extra_train: {folder} is not a folder (expected a pair folder with images/ and masks/)")


def check_seg_config(config: SegTrainConfig) -> nn.Module:
    """Validate ``config`` (raising ``ConfigError`` / ``DataError`` naming the key); returns the
    model it describes, freshly built, so the caller need not build it twice."""
    from laworder.models.registry import MODELS

    check_loop_config(config.loop)
    MODELS.get(config.model)  # "unknown model ...; known: ..." before the other values
    check_seg_values(config)
    model = build_checked_model(config)
    check_image_size(model, config.image_size, config.model)
    return model

"""What every laworder segmenter shares: the input check and the output contract.

A model subclasses :class:`SegmentationModel` and implements ``forward_logits``; ``forward``
validates ``B×in_channels×H×W`` (H, W divisible by ``input_divisor``, as smp's
``check_input_shape``) and returns ``B×num_classes×H×W`` logits, or with ``deep_supervision`` the
list ``[final, aux_1, ...]`` with every auxiliary map resized to ``H×W``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


def nearest_valid_size(size: int, divisor: int) -> int:
    """The multiple of ``divisor`` closest to ``size`` (never below ``divisor``)."""
    return max(divisor, int(round(size / divisor)) * divisor)


def check_input_shape(x: torch.Tensor, in_channels: int, divisor: int = 32) -> None:
    """Validate a ``B×C×H×W`` input before it reaches the network.

    Raises:
        ValueError: ``x`` is not 4-D, has ``C != in_channels``, or ``H``/``W`` is not divisible
            by ``divisor`` (the message names the shape and the nearest valid size).
    """
    if torch.jit.is_tracing() or _is_compiling():
        return  # shapes are symbolic there; the eager call already validated them
    if x.ndim != 4:
        raise ValueError(f"expected a B×C×H×W input, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels, got shape {tuple(x.shape)}; "
            f"build the model with in_channels={x.shape[1]} or convert the images"
        )
    height, width = int(x.shape[2]), int(x.shape[3])
    if height % divisor or width % divisor:
        new_h, new_w = nearest_valid_size(height, divisor), nearest_valid_size(width, divisor)
        raise ValueError(
            f"expected image height and width divisible by {divisor}, got shape {tuple(x.shape)}; "
            f"resize or pad your images to the nearest valid size {new_h}x{new_w} "
            f"(shape {(x.shape[0], x.shape[1], new_h, new_w)})"
        )


class SegmentationModel(nn.Module):
    """Base class: ``B×in_channels×H×W -> logits B×num_classes×H×W`` (a list with deep supervision).

    Subclasses implement ``forward_logits(x) -> (logits, aux_logits)``; ``aux_logits`` is a list
    (empty without deep supervision), finest first, at any resolution.
    """

    input_divisor = 32
    aux_align_corners = False  # how auxiliary maps are resized, as in each reference

    def __init__(self, in_channels: int, num_classes: int, deep_supervision: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``B×in_channels×H×W -> B×num_classes×H×W`` logits (``[final, aux...]`` with deep supervision).

        Raises:
            ValueError: wrong channel count, or H/W not divisible by ``input_divisor`` (the message
                names the shape and the nearest valid size).
        """
        check_input_shape(x, self.in_channels, self.input_divisor)
        logits, aux_logits = self.forward_logits(x)
        if not self.deep_supervision:
            return logits
        size = logits.shape[-2:]
        return [logits] + [
            F.interpolate(aux, size=size, mode="bilinear", align_corners=self.aux_align_corners) for aux in aux_logits
        ]

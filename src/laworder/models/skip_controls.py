"""Attention controls for Table 8: SE and CBAM on the same skips ORDER refines.

Each replaces the GAG fusion on its skip with ``d + A(e)``: the encoder skip ``e`` is recalibrated
by a generic attention block and added to the decoder feature ``d``. Reduction 4 matches the C/4
hidden width of ORDER's confidence gate (the usual 16 would leave one hidden unit at C = 16-24).
Convs follow the backbone's N(0, 0.02) init.
"""

from __future__ import annotations

import torch
from torch import nn

from laworder.models.mk_unet import ChannelAttention, SpatialAttention, init_normal_


class SqueezeExcitationSkip(nn.Module):
    """``d + e · σ(W₂ ReLU(W₁ GAP(e)))`` (Hu et al., 2018), hidden width max(1, C / reduction)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.excite = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )
        init_normal_(self)

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return decoder + skip * self.excite(skip.mean(dim=(2, 3), keepdim=True))


class CBAMSkip(nn.Module):
    """``d + SA(CA(e))`` (Woo et al., 2018): channel attention, then 7×7 spatial attention."""

    def __init__(self, channels: int, reduction: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, ratio=reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return decoder + self.spatial(self.channel(skip))

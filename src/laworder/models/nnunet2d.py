"""``nnunet2d``: the heavy reference segmenter, an nnU-Net-style 2D plan on MONAI's ``DynUNet``.

The network is MONAI's ``DynUNet`` (the dynamic UNet MONAI ships as its nnU-Net
re-implementation), configured the way nnU-Net v2 plans a 2D network for 256² inputs:

* 3×3 convolutions everywhere, two conv-norm-act blocks per stage;
* the first stage keeps full resolution, each further stage halves it with a strided
  convolution (``strides = (1, 2, 2, 2, 2, 2)``: 256 → 8 at the bottleneck);
* 32 filters in the first stage, doubled per stage and capped at 512 (nnU-Net's 2D cap);
* instance norm (affine) + leaky ReLU (slope 0.01), transposed-convolution upsampling;
* deep supervision off by default, so ``forward`` returns the full-resolution logits only.

nnU-Net itself plans the depth from the dataset (down to a 4×4 bottleneck); here the depth
is fixed by ``strides`` so that the input divisor matches the other laworder segmenters (32).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from laworder.errors import ConfigError
from laworder.models.base import SegmentationModel
from laworder.models.registry import register_model

NNUNET_2D_STRIDES = (1, 2, 2, 2, 2, 2)
NNUNET_2D_BASE_FILTERS = 32
NNUNET_2D_MAX_FILTERS = 512  # nnU-Net caps 2D feature maps at 512


def plan_filters(num_stages: int, base_filters: int = NNUNET_2D_BASE_FILTERS,
                 max_filters: int = NNUNET_2D_MAX_FILTERS) -> tuple[int, ...]:
    """nnU-Net's width rule: ``base · 2^stage``, capped at ``max_filters``."""
    return tuple(min(base_filters * 2**stage, max_filters) for stage in range(num_stages))


class NNUNet2D(SegmentationModel):
    """nnU-Net-style 2D UNet (MONAI ``DynUNet``): ``B×in_channels×H×W -> logits B×num_classes×H×W``.

    Args:
        in_channels: image channels (3 for RGB).
        num_classes: output channels (logits).
        strides: per-stage strides; the first is 1 (full resolution), each 2 halves H and W.
            ``H`` and ``W`` must be divisible by their product (32 for the default plan) and
            the bottleneck must keep at least 2×2 pixels (instance norm needs more than one).
        filters: per-stage widths; default ``plan_filters(len(strides), base_filters, max_filters)``
            (32, 64, 128, 256, 512, 512).
        base_filters, max_filters: the width rule when ``filters`` is not given (use a small
            ``base_filters`` for smoke tests).
        kernel_size: convolution kernel of every stage (3).
        res_block: residual blocks in every stage (nnU-Net's ResEnc flavour) instead of plain ones.
        deep_supervision: also return ``deep_supr_num`` auxiliary maps in training mode
            (``[final, aux...]``, each resized to ``H×W`` by ``DynUNet``); eval mode returns
            ``[final]``.
        deep_supr_num: number of auxiliary outputs with deep supervision.

    Raises:
        ConfigError: inconsistent ``strides`` / ``filters``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, strides: Sequence[int] = NNUNET_2D_STRIDES,
                 filters: Sequence[int] | None = None, base_filters: int = NNUNET_2D_BASE_FILTERS,
                 max_filters: int = NNUNET_2D_MAX_FILTERS, kernel_size: int = 3, res_block: bool = False,
                 deep_supervision: bool = False, deep_supr_num: int = 1) -> None:
        super().__init__(in_channels, num_classes, deep_supervision)
        strides = tuple(int(s) for s in strides)
        if len(strides) < 2 or strides[0] != 1 or any(s not in (1, 2) for s in strides[1:]):
            raise ConfigError(f"strides must start with 1 and continue with 1s or 2s (at least two stages), got {strides}")
        filters = tuple(int(f) for f in filters) if filters is not None else plan_filters(len(strides), base_filters, max_filters)
        if len(filters) != len(strides) or min(filters) < 1:
            raise ConfigError(f"filters must give one positive width per stage ({len(strides)} stages), got {filters}")
        if deep_supervision and not 1 <= deep_supr_num <= len(strides) - 2:
            raise ConfigError(f"deep_supr_num must be in 1..{len(strides) - 2} for {len(strides)} stages, got {deep_supr_num}")
        self.strides, self.filters = strides, filters
        self.input_divisor = math.prod(strides)
        from monai.networks.nets import DynUNet  # imported on use: MONAI's nets package takes seconds to import

        self.net = DynUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=[kernel_size] * len(strides),
            strides=list(strides),
            upsample_kernel_size=list(strides[1:]),
            filters=list(filters),
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            res_block=res_block,
        )

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        bottleneck = 2 if torch.jit.is_tracing() else min(x.shape[-2:]) // self.input_divisor
        if bottleneck < 2:
            raise ValueError(
                f"input {tuple(x.shape)} leaves a {bottleneck}×{bottleneck} bottleneck after strides {self.strides}; "
                f"instance norm needs at least 2×2: use images of at least {2 * self.input_divisor} px "
                f"or fewer stages (e.g. strides={list(self.strides[:-1])})"
            )
        out = self.net(x)
        if out.ndim == 5:  # DynUNet stacks [final, aux...] on dim 1 in training with deep supervision
            return out[:, 0], list(out[:, 1:].unbind(dim=1))
        return out, []


@register_model("nnunet2d")
def nnunet2d(in_channels: int = 3, num_classes: int = 1, **kwargs) -> NNUNet2D:
    """nnU-Net-style 2D UNet (MONAI DynUNet, 6 stages, 32..512 filters, instance norm + leaky ReLU)."""
    return NNUNet2D(in_channels=in_channels, num_classes=num_classes, **kwargs)

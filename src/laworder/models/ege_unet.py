"""EGE-UNet (Ruan et al., MICCAI 2023), a compact baseline of Table 7.

Written from the authors' public definition (JCruan519/EGE-UNet, ``models/egeunet.py``): three conv
stages and three GHPA (group multi-axis Hadamard product attention) stages in the encoder, GHPA
then conv stages in the decoder, and a GAB (group aggregation bridge) on every skip, which mixes
the deeper bridged skip, the current skip and a 1-channel mask predicted from the decoder feature.

Differences from the reference, all outside the architecture: it returns logits (the reference
applies a sigmoid), the mask heads always run because the GABs consume their output (the reference
only works with ``gt_ds=True``), and ``deep_supervision`` only decides whether they are returned.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError
from laworder.models.base import SegmentationModel
from laworder.models.registry import register_model

EGE_UNET_CHANNELS = (8, 16, 24, 32, 48, 64)  # the authors' default: 53K params, 0.072 GMACs at 256²
# Doubling widths 16 -> 128, then 192, 256: 0.51M params and 0.62 GFLOPs (conv/linear, 2 × MACs)
# at 256², the two numbers Table 7 lists for EGE-UNet.
EGE_UNET_WIDE_CHANNELS = (16, 32, 64, 128, 192, 256)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over C of a ``B×C×...`` tensor (ConvNeXt's ``channels_first`` form)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        x = centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def _axis_mixer(conv: type[nn.Conv1d] | type[nn.Conv2d], channels: int) -> nn.Sequential:
    """Depthwise 3-tap conv → GELU → pointwise conv, the map-refining branch of GHPA."""
    return nn.Sequential(conv(channels, channels, 3, padding=1, groups=channels), nn.GELU(), conv(channels, channels, 1))


class GHPA(nn.Module):
    """Group multi-axis Hadamard product attention, ``B×C_in×H×W -> B×C_out×H×W`` (C_in % 4 == 0).

    After a LayerNorm, the four channel quarters are multiplied by learned maps on the (H, W),
    (C, H) and (C, W) planes (``param_size``² / ``param_size``-long parameters, bilinearly resized
    to the input and refined by a small conv) and, for the last quarter, passed through a
    1×1 → GELU → depthwise 3×3 conv; then LayerNorm → depthwise 3×3 → GELU → 1×1 to C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, param_size: int = 8) -> None:
        super().__init__()
        quarter = in_channels // 4
        self.params_hw = nn.Parameter(torch.ones(1, quarter, param_size, param_size))
        self.params_ch = nn.Parameter(torch.ones(1, quarter, param_size))
        self.params_cw = nn.Parameter(torch.ones(1, quarter, param_size))
        self.mix_hw = _axis_mixer(nn.Conv2d, quarter)
        self.mix_ch = _axis_mixer(nn.Conv1d, quarter)
        self.mix_cw = _axis_mixer(nn.Conv1d, quarter)
        self.local = nn.Sequential(
            nn.Conv2d(quarter, quarter, 1), nn.GELU(), nn.Conv2d(quarter, quarter, 3, padding=1, groups=quarter)
        )
        self.norm_in = ChannelsFirstLayerNorm(in_channels)
        self.norm_out = ChannelsFirstLayerNorm(in_channels)
        self.out = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels),
            nn.GELU(),
            nn.Conv2d(in_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hw, x_ch, x_cw, x_local = self.norm_in(x).chunk(4, dim=1)
        height, width = x_hw.shape[-2:]
        map_hw = self.mix_hw(F.interpolate(self.params_hw, size=(height, width), mode="bilinear", align_corners=True))
        map_ch = self.mix_ch(F.interpolate(self.params_ch, size=height, mode="linear", align_corners=True))
        map_cw = self.mix_cw(F.interpolate(self.params_cw, size=width, mode="linear", align_corners=True))
        x = torch.cat(
            [x_hw * map_hw, x_ch * map_ch.unsqueeze(-1), x_cw * map_cw.unsqueeze(-2), self.local(x_local)], dim=1
        )
        return self.out(self.norm_out(x))


class GAB(nn.Module):
    """Group aggregation bridge: fuse a deeper feature, a skip and a 1-channel mask into the skip.

    ``high`` (``B×C_high×h×w``) is projected to C_low and resized to the skip; the quarters of both,
    each with the mask appended, pass through LayerNorm + a depthwise 3×3 conv with dilation 1, 2, 5,
    7; LayerNorm + 1×1 conv merge them to ``B×C_low×H×W`` (C_low % 4 == 0).
    """

    def __init__(self, high_channels: int, low_channels: int, dilations: Sequence[int] = (1, 2, 5, 7)) -> None:
        super().__init__()
        self.pre_project = nn.Conv2d(high_channels, low_channels, 1)
        group = low_channels // 2 + 1  # a quarter of each stream plus the mask
        self.groups = nn.ModuleList(
            nn.Sequential(
                ChannelsFirstLayerNorm(group), nn.Conv2d(group, group, 3, padding=d, dilation=d, groups=group)
            )
            for d in dilations
        )
        merged = 2 * low_channels + len(dilations)
        self.tail = nn.Sequential(ChannelsFirstLayerNorm(merged), nn.Conv2d(merged, low_channels, 1))

    def forward(self, high: torch.Tensor, low: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(self.pre_project(high), size=low.shape[-2:], mode="bilinear", align_corners=True)
        parts = [
            group(torch.cat([h, l, mask], dim=1))
            for group, h, l in zip(self.groups, high.chunk(4, dim=1), low.chunk(4, dim=1))
        ]
        return self.tail(torch.cat(parts, dim=1))


def _init_reference_(module: nn.Module) -> None:
    """The reference's ``_init_weights``: fan-out normal convs (Conv2d biases zeroed)."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv1d):
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (module.kernel_size[0] * module.out_channels)))
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class EGEUNet(SegmentationModel):
    """EGE-UNet: ``B×in_channels×H×W -> logits B×num_classes×H×W`` (H, W divisible by 32).

    Args:
        in_channels, num_classes: image channels and output logit channels.
        c_list: the six stage widths, each divisible by 4. ``(8, 16, 24, 32, 48, 64)`` is the
            authors' model (``ege_unet``, 53K params); ``(16, 32, 64, 128, 192, 256)`` is
            ``ege_unet_wide`` (0.51M params, the EGE-UNet row of the paper's Table 7).
        deep_supervision: also return the five 1-channel mask logits the GABs use, upsampled to
            ``H×W``: ``[final, mask_H/2, mask_H/4, ..., mask_H/32]``. Off: only the final logits.
    """

    aux_align_corners = True

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        c_list: Sequence[int] = EGE_UNET_CHANNELS,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(in_channels, num_classes, deep_supervision)
        c = tuple(int(v) for v in c_list)
        if len(c) != 6 or any(v < 4 or v % 4 for v in c):
            raise ConfigError(f"c_list must be six widths divisible by 4, got {c}")
        self.c_list = c

        def conv3(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, 3, padding=1)

        self.encoder = nn.ModuleList(
            [conv3(in_channels, c[0]), conv3(c[0], c[1]), conv3(c[1], c[2]), GHPA(c[2], c[3]), GHPA(c[3], c[4]), GHPA(c[4], c[5])]
        )
        self.encoder_norms = nn.ModuleList(nn.GroupNorm(4, v) for v in c[:5])
        # Decoder stage j runs at H/32 (j = 0, no upsampling) ... H/2 (j = 4); widths c5 -> c0.
        self.decoder = nn.ModuleList(
            [GHPA(c[5], c[4]), GHPA(c[4], c[3]), GHPA(c[3], c[2]), conv3(c[2], c[1]), conv3(c[1], c[0])]
        )
        self.decoder_norms = nn.ModuleList(nn.GroupNorm(4, v) for v in c[4::-1])
        self.bridges = nn.ModuleList(GAB(c[5 - j], c[4 - j]) for j in range(5))
        self.mask_heads = nn.ModuleList(nn.Conv2d(c[4 - j], 1, 1) for j in range(5))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.apply(_init_reference_)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        out = x
        for stage, norm in zip(self.encoder, self.encoder_norms):
            out = F.gelu(F.max_pool2d(norm(stage(out)), 2))
            skips.append(out)  # H/2 ... H/32
        out = F.gelu(self.encoder[-1](out))  # H/32, widest
        deeper = out

        masks = []
        for j, (stage, norm) in enumerate(zip(self.decoder, self.decoder_norms)):
            out = norm(stage(out))
            if j > 0:
                out = F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=True)
            out = F.gelu(out)
            mask = self.mask_heads[j](out)
            deeper = self.bridges[j](deeper, skips[4 - j], mask)
            out = out + deeper
            masks.insert(0, mask)  # finest first

        logits = F.interpolate(self.head(out), scale_factor=2.0, mode="bilinear", align_corners=True)
        return logits, masks


@register_model("ege_unet")
def ege_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> EGEUNet:
    """EGE-UNet as its authors define it (c_list 8-16-24-32-48-64): 53K params, 0.14 GFLOPs at 256²."""
    return EGEUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("ege_unet_wide")
def ege_unet_wide(in_channels: int = 3, num_classes: int = 1, **kwargs) -> EGEUNet:
    """EGE-UNet widened to c_list 16-32-64-128-192-256: 0.51M params, 0.62 GFLOPs, as in Table 7."""
    kwargs.setdefault("c_list", EGE_UNET_WIDE_CHANNELS)
    return EGEUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)

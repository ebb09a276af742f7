"""ControlNet hint encoders beside diffusers' own: Dense Hint Input and a latent-resolution one.

**Dense Hint Input** (Siamese-Diffusion §3.4, Fig. 2c): a ControlNet hint encoder for images.

ControlNet's sparse hint input (``ControlNetConditioningEmbedding``: a few plain convolutions)
suits masks and edges; a real image as the hint needs more capacity for texture and colour.
DHI stacks residual blocks of growing width (16, 32, 64, 128, 256 in the paper) and downsamples
with Swin's patch merging instead of strided convolutions; its last convolution is zero-initialised,
like ControlNet's, so training starts from the unconditioned UNet. The same module encodes the
mask (Mask-Diffusion) and the image (Image-Diffusion).

**Unshuffle** (``UnshuffleHintInput``): ControlNet's sparse encoder run at the latent resolution.
The sparse encoder convolves the mask at the image resolution and reaches the latent size with
strided convolutions, so on 4× latents most of its work is at 16× the latent pixel count (a quarter
of a 64² ControlNet step on CPU, ``bench/results/synth_speed.md``). Space-to-depth first
(``PixelUnshuffle``, as T2I-Adapter does) keeps every mask pixel, each as a channel of its latent
cell, and the same widths then run at the latent size. A different module from the sparse one
(its own weights): a model choice, trained and compared like one.

``hint_input="dense"`` / ``"unshuffle"`` on a backbone swaps it into the ControlNet
(``controlnet_cond_embedding``); ``"sparse"`` keeps diffusers' own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from laworder.errors import ConfigError

PAPER_DENSE_CHANNELS = (16, 32, 64, 128, 256)


class ResidualBlock(nn.Module):
    """conv-SiLU-conv + identity (1×1 conv when the width changes), then SiLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class PatchMerging(nn.Module):
    """Swin's 2× downsampling: each 2×2 patch's channels concatenated, LayerNorm, Linear 4C -> 2C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if height % 2 or width % 2:
            raise ValueError(f"patch merging needs even height and width, got {tuple(x.shape)}")
        x = x.permute(0, 2, 3, 1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x)).permute(0, 3, 1, 2)


class ZeroOutputHint(nn.Module):
    """``layers`` then a zero-initialised 3×3 conv to the ControlNet's first width, like
    ControlNet's own hint encoder: training starts from the unconditioned UNet.

    Args:
        layers: the encoder body (built by the subclass, so parameters initialise in its order).
        width: the body's output channels.
        out_channels: the ControlNet's first block width.
    """

    def __init__(self, layers: Sequence[nn.Module], width: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.layers(hint))


class DenseHintInput(ZeroOutputHint):
    """Hint ``B×conditioning_channels×H×W`` -> ``B×out_channels×(H/downsample)×(W/downsample)``.

    Args:
        conditioning_channels: channels of the hint image.
        out_channels: the ControlNet's first block width (what the embedding is added to).
        channels: residual-block widths, one block per entry (paper: 16, 32, 64, 128, 256).
        downsample: total downsampling, a power of two (8 for SD latents, 1 in pixel space); the
            2× steps are patch merges placed before the last blocks, as in the authors' code.

    Raises:
        ConfigError: ``downsample`` not a power of two, or more 2× steps than blocks after the first.
    """

    def __init__(self, conditioning_channels: int, out_channels: int, channels: Sequence[int] = PAPER_DENSE_CHANNELS,
                 downsample: int = 8) -> None:
        channels = tuple(int(c) for c in channels)
        merges = downsample.bit_length() - 1
        if downsample < 1 or downsample != 2**merges:
            raise ConfigError(f"downsample must be a power of two, got {downsample}")
        if not channels or min(channels) < 1 or merges > len(channels) - 1:
            raise ConfigError(f"dense hint channels {channels} cannot downsample {downsample}×: "
                              f"need at least {merges + 1} positive widths")
        layers: list[nn.Module] = [nn.Conv2d(conditioning_channels, channels[0], 3, padding=1), ResidualBlock(channels[0], channels[0])]
        for index in range(1, len(channels)):
            previous = channels[index - 1]
            if index >= len(channels) - merges:
                layers.append(PatchMerging(previous))
                previous *= 2
            layers += [nn.Conv2d(previous, channels[index], 3, padding=1), ResidualBlock(channels[index], channels[index])]
        super().__init__(layers, channels[-1], out_channels)


class UnshuffleHintInput(ZeroOutputHint):
    """Hint ``B×conditioning_channels×H×W`` -> ``B×out_channels×(H/downsample)×(W/downsample)``,
    every convolution at the output size.

    ``PixelUnshuffle(downsample)``, then diffusers' ``ControlNetConditioningEmbedding`` layout with
    stride 1: conv_in, SiLU, per further width a conv at the same width and one to the next
    (each followed by SiLU), and a zero-initialised conv_out, so training starts from the
    unconditioned UNet as with the sparse encoder.

    Args:
        conditioning_channels: channels of the hint image.
        out_channels: the ControlNet's first block width (what the embedding is added to).
        channels: widths (the backbone's ``hint_channels``: (16, 32, 96) for a 4× VAE).
        downsample: the VAE's downsampling (1 in pixel space: no space-to-depth).
    """

    def __init__(self, conditioning_channels: int, out_channels: int, channels: Sequence[int], downsample: int) -> None:
        channels = tuple(int(c) for c in channels)
        if downsample < 1:
            raise ConfigError(f"downsample must be a positive integer, got {downsample}")
        if not channels or min(channels) < 1:
            raise ConfigError(f"unshuffle hint channels must be positive widths, got {channels}")
        layers: list[nn.Module] = [nn.PixelUnshuffle(downsample),
                                   nn.Conv2d(conditioning_channels * downsample**2, channels[0], 3, padding=1), nn.SiLU()]
        for width, next_width in zip(channels, channels[1:]):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, next_width, 3, padding=1), nn.SiLU()]
        super().__init__(layers, channels[-1], out_channels)


def _dense(conditioning_channels: int, out_channels: int, controlnet: nn.Module, dense_channels: Sequence[int],
           downsample: int) -> nn.Module:
    return DenseHintInput(conditioning_channels, out_channels, dense_channels, downsample)


def _unshuffle(conditioning_channels: int, out_channels: int, controlnet: nn.Module, dense_channels: Sequence[int],
               downsample: int) -> nn.Module:
    return UnshuffleHintInput(conditioning_channels, out_channels,
                              controlnet.config.conditioning_embedding_out_channels, downsample)


#: hint input name -> builder of the module that replaces diffusers' own (``sparse``: kept as built)
HINT_BUILDERS = {"sparse": None, "dense": _dense, "unshuffle": _unshuffle}
HINT_INPUTS = tuple(HINT_BUILDERS)


def set_hint_input(controlnet: nn.Module, hint_input: str, conditioning_channels: int,
                   dense_channels: Sequence[int], downsample: int) -> nn.Module:
    """Give ``controlnet`` the sparse (diffusers' own, unchanged), the dense or the unshuffle
    hint input (the latter with the sparse encoder's widths)."""
    if hint_input not in HINT_BUILDERS:
        raise ConfigError(f"hint_input must be one of {HINT_INPUTS}, got {hint_input!r}")
    build = HINT_BUILDERS[hint_input]
    if build is not None:
        controlnet.controlnet_cond_embedding = build(
            conditioning_channels, controlnet.config.block_out_channels[0], controlnet, dense_channels, downsample)
    return controlnet

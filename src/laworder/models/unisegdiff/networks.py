"""UniSegDiff's networks (paper §2.1, Fig. 1): "2.5 UNets" and the dual cross-attention.

- ``ConditionalFeatureNet`` (CFENet): a UNet on the image that also segments (pre-training);
  its bottleneck and decoder outputs are the conditional features CF_1 … CF_L (finest first).
- ``DenoisingNet`` (DNet): one encoder over the noisy mask x_t that takes CF_i at level i
  through ``DualCrossAttention``, and two decoders: the x₀ branch (mask logits) and the ε branch.

Blocks are diffusers' (``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``, ``Attention``,
``Timesteps``/``TimestepEmbedding``); GroupNorm everywhere, so train/eval mode changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError


def check_widths(widths: Sequence[int], norm_groups: int) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2:
        raise ConfigError(f"widths needs at least two levels, got {widths}")
    bad = [w for w in widths if w < 1 or w % norm_groups]
    if bad:
        raise ConfigError(f"every width must be a positive multiple of norm_groups={norm_groups}, got {widths}")
    return widths


def _resnet(in_channels: int, out_channels: int, groups: int, temb_channels: int | None) -> nn.Module:
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, groups=groups)


def _head(channels: int, groups: int, out_channels: int) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))


class DualCrossAttention(nn.Module):
    """DCA (paper §2.3): two cascaded cross-attention blocks, the queries alternating.

    First the conditional features query the denoising features (CF' = CF + Attn(CF, DF)), then
    the denoising features query the updated conditional features (DF' = DF + Attn(DF, CF')).
    Queries keep full resolution; keys and values are average-pooled to at most
    ``kv_size × kv_size`` tokens (spatial-reduction attention, as in PVT), so the cost stays
    linear in the number of pixels at every level.
    """

    def __init__(self, channels: int, head_dim: int = 16, kv_size: int = 16) -> None:
        from diffusers.models.attention_processor import Attention

        super().__init__()
        heads = max(1, channels // head_dim)
        self.kv_size = int(kv_size)
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(4)])
        self.condition_queries = Attention(query_dim=channels, cross_attention_dim=channels, heads=heads, dim_head=channels // heads)
        self.denoising_queries = Attention(query_dim=channels, cross_attention_dim=channels, heads=heads, dim_head=channels // heads)

    def _tokens(self, x: torch.Tensor, pooled: bool) -> torch.Tensor:
        if pooled and max(x.shape[-2:]) > self.kv_size:
            x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], self.kv_size), min(x.shape[-1], self.kv_size)))
        return x.flatten(2).transpose(1, 2)  # B×(h·w)×C

    def forward(self, denoising: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if denoising.shape != condition.shape:
            raise ValueError(f"DCA needs features of one shape, got {tuple(denoising.shape)} and {tuple(condition.shape)}")
        batch, channels, height, width = denoising.shape
        condition_tokens = self._tokens(condition, False)
        reduced = self.norms[1](self._tokens(denoising, True))
        condition_tokens = condition_tokens + self.condition_queries(self.norms[0](condition_tokens), encoder_hidden_states=reduced)
        updated = condition_tokens.transpose(1, 2).reshape(batch, channels, height, width)
        denoising_tokens = self._tokens(denoising, False)
        reduced = self.norms[3](self._tokens(updated, True))
        denoising_tokens = denoising_tokens + self.denoising_queries(self.norms[2](denoising_tokens), encoder_hidden_states=reduced)
        return denoising_tokens.transpose(1, 2).reshape(batch, channels, height, width)


class UNetEncoder(nn.Module):
    """conv_in, then per level a ResnetBlock2D (optionally timestep-conditioned, optionally
    followed by DCA with that level's condition) and a strided-conv downsampling but at the last.
    Returns every level's output, finest first (the last one is the bottleneck)."""

    def __init__(self, in_channels: int, widths: Sequence[int], norm_groups: int, temb_channels: int | None = None,
                 attention: bool = False, head_dim: int = 16, kv_size: int = 16) -> None:
        from diffusers.models.downsampling import Downsample2D

        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        previous = [widths[0], *widths[:-1]]
        self.blocks = nn.ModuleList([_resnet(p, w, norm_groups, temb_channels) for p, w in zip(previous, widths)])
        self.downsamplers = nn.ModuleList([Downsample2D(w, use_conv=True) for w in widths[:-1]])
        self.attention = nn.ModuleList([DualCrossAttention(w, head_dim, kv_size) for w in widths]) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None,
                conditions: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        h = self.conv_in(x)
        levels = []
        for index, block in enumerate(self.blocks):
            h = block(h, temb)
            if self.attention is not None:
                h = self.attention[index](h, conditions[index])
            levels.append(h)
            if index < len(self.downsamplers):
                h = self.downsamplers[index](h)
        return levels


class UNetDecoder(nn.Module):
    """Upsample, concatenate the encoder level, ResnetBlock2D; then a GroupNorm-SiLU-conv head.
    Returns ``(output, features)`` with the bottleneck and every decoder level, finest first."""

    def __init__(self, widths: Sequence[int], norm_groups: int, out_channels: int, temb_channels: int | None = None) -> None:
        from diffusers.models.upsampling import Upsample2D

        super().__init__()
        self.upsamplers = nn.ModuleList([Upsample2D(widths[i + 1], use_conv=False) for i in range(len(widths) - 1)])
        self.blocks = nn.ModuleList([_resnet(widths[i + 1] + widths[i], widths[i], norm_groups, temb_channels)
                                     for i in range(len(widths) - 1)])
        self.head = _head(widths[0], norm_groups, out_channels)

    def forward(self, levels: Sequence[torch.Tensor], temb: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = levels[-1]
        features = [h]
        for index in reversed(range(len(self.blocks))):
            h = self.upsamplers[index](h)
            h = self.blocks[index](torch.cat([h, levels[index]], dim=1), temb)
            features.append(h)
        return self.head(h), features[::-1]


@dataclass
class ConditionOutput:
    logits: torch.Tensor  # B×1×H×W segmentation logits (the pre-training head)
    features: list[torch.Tensor]  # CF_1 … CF_L, finest first


class ConditionalFeatureNet(nn.Module):
    """CFENet: image -> (segmentation logits, conditional features CF_1 … CF_L)."""

    def __init__(self, in_channels: int, widths: Sequence[int], norm_groups: int, num_classes: int = 1) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, widths, norm_groups)
        self.decoder = UNetDecoder(widths, norm_groups, num_classes)

    def forward(self, images: torch.Tensor) -> ConditionOutput:
        logits, features = self.decoder(self.encoder(images))
        return ConditionOutput(logits, features)


class DenoisingNet(nn.Module):
    """DNet: noisy mask x_t (``B×1×H×W``, t) + CF_1 … CF_L -> x₀ logits and ε̂ (``B×1×H×W`` each).

    ``encode`` and the two decoders are separate so that a sampling step can run the shared
    encoder once and only the decoder each chain needs.
    """

    def __init__(self, widths: Sequence[int], norm_groups: int, head_dim: int = 16, kv_size: int = 16) -> None:
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        super().__init__()
        temb_channels = 4 * widths[0]
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], temb_channels)
        self.encoder = UNetEncoder(1, widths, norm_groups, temb_channels, attention=True, head_dim=head_dim, kv_size=kv_size)
        self.mask_decoder = UNetDecoder(widths, norm_groups, 1, temb_channels)
        self.noise_decoder = UNetDecoder(widths, norm_groups, 1, temb_channels)

    def encode(self, noisy: torch.Tensor, timesteps: torch.Tensor,
               conditions: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        temb = self.time_embedding(self.time_proj(timesteps).to(noisy.dtype))
        return self.encoder(noisy, temb, conditions), temb

    def decode_mask(self, levels: Sequence[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """The x₀ branch: logits of the clean mask (x̂₀ = 2σ(logits) − 1 in [-1, 1])."""
        return self.mask_decoder(levels, temb)[0]

    def decode_noise(self, levels: Sequence[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        """The ε branch."""
        return self.noise_decoder(levels, temb)[0]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        levels, temb = self.encode(noisy, timesteps, conditions)
        return self.decode_mask(levels, temb), self.decode_noise(levels, temb)

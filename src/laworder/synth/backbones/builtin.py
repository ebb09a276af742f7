"""The built-in backbone: a small pixel-space ControlNet-conditioned UNet trained from scratch.

Sized for CPU: 64-128 px images, attention only at the two lowest resolutions (self-attention
at the highest level dominated CPU time when measured), a learned two-token embedding in
place of a text encoder ("lesion" and the null token for classifier-free guidance).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from laworder.errors import ConfigError
from laworder.synth.backbones.base import BACKBONES, Backbone
from laworder.synth.backbones.dense_hint import set_hint_input


class ConditionEmbedding(nn.Module):
    """Token -> ``B×1×dim`` ``encoder_hidden_states`` (0 = null, 1 = lesion)."""

    def __init__(self, dim: int, num_tokens: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)[:, None, :]


def unet_config(
    image_channels: int,
    resolution: int,
    block_out_channels: Sequence[int],
    attention_levels: Sequence[int],
    layers_per_block: int,
    cross_attention_dim: int,
    attention_head_dim: int,
    norm_num_groups: int,
) -> dict[str, Any]:
    levels = len(block_out_channels)
    bad = [level for level in attention_levels if not 0 <= level < levels]
    if bad:
        raise ConfigError(f"attention_levels {list(attention_levels)} out of range for {levels} levels")
    bad_groups = [c for c in block_out_channels if c % norm_num_groups]
    if bad_groups:
        raise ConfigError(f"block_out_channels {list(block_out_channels)} must be divisible by norm_num_groups={norm_num_groups}")
    down = ["CrossAttnDownBlock2D" if level in attention_levels else "DownBlock2D" for level in range(levels)]
    up = ["CrossAttnUpBlock2D" if level in attention_levels else "UpBlock2D" for level in reversed(range(levels))]
    return dict(
        sample_size=resolution, in_channels=image_channels, out_channels=image_channels,
        block_out_channels=tuple(block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
    )


# Architecture presets; explicit keyword arguments override them.
PRESETS: dict[str, dict[str, Any]] = {
    # 4 levels (64→8 px at 64²), attention at 16² and 8² only
    "default": dict(block_out_channels=(32, 64, 64, 128), attention_levels=(2, 3), layers_per_block=1,
                    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8),
    # for tests and smoke runs: two levels, a few thousand parameters
    "tiny": dict(block_out_channels=(8, 16), attention_levels=(1,), layers_per_block=1,
                 cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8),
}


class BuiltinBackbone(Backbone):
    """UNet2DConditionModel + ControlNetModel + ConditionEmbedding, all trainable, pixel space.

    Args:
        preset: ``default`` or ``tiny`` (see ``PRESETS``); the arguments below override it.
        resolution: image size (divisible by 2^(levels−1); 64-128 intended).
        image_channels: 3 (RGB) or 1.
        block_out_channels: UNet widths per level, highest resolution first.
        attention_levels: levels with cross/self-attention (default: the two lowest resolutions).
        layers_per_block, cross_attention_dim, attention_head_dim, norm_num_groups: UNet shape.
        hint_channels: ControlNet hint encoder widths; one entry = no downsampling, so the mask
            enters at the image resolution (diffusers' default shrinks it 8× for latents).
        hint_input: ``sparse`` (ControlNet's hint encoder) or ``dense`` (Siamese-Diffusion's DHI,
            ``dense_hint.py``), the latter with residual blocks of ``dense_hint_channels``
            at the image resolution (no patch merging in pixel space).
        beta_schedule: DDPM schedule (``squaredcos_cap_v2`` suits small pixel-space images).
    """

    name = "builtin"
    sampling_modules = ("unet", "controlnet", "embedding")

    def __init__(
        self,
        resolution: int = 64,
        image_channels: int = 3,
        preset: str = "default",
        block_out_channels: Sequence[int] | None = None,
        attention_levels: Sequence[int] | None = None,
        layers_per_block: int | None = None,
        cross_attention_dim: int | None = None,
        attention_head_dim: int | None = None,
        norm_num_groups: int | None = None,
        hint_channels: Sequence[int] = (16,),
        hint_input: str = "sparse",
        dense_hint_channels: Sequence[int] = (16, 32),
        beta_schedule: str = "squaredcos_cap_v2",
        num_train_timesteps: int = 1000,
    ) -> None:
        from diffusers import ControlNetModel, UNet2DConditionModel

        if preset not in PRESETS:
            raise ConfigError(f"unknown builtin preset {preset!r}; known presets: {sorted(PRESETS)}")
        given = dict(block_out_channels=block_out_channels, attention_levels=attention_levels,
                     layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
                     attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)
        arch = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        block_out_channels = tuple(arch["block_out_channels"])
        factor = 2 ** (len(block_out_channels) - 1)
        if resolution % factor or resolution < factor:
            raise ConfigError(
                f"resolution {resolution} must be a positive multiple of {factor} for "
                f"{len(block_out_channels)} UNet levels; consider {max(factor, round(resolution / factor) * factor)}"
            )
        if image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {image_channels}")
        super().__init__(resolution, image_channels, dict(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            prediction_type="epsilon", clip_sample=True,
        ))
        self.hint_channels = tuple(hint_channels)
        unet = UNet2DConditionModel(**unet_config(image_channels, resolution, **arch))
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=self.hint_channels, conditioning_channels=image_channels
        )
        set_hint_input(controlnet, hint_input, image_channels, dense_hint_channels, downsample=1)
        self.modules = {"unet": unet, "controlnet": controlnet, "embedding": ConditionEmbedding(arch["cross_attention_dim"])}

    @property
    def target_channels(self) -> int:
        return self.image_channels

    @property
    def unet(self) -> nn.Module:
        return self.modules["unet"]

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images  # pixel space: the target is the image itself

    def decode(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.clamp(-1, 1)

    def condition_states(self, cond_tokens: torch.Tensor) -> torch.Tensor:
        return self.modules["embedding"](cond_tokens)

    def new_controlnet(self, conditioning_channels: int | None = None) -> nn.Module:
        from diffusers import ControlNetModel

        unet = self.modules["unet"]
        unet = getattr(unet, "module", unet)
        return ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=self.hint_channels,
            conditioning_channels=conditioning_channels or self.image_channels,
        )


@BACKBONES.register("builtin")
def builtin(**kwargs: Any) -> BuiltinBackbone:
    """Small pixel-space UNet + ControlNet + learned class embedding, trained from scratch (CPU)."""
    return BuiltinBackbone(**kwargs)

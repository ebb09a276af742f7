"""The built-in backbone: a small ControlNet-conditioned UNet, in pixel space or in the latent
space of a small VAE (``laworder synth pretrain-vae``).

Sized for CPU: 64-128 px images, attention only at the two lowest resolutions (self-attention
at the highest level dominated CPU time when measured), a learned two-token embedding in
place of a text encoder ("lesion" and the null token for classifier-free guidance).
Either trained jointly from scratch with its ControlNet, or built the SD way: the UNet and
embedding pretrained alone (``synth pretrain``), then frozen under a ControlNet made
``from_unet`` (``synth train --base``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from laworder.errors import ConfigError
from laworder.synth.backbones.base import BACKBONES, Backbone, decode_latents, encode_latents, hint_channels_for
from laworder.synth.backbones.dense_hint import PAPER_DENSE_CHANNELS, set_hint_input


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
    """UNet2DConditionModel + ControlNetModel + ConditionEmbedding (+ a frozen AutoencoderKL).

    Args:
        preset: ``default`` or ``tiny`` (see ``PRESETS``); the arguments below override it.
        resolution: image size (divisible by 2^(levels−1); 64-128 intended).
        image_channels: 3 (RGB) or 1.
        block_out_channels: UNet widths per level, highest resolution first.
        attention_levels: levels with cross/self-attention (default: the two lowest resolutions).
        layers_per_block, cross_attention_dim, attention_head_dim, norm_num_groups: UNet shape.
        hint_channels: ControlNet hint encoder widths; one entry = no downsampling, so the mask
            enters at the image resolution; default: as many strided steps as the VAE
            downsamples (``hint_channels_for``: (16,) in pixel space, (16, 32, 96) for 4×).
        hint_input: ``sparse`` (ControlNet's hint encoder), ``dense`` (Siamese-Diffusion's DHI,
            ``dense_hint.py``), the latter with residual blocks of ``dense_hint_channels``
            (default (16, 32) at the image resolution; on latents one more block per 2× patch merge),
            or ``unshuffle`` (the sparse encoder's widths at the latent resolution after
            space-to-depth: about a quarter less CPU per ControlNet step at 64², a different model).
        beta_schedule: DDPM schedule (default ``squaredcos_cap_v2`` in pixel space, which suits
            small images; SD's ``scaled_linear`` on latents).
        vae: a ``synth pretrain-vae`` run or a diffusers ``AutoencoderKL`` folder (or such a
            module, already built): diffuse in its latent space (frozen; latent size =
            resolution / its downsampling).
        controlnet: build the ControlNet now (False: the UNet alone, for ``synth pretrain``, or
            ``add_controlnet`` later, after the pretrained UNet is loaded).
    """

    name = "builtin"

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
        hint_channels: Sequence[int] | None = None,
        hint_input: str = "sparse",
        dense_hint_channels: Sequence[int] | None = None,
        beta_schedule: str | None = None,
        num_train_timesteps: int = 1000,
        vae: str | nn.Module | None = None,
        controlnet: bool = True,
    ) -> None:
        from diffusers import UNet2DConditionModel

        if preset not in PRESETS:
            raise ConfigError(f"unknown builtin preset {preset!r}; known presets: {sorted(PRESETS)}")
        given = dict(block_out_channels=block_out_channels, attention_levels=attention_levels,
                     layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
                     attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)
        arch = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        block_out_channels = tuple(arch["block_out_channels"])
        if image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {image_channels}")
        self.vae = None
        if vae is not None:
            from laworder.synth.vae import check_latent_fit, load_vae, vae_downsample

            # a module: an AutoencoderKL already built (a shipped generator's, ``synth.pretrained``)
            self.vae = vae.eval().requires_grad_(False) if isinstance(vae, nn.Module) else load_vae(vae)
            if int(self.vae.config.in_channels) != image_channels:
                raise ConfigError(f"the VAE at {vae} takes {self.vae.config.in_channels}-channel images, "
                                  f"not image_channels={image_channels}")
            self.downsample = vae_downsample(self.vae)
            target_size = check_latent_fit(resolution, self.vae, len(block_out_channels))
        else:
            self.downsample = 1
            target_size = resolution
            factor = 2 ** (len(block_out_channels) - 1)
            if resolution % factor or resolution < factor:
                raise ConfigError(
                    f"resolution {resolution} must be a positive multiple of {factor} for "
                    f"{len(block_out_channels)} UNet levels; consider {max(factor, round(resolution / factor) * factor)}"
                )
        # pixel space: a cosine schedule with clipping suits small images; latents (unbounded):
        # Stable Diffusion's scaled-linear schedule, no clipping
        schedule = dict(beta_schedule=beta_schedule or "squaredcos_cap_v2", clip_sample=True)
        if self.vae is not None:
            schedule = dict(beta_schedule=beta_schedule or "scaled_linear", beta_start=0.00085, beta_end=0.012,
                            clip_sample=False)
        super().__init__(resolution, image_channels, dict(
            num_train_timesteps=num_train_timesteps, prediction_type="epsilon", **schedule,
        ))
        if self.vae is not None:
            self.frozen["vae"] = self.vae
        self.hint_channels = tuple(hint_channels) if hint_channels is not None else hint_channels_for(self.downsample)
        # dense hint: (16, 32) at the image resolution; one more block per 2x patch merge on latents
        default_dense = PAPER_DENSE_CHANNELS[: max(2, self.downsample.bit_length())]
        self.hint_input = hint_input
        self.dense_hint_channels = tuple(dense_hint_channels) if dense_hint_channels is not None else default_dense
        self._target_size = target_size
        unet = UNet2DConditionModel(**unet_config(self.target_channels, target_size, **arch))
        self.modules = {"unet": unet}
        if controlnet:  # created before the embedding: the same initialisation as before latent mode
            self.add_controlnet()
        self.modules["embedding"] = ConditionEmbedding(arch["cross_attention_dim"])

    def add_controlnet(self) -> None:
        controlnet = self.new_controlnet()
        set_hint_input(controlnet, self.hint_input, self.image_channels, self.dense_hint_channels, self.downsample)
        self.modules["controlnet"] = controlnet

    @property
    def target_channels(self) -> int:
        return int(self.vae.config.latent_channels) if self.vae is not None else self.image_channels

    @property
    def target_size(self) -> int:
        return self._target_size

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.vae is None:
            return images  # pixel space: the target is the image itself
        return encode_latents(self.vae, images, generator)

    def decode(self, targets: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return targets.clamp(-1, 1)
        return decode_latents(self.vae, targets)

    def condition_states(self, cond_tokens: torch.Tensor) -> torch.Tensor:
        return self.network("embedding", bare=False)(cond_tokens)

    def new_controlnet(self, conditioning_channels: int | None = None) -> nn.Module:
        from diffusers import ControlNetModel

        return ControlNetModel.from_unet(
            self.network("unet"), conditioning_embedding_out_channels=self.hint_channels,
            conditioning_channels=conditioning_channels or self.image_channels,
        )


@BACKBONES.register("builtin")
def builtin(**kwargs: Any) -> BuiltinBackbone:
    """Small pixel-space UNet + ControlNet + learned class embedding, trained from scratch (CPU)."""
    return BuiltinBackbone(**kwargs)

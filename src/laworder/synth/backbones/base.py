"""The backbone interface: one network family, the noise schedule it trains with, and the
encoders around it. The training task and the sampler only talk to this interface.

Tensors: images ``B×C×H×W`` in [-1, 1]; masks ``B×1×H×W`` in {0, 1}; ``cond_tokens`` a long
``B`` vector, 1 = the condition (the "lesion" class or the text prompt), 0 = the null
condition used for classifier-free guidance.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import torch
from torch import nn

from laworder.errors import ConfigError
from laworder.registry import Registry

BACKBONES: Registry["Backbone"] = Registry("backbone")

NULL_TOKEN, LESION_TOKEN = 0, 1
SAMPLING_MODULES = ("unet", "controlnet", "embedding")
UNET_TRAINABLE = ("none", "decoder", "all")

Residuals = tuple[Sequence[torch.Tensor], torch.Tensor]


class Backbone(abc.ABC):
    """A ControlNet-conditioned denoiser and everything around it.

    ``modules`` holds the trainable networks by name (saved as ``<name>.safetensors``); the
    training task shares the dict and re-binds it after ``fit`` wraps them (``bind``), so
    every call looks its networks up there. ``frozen`` holds the networks moved to the device
    but never trained or saved by the run (a VAE, a text encoder, a pretrained UNet kept frozen).
    """

    name: str = ""
    #: whether the UNet comes pretrained (SD 1.5) rather than trained with the ControlNet
    pretrained_unet: bool = False

    def __init__(self, resolution: int, image_channels: int, scheduler_config: dict[str, Any]) -> None:
        self.resolution = resolution
        self.image_channels = image_channels
        self.scheduler_config = dict(scheduler_config)
        self.modules: dict[str, nn.Module] = {}
        self.frozen: dict[str, nn.Module] = {}

    # --- bookkeeping ------------------------------------------------------------------------
    def bind(self, modules: dict[str, nn.Module]) -> None:
        """Look networks up in ``modules`` from now on (after ``accelerator.prepare``)."""
        self.modules = modules

    def frozen_modules(self) -> dict[str, nn.Module]:
        return dict(self.frozen)

    @property
    def sampling_modules(self) -> tuple[str, ...]:
        """Modules a trained run saves that sampling needs (trained ones; the rest of ``modules``,
        LAW's φ or a teacher, is training-only; frozen ones come from where they were loaded)."""
        return tuple(name for name in SAMPLING_MODULES if name in self.modules)

    @property
    def has_controlnet(self) -> bool:
        return "controlnet" in self.modules

    def network(self, name: str, bare: bool = True) -> nn.Module:
        """A network by name, trained or frozen (``bare``: the module under a DDP wrapper)."""
        module = self.modules[name] if name in self.modules else self.frozen[name]
        return getattr(module, "module", module) if bare else module

    def freeze(self, name: str) -> None:
        """Move ``name`` from the trained modules to the frozen ones (no gradients, eval mode)."""
        if name in self.modules:
            self.frozen[name] = self.modules.pop(name).eval().requires_grad_(False)

    def set_unet_trainable(self, mode: str) -> None:
        """What of a pretrained UNet trains beside the ControlNet.

        ``none``: nothing (the paper's frozen UNet); ``decoder``: the up blocks and the output
        layers (ControlNet's ``sd_locked=False``, as Siamese-Diffusion and the adaptive-distillation
        code train); ``all``: the whole UNet.
        """
        if mode not in UNET_TRAINABLE:
            raise ConfigError(f"unet_trainable must be one of {UNET_TRAINABLE}, got {mode!r}")
        unet = self.network("unet")
        if mode == "none":
            self.modules.pop("unet", None)
            self.frozen["unet"] = unet.eval().requires_grad_(False)
            return
        unet.requires_grad_(mode == "all")
        if mode == "decoder":
            for part in (unet.up_blocks, unet.conv_norm_out, unet.conv_out):
                if part is not None:
                    part.requires_grad_(True)
        self.frozen.pop("unet", None)
        self.modules = {"unet": unet, **{k: v for k, v in self.modules.items() if k != "unet"}}

    def add_controlnet(self) -> None:
        """Create the mask ControlNet from the (possibly just loaded) UNet: ``from_unet`` copies
        the UNet encoder's weights, so load a pretrained UNet before calling this."""
        self.modules["controlnet"] = self.new_controlnet()

    @property
    @abc.abstractmethod
    def target_channels(self) -> int:
        """Channels of the diffusion target (pixels or latents) and of ε̂."""

    @property
    def target_size(self) -> int:
        """Spatial size of the diffusion target for ``resolution``."""
        return self.resolution

    def noise_scheduler(self):
        """``DDPMScheduler`` for training noise (1000 steps)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def sampling_scheduler(self):
        """``DDIMScheduler`` sharing the training schedule."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    # --- encoders ---------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> diffusion targets ``B×target_channels×s×s``."""

    @property
    def latent_vae(self) -> nn.Module | None:
        """The frozen VAE whose latents are the diffusion targets (None: pixel space)."""
        return getattr(self, "vae", None)

    @torch.no_grad()
    def latent_moments(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the VAE posterior's moments ``B×2C×s×s`` (mean, log-variance):
        deterministic, so ``laworder.synth.latents.LatentCache`` computes them once per image."""
        vae = self.latent_vae
        if vae is None:
            raise TypeError(f"the {self.name} backbone diffuses pixels: it has no VAE posterior to cache")
        return vae.encode(images.to(vae.dtype)).latent_dist.parameters

    def sample_latents(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior moments -> latent samples × ``scaling_factor``: what ``encode`` returns for the
        images the moments came from, drawing the same random numbers from ``generator``."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments).sample(generator=generator) * float(self.latent_vae.config.scaling_factor)

    @abc.abstractmethod
    def decode(self, targets: torch.Tensor) -> torch.Tensor:
        """Diffusion targets -> images in [-1, 1]."""

    @abc.abstractmethod
    def condition_states(self, cond_tokens: torch.Tensor) -> torch.Tensor:
        """``B`` tokens -> ``encoder_hidden_states`` ``B×L×D`` (learned class or text embedding)."""

    def mask_hint(self, masks: torch.Tensor) -> torch.Tensor:
        """ControlNet conditioning image for a mask: the mask repeated over the image channels."""
        return masks.to(torch.float32).expand(-1, self.image_channels, -1, -1)

    def image_hint(self, images: torch.Tensor) -> torch.Tensor:
        """ControlNet conditioning image for a real image (teacher / Siamese image branch)."""
        return (images.clamp(-1, 1) + 1.0) / 2.0

    # --- the denoiser -----------------------------------------------------------------------
    def control(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor, hint: torch.Tensor,
        controlnet: str = "controlnet",
    ) -> Residuals:
        """ControlNet residuals (down-block list, mid-block) for ``hint``."""
        down, mid = self.modules[controlnet](
            noisy, timesteps, encoder_hidden_states=states, controlnet_cond=hint, return_dict=False
        )
        return down, mid

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor, residuals: Residuals | None,
                unet_grad: bool = True) -> torch.Tensor:
        """UNet prediction with ControlNet residuals added (``residuals=None``: without any).

        ``unet_grad=False`` runs the UNet with its parameters detached: gradients still reach the
        inputs (the residuals, hence the ControlNet) but not the UNet, as through a throw-away
        copy of it (Siamese-Diffusion's θ′), without copying anything.
        """
        kwargs: dict = dict(encoder_hidden_states=states, return_dict=False)
        if residuals is not None:  # None: the base UNet alone (the sampler's mask-free branch)
            down, mid = residuals
            kwargs.update(down_block_additional_residuals=list(down), mid_block_additional_residual=mid)
        if unet_grad:
            return self.unet(noisy, timesteps, **kwargs)[0]
        unet = getattr(self.unet, "module", self.unet)  # the bare module under a DDP wrapper
        detached = {name: p.detach() for name, p in unet.named_parameters()}
        return torch.func.functional_call(unet, detached, (noisy, timesteps), kwargs)[0]

    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, mask_hint: torch.Tensor | None, cond_tokens: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ = UNet(z_t, t, c | ControlNet(z_t, t, c, hint)) for one batch; ``mask_hint=None``
        runs the UNet without ControlNet residuals (the base model's ε̂)."""
        states = self.condition_states(cond_tokens)
        residuals = None if mask_hint is None else self.control(noisy, timesteps, states, mask_hint)
        return self.denoise(noisy, timesteps, states, residuals)

    @property
    def unet(self) -> nn.Module:
        """The UNet (trainable or frozen)."""
        return self.network("unet", bare=False)

    @abc.abstractmethod
    def new_controlnet(self, conditioning_channels: int | None = None) -> nn.Module:
        """A fresh ControlNet of this backbone's shape (the adaptive-distillation teacher)."""

    def describe(self) -> dict[str, Any]:
        """Parameter counts per module, for logs and benchmarks."""
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in self.modules.items()}
        frozen = {name: sum(p.numel() for p in m.parameters()) for name, m in self.frozen_modules().items()}
        return {"backbone": self.name, "resolution": self.resolution, "trainable": counts, "frozen": frozen}


def hint_channels_for(downsample: int) -> tuple[int, ...]:
    """ControlNet hint-encoder widths that downsample a mask ``downsample``× (a power of two):
    SD's (16, 32, 96, 256) cut to log2(downsample) strided steps; (16,) in pixel space."""
    return (16, 32, 96, 256, 256)[: downsample.bit_length()]


@torch.no_grad()
def encode_latents(vae: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> VAE latent samples × ``scaling_factor`` (SD's convention)."""
    latent_dist = vae.encode(images.to(vae.dtype)).latent_dist
    return latent_dist.sample(generator=generator) * float(vae.config.scaling_factor)


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    return vae.decode(latents / float(vae.config.scaling_factor), return_dict=False)[0].clamp(-1, 1)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """``create_backbone("builtin", resolution=64)``; unknown names list the known ones."""
    return BACKBONES.create(name, **kwargs)

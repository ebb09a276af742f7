"""Stable Diffusion 1.5 + ControlNet from a local diffusers-format folder (paper §4.1.2).

Nothing is downloaded (``local_files_only=True``). The folder is the layout
``StableDiffusionPipeline.save_pretrained`` writes::

    <pretrained_path>/
      vae/config.json           + diffusion_pytorch_model.safetensors (or .bin)
      unet/config.json          + diffusion_pytorch_model.safetensors (or .bin)
      text_encoder/config.json  + model.safetensors (or pytorch_model.bin)
      tokenizer/vocab.json, tokenizer/merges.txt
      scheduler/scheduler_config.json   (optional; SD 1.5's schedule otherwise)
      controlnet/config.json    + diffusion_pytorch_model.safetensors   (optional)

VAE, UNet and text encoder are frozen; only the ControlNet trains (``unet_trainable`` in the synth config
unlocks the UNet decoder or all of it). Without a ControlNet
folder (``controlnet_path`` or ``<pretrained_path>/controlnet``) it is initialised from the
UNet encoder with ``ControlNetModel.from_unet``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from laworder.errors import ConfigError, MissingWeightsError
from laworder.synth.backbones.base import (
    BACKBONES, LESION_TOKEN, NULL_TOKEN, Backbone, decode_latents, encode_latents, hint_channels_for,
)
from laworder.synth.backbones.dense_hint import PAPER_DENSE_CHANNELS, set_hint_input

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
REQUIRED = {
    "vae": (("config.json",), DIFFUSERS_WEIGHTS),
    "unet": (("config.json",), DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), TRANSFORMERS_WEIGHTS),
    "tokenizer": (("vocab.json", "merges.txt"), ()),
}
# Stable Diffusion 1.5's scheduler_config.json, used when the folder has no scheduler/.
SD15_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)
HINT = "a diffusers-format Stable Diffusion 1.5 folder, e.g. StableDiffusionPipeline.save_pretrained(PATH)"


def missing_parts(where: Path, needed: tuple[str, ...], weights_any_of: tuple[str, ...]) -> list[str]:
    """What is absent from one model sub-folder (empty list: complete)."""
    if not where.is_dir():
        return [f"missing folder {where}/ (needs {', '.join(needed + weights_any_of[:1])})"]
    problems = [f"missing file {where / name}" for name in needed if not (where / name).is_file()]
    if weights_any_of and not any((where / name).is_file() for name in weights_any_of):
        problems.append(f"missing weights in {where}/: put one of {', '.join(weights_any_of)} there")
    return problems


def check_model_folder(folder: Path, parts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> None:
    """Raise ``MissingWeightsError`` listing every missing sub-folder or file at once."""
    if not folder.is_dir():
        raise MissingWeightsError(f"model folder not found: {folder} (expected {HINT})")
    problems = [p for sub, (needed, weights) in parts.items() for p in missing_parts(folder / sub, needed, weights)]
    if problems:
        raise MissingWeightsError(f"incomplete model folder {folder}:\n  - " + "\n  - ".join(problems))


class StableDiffusionBackbone(Backbone):
    """SD 1.5 latent diffusion + a trainable ControlNet on the mask.

    Args:
        pretrained_path: the diffusers-format folder (see module docstring).
        controlnet_path: a ControlNet folder (``config.json`` + weights); default
            ``<pretrained_path>/controlnet`` when present, else ``from_unet``.
        resolution: image size (384 in the paper; a multiple of 8 × the UNet's downsampling).
        prompt: the text condition (dropped with the task's ``cond_drop_prob``; "" is the null).
        gradient_checkpointing: trade compute for memory in the ControlNet.
        hint_input: ``sparse`` (the ControlNet's own hint encoder), ``dense`` (Siamese-Diffusion's
            DHI with ``dense_hint_channels``, patch merging down to the latent size) or ``unshuffle``
            (the sparse encoder's widths at the latent size after space-to-depth; new weights, so a
            pretrained ControlNet's hint encoder is replaced).
        controlnet: build the ControlNet now (False: later, with ``add_controlnet``, after a
            fine-tuned UNet has been loaded; or never, to train the UNet alone).
    """

    name = "sd15"
    pretrained_unet = True

    def __init__(
        self,
        pretrained_path: str | None = None,
        controlnet_path: str | None = None,
        resolution: int = 384,
        image_channels: int = 3,
        prompt: str = "a medical image with a lesion",
        gradient_checkpointing: bool = False,
        hint_input: str = "sparse",
        dense_hint_channels: Sequence[int] = PAPER_DENSE_CHANNELS,
        controlnet: bool = True,
    ) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        if not pretrained_path:
            raise MissingWeightsError(f"the sd15 backbone needs pretrained_path: {HINT}")
        root = Path(pretrained_path).expanduser()
        check_model_folder(root, REQUIRED)
        if controlnet_path is None and (root / "controlnet").is_dir():
            controlnet_path = str(root / "controlnet")
        if controlnet_path is not None:
            problems = missing_parts(Path(controlnet_path).expanduser(), ("config.json",), DIFFUSERS_WEIGHTS)
            if problems:
                raise MissingWeightsError(f"incomplete ControlNet folder {controlnet_path}:\n  - " + "\n  - ".join(problems))
        if image_channels != 3:
            raise ConfigError(f"Stable Diffusion's VAE takes 3-channel images, got image_channels={image_channels}")
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        schedule = dict(SD15_SCHEDULE)
        if scheduler_file.is_file():
            schedule.update({k: v for k, v in json.loads(scheduler_file.read_text()).items() if not k.startswith("_")})
        super().__init__(resolution, image_channels, schedule)

        load = dict(local_files_only=True)
        self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **load).eval().requires_grad_(False)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **load).eval().requires_grad_(False)
        self.text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **load).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **load)
        self.scaling_factor = float(self.vae.config.scaling_factor)  # 0.18215 for SD 1.5
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        factor = self.downsample * 2 ** (len(unet.config.block_out_channels) - 1)
        if resolution % factor:
            raise ConfigError(f"resolution {resolution} must be a multiple of {factor} for this VAE + UNet")
        self.frozen = {"vae": self.vae, "unet": unet, "text_encoder": self.text_encoder}
        self.controlnet_path, self.hint_input, self.dense_hint_channels = controlnet_path, hint_input, dense_hint_channels
        self.gradient_checkpointing = gradient_checkpointing
        self.prompt = prompt
        self._prompt_states: dict[tuple[str, Any], torch.Tensor] = {}
        self.modules = {}
        if controlnet:
            self.add_controlnet()

    def add_controlnet(self) -> None:
        """The ControlNet from ``controlnet_path`` when given, else ``from_unet`` of the current UNet."""
        from diffusers import ControlNetModel

        if self.controlnet_path is not None:
            controlnet = ControlNetModel.from_pretrained(Path(self.controlnet_path).expanduser(), local_files_only=True)
        else:
            controlnet = self.new_controlnet()
        set_hint_input(controlnet, self.hint_input, self.image_channels, self.dense_hint_channels, self.downsample)
        if self.gradient_checkpointing:
            controlnet.enable_gradient_checkpointing()
        self.modules["controlnet"] = controlnet

    @property
    def target_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def target_size(self) -> int:
        return self.resolution // self.downsample

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return encode_latents(self.vae, images, generator)

    def decode(self, targets: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, targets)

    @torch.no_grad()
    def _text_states(self, device: torch.device) -> torch.Tensor:
        """Text-encoder states indexed by token: the empty prompt (null) and the prompt; cached."""
        key = (self.prompt, str(device))
        if key not in self._prompt_states:
            texts = {NULL_TOKEN: "", LESION_TOKEN: self.prompt}
            tokens = self.tokenizer(
                [texts[index] for index in sorted(texts)], padding="max_length",
                max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt",
            ).input_ids.to(device)
            self._prompt_states[key] = self.text_encoder(tokens)[0]
        return self._prompt_states[key]

    def condition_states(self, cond_tokens: torch.Tensor) -> torch.Tensor:
        return self._text_states(cond_tokens.device)[cond_tokens]

    def new_controlnet(self, conditioning_channels: int | None = None) -> nn.Module:
        from diffusers import ControlNetModel

        # the hint encoder downsamples as much as the VAE: (16, 32, 96, 256) for SD's 8×
        return ControlNetModel.from_unet(
            self.network("unet"), conditioning_embedding_out_channels=hint_channels_for(self.downsample),
            conditioning_channels=conditioning_channels or self.image_channels,
        )


@BACKBONES.register("sd15")
def sd15(**kwargs: Any) -> StableDiffusionBackbone:
    """Stable Diffusion 1.5 + ControlNet from a local diffusers folder (frozen UNet/VAE/text)."""
    return StableDiffusionBackbone(**kwargs)

"""``SynthConfig``: every knob of a synthesis run in one dataclass, saved as the run's config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from laworder.training import LoopConfig


STAGES = ("controlnet", "base")


def default_loop() -> LoopConfig:
    """diffusers ``train_controlnet.py`` defaults (AdamW, constant LR) sized for the built-in backbone,
    with an EMA of the trained weights (diffusers' warm-up; the raw weights are kept too) and the
    gradient norm clipped over the trained parameters only, the same for every objective."""
    return LoopConfig(
        output_dir="runs/synth", max_steps=1000, batch_size=8, lr=1e-4, weight_decay=1e-2,
        optimizer="adamw", scheduler="constant", min_lr=0.0, grad_clip=1.0,
        checkpoint_every=250, log_every=10, snapshot_every=100, ema_decay=0.9999, ema_warmup=True,
    )


@dataclass
class SynthConfig:
    """A mask-conditioned diffusion training run.

    Attributes:
        data: dataset folder or ``procedural[:N[:SIZE[:SEED]]]`` spec (``laworder.data.load_dataset``).
        layout: dataset layout name or ``"auto"``.
        backbone: ``builtin`` (small pixel-space UNet, trained from scratch) or ``sd15``.
        backbone_kwargs: passed to the backbone (e.g. ``pretrained_path``, ``controlnet_path``,
            ``prompt`` for ``sd15``; ``block_out_channels`` for ``builtin``).
        objective: weighting objective name (``uniform``, ``fixed``, ``ratio``, ``law``,
            ``adaptive_distillation``, ``noise_consistency``, ``siamese``); an objective may imply
            backbone options (``siamese``: ``hint_input="dense"``) that ``backbone_kwargs`` overrides.
        objective_kwargs: passed to the objective (e.g. ``{"tau": 3.0, "dice": False}``).
        resolution: training/sampling image size; ``None`` = the backbone's default (64 / 384).
        image_channels: 3 (RGB) or 1 (grayscale; built-in backbone only).
        cond_drop_prob: probability of replacing the condition by the null token (5 %, §4.1.2).
        snapshot_count: samples per delta-map snapshot grid.
        probe_every: run the mask probe (``laworder.synth.probe``: ε-MSE with true vs shuffled
            masks on ``probe_count`` held-out test pairs) every this many steps; 0 = never.
        probe_count: held-out pairs in the probe set.
        stage: ``controlnet`` (``synth train``: a mask ControlNet) or ``base`` (``synth pretrain``:
            the UNet and token embedding alone, no ControlNet, uniform objective).
        base: a ``synth pretrain`` run: its UNet and embedding (and VAE) are loaded and frozen,
            and the ControlNet is made from its UNet (``ControlNetModel.from_unet``); backbone,
            backbone_kwargs, resolution and image_channels come from it.
        unet_trainable: for a pretrained UNet (``base`` or ``sd15``): ``none`` (frozen, the
            paper), ``decoder`` (up blocks + output unlocked) or ``all``. The built-in backbone
            without ``base`` trains its UNet from scratch with the ControlNet whatever this says.
        validation_masks: held-out masks (the test split's first ones; the training masks when
            there is none) sampled every ``loop.snapshot_every`` steps into ``validation/step_*.png``
            (0 = off); ``validation_steps`` DDIM steps at CFG ``validation_guidance``, fixed seeds.
        cache_images: keep resized images in memory (``PairDataset(cache=True)``).
        check_data: run ``laworder.data.ensure_valid`` before training.
        cache_latents: with a VAE (latent backbones), encode every training image once and draw
            only the latent sample per step (``laworder.synth.latents``): the same targets from
            the same random draws, without the frozen encoder in every step. False: encode each
            batch (the path before the cache; also what to use if images were augmented per step).
        loop: the training-loop settings (``laworder.training.LoopConfig``).
    """

    data: str = "procedural"
    layout: str = "auto"
    backbone: str = "builtin"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: str = "law"
    objective_kwargs: dict[str, Any] = field(default_factory=dict)
    resolution: int | None = None
    image_channels: int = 3
    cond_drop_prob: float = 0.05
    snapshot_count: int = 4
    probe_every: int = 0
    probe_count: int = 16
    stage: str = "controlnet"
    base: str | None = None
    unet_trainable: str = "none"
    validation_masks: int = 4
    validation_steps: int = 20
    validation_guidance: float = 1.0
    cache_images: bool = True
    check_data: bool = True
    cache_latents: bool = True
    loop: LoopConfig = field(default_factory=default_loop)

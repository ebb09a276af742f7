"""``SynthTask``: one mask-conditioned diffusion training step for the shared training core.

The step reads like diffusers' ``examples/controlnet/train_controlnet.py``:
encode → noise → ControlNet residuals → UNet → target → objective → loss, plus the extra
branches some baselines need (a teacher, an image branch). ``fit`` does everything else.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from laworder.config import from_dict
from laworder.errors import ConfigError, DataError
from laworder.paths import resolve
from laworder.synth.backbones import LESION_TOKEN, NULL_TOKEN, Backbone, Residuals
from laworder.synth.build import build_backbone
from laworder.synth.config import SynthConfig
from laworder.synth.weighting import Objective, create_objective
from laworder.training import StepOutput, TrainTask


def renoise_from_prediction(noise_scheduler, noisy: torch.Tensor, eps_hat: torch.Tensor, noise: torch.Tensor,
                            timesteps: torch.Tensor) -> torch.Tensor:
    """Siamese-Diffusion eq. 11-12: z′₀ = (z_t − √(1−ᾱ_t) sg[ε̂]) / √ᾱ_t, re-noised with ``noise``
    at the same t. z′₀ is clipped to the scheduler's range when it clips samples (pixel space)."""
    alpha_bar = noise_scheduler.alphas_cumprod.to(noisy.device, noisy.dtype)[timesteps].view(-1, 1, 1, 1)
    clean = (noisy - (1 - alpha_bar).sqrt() * eps_hat.detach().to(noisy.dtype)) / alpha_bar.sqrt()
    if noise_scheduler.config.clip_sample:
        limit = noise_scheduler.config.clip_sample_range
        clean = clean.clamp(-limit, limit)
    return noise_scheduler.add_noise(clean, noise, timesteps)


def mix_residuals(first: Residuals, second: Residuals, first_weight: float, second_weight: float) -> Residuals:
    """first_weight · first + second_weight · second, block by block."""
    down = [first_weight * a + second_weight * b for a, b in zip(first[0], second[0])]
    return down, first_weight * first[1] + second_weight * second[1]


def detach_residuals(residuals: Residuals) -> Residuals:
    return [r.detach() for r in residuals[0]], residuals[1].detach()


class SynthTask(TrainTask):
    """Trains a backbone's ControlNet (and, for ``builtin``, its UNet and class embedding)
    with a weighting objective. Trainable modules: the backbone's, plus ``objective`` when the
    objective learns parameters (LAW's φ) and ``image_controlnet`` for the distillation teacher.
    """

    def __init__(self, config: SynthConfig, backbone: Backbone | None = None) -> None:
        if not 0.0 <= config.cond_drop_prob < 1.0:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {config.cond_drop_prob}")
        if config.stage == "base" and config.objective != "uniform":
            raise ConfigError(f"`synth pretrain` trains the base UNet without masks: objective must be 'uniform', "
                              f"got {config.objective!r}")
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config)
        #: (stems, masks) sampled into validation grids, set by ``train_synth``; None = off
        self.validation: tuple[list[str], torch.Tensor] | None = None
        self.noise_scheduler = self.backbone.noise_scheduler()
        try:
            self.objective: Objective = create_objective(
                config.objective, channels=self.backbone.target_channels, **config.objective_kwargs
            )
        except TypeError as exc:  # an unknown objective_kwargs key
            raise ConfigError(f"objective_kwargs={config.objective_kwargs!r} not accepted by objective "
                              f"{config.objective!r} ({exc})") from None
        modules: dict[str, nn.Module] = dict(self.backbone.modules)
        if self.objective.has_parameters:
            modules["objective"] = self.objective
        if "eps_teacher" in self.objective.needs:
            modules["image_controlnet"] = self.backbone.new_controlnet()
        self.modules = modules
        # Set by the training core when it provides them (Siamese w_i = k / N_iter ramp).
        self.global_step: int | None = None
        self.total_steps: int | None = config.loop.max_steps
        self.probe_set = None  # a ``laworder.synth.probe.ProbeSet`` when ``probe_every`` > 0 (``train_synth``)
        #: the training images' VAE posteriors, computed once (``cache_latents``; set by ``train_synth``)
        self.latent_cache = None
        self._branches: dict[str, Callable[..., torch.Tensor]] = {
            "eps_teacher": self._teacher_prediction,
            "eps_image": self._image_branch_prediction,
        }

    # ``fit`` replaces ``modules`` with the accelerate-wrapped ones: re-bind the backbone.
    @property
    def modules(self) -> dict[str, nn.Module]:
        return self._modules

    @modules.setter
    def modules(self, value: dict[str, nn.Module]) -> None:
        self._modules = value
        self.backbone.bind(value)

    def frozen_modules(self) -> dict[str, nn.Module]:
        return self.backbone.frozen_modules()

    @property
    def channels_last(self) -> bool:
        """Train in channels_last memory when ``loop.channels_last`` is unset: the built-in backbone
        (measured faster on CPU, ``bench/results/synth_speed.md``); SD 1.5 stays as it was (unmeasured)."""
        return self.backbone.name == "builtin"

    def _objective(self) -> nn.Module:
        return self.modules.get("objective", self.objective)

    # --- the step ---------------------------------------------------------------------------
    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (images in [-1, 1], masks {0, 1}), checked against the backbone's size."""
        images, masks = batch["image"], batch["mask"]
        if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
            raise DataError(f"expected image B×C×H×W and mask B×1×H×W, got {tuple(images.shape)} and {tuple(masks.shape)}")
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise DataError(f"image batch {tuple(images.shape)} and mask batch {tuple(masks.shape)} differ in size")
        size = self.backbone.resolution
        if images.shape[-2:] != (size, size) or images.shape[1] != self.backbone.image_channels:
            raise DataError(
                f"images are {tuple(images.shape[1:])} but the backbone expects "
                f"{(self.backbone.image_channels, size, size)}; build the dataset with size={size}"
            )
        return images * 2.0 - 1.0, masks

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        images, masks = self.inputs(batch)
        targets = None
        if self.latent_cache is not None and "index" in batch:
            # the frozen VAE's posterior of these items, encoded once per run: same draws, no encoder
            targets = self.latent_cache.sample(self.backbone, batch["index"], generator)
        eps_pred, target, extra = self.diffusion_forward(images, masks, generator, self.config.cond_drop_prob, targets)
        # 7. weighting objective -> loss (in float32: weights are normalised and clamped)
        with torch.autocast(device_type=images.device.type, enabled=False):
            output = self._objective()(eps_pred.float(), target.float(), masks, **extra)
        return StepOutput(output.loss, output.logs)

    def diffusion_forward(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator, cond_drop_prob: float,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Steps 1-6 of a training step: (ε̂, regression target, extra branch predictions).

        Every random number comes from ``generator`` (CPU), so a step is a pure function of
        (batch, generator) and a resumed run repeats it exactly. ``targets``: the encoded images
        when the caller has them (the latent cache, which drew from ``generator`` like ``encode``).
        """
        backbone = self.backbone
        device, batch_size = images.device, images.shape[0]
        # 1. encode: pixels (built-in) or VAE latents × scaling factor (SD)
        if targets is None:
            targets = backbone.encode(images, generator)
        # 2. forward diffusion z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε (paper eq. 1)
        noise = torch.randn(targets.shape, generator=generator).to(device, targets.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        timesteps = timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(targets, noise, timesteps)
        # condition dropout for classifier-free guidance: the null token with cond_drop_prob
        keep = torch.rand(batch_size, generator=generator) >= cond_drop_prob
        cond_tokens = torch.where(keep, LESION_TOKEN, NULL_TOKEN).to(device)
        states = backbone.condition_states(cond_tokens)
        # 3. ControlNet residuals from the mask (none for a base UNet trained alone)
        residuals = backbone.control(noisy, timesteps, states, backbone.mask_hint(masks)) if backbone.has_controlnet else None
        # 4. UNet prediction
        eps_pred = backbone.denoise(noisy, timesteps, states, residuals)
        # 5. regression target
        target = self._target(targets, noise, timesteps)
        # 6. branches some objectives need (a teacher, an image branch)
        context = dict(noisy=noisy, timesteps=timesteps, states=states, residuals=residuals, images=images)
        extra = {key: self._branches[key](**context).float() for key in self.objective.needs}
        # 6b. online augmentation (Siamese-Diffusion eq. 11-13) on the rows the objective selects
        rows = self.objective.augmentation_rows(timesteps, self.global_step, self.total_steps)
        if rows is not None and bool(rows.any()):
            index = rows.nonzero()[:, 0]
            extra["augmented_index"] = index
            extra["eps_augmented"] = self._augmented_prediction(index, extra["eps_image"], noise, masks, **context).float()
        return eps_pred, target, extra

    def _target(self, targets: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(targets, noise, timesteps)
        raise ConfigError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")

    def _teacher_prediction(self, noisy, timesteps, states, residuals, images) -> torch.Tensor:
        """Adaptive distillation teacher: c_mask + s · c_image through the same UNet."""
        image_residuals = self.backbone.control(
            noisy, timesteps, states, self.backbone.image_hint(images), controlnet="image_controlnet"
        )
        mixed = mix_residuals(residuals, image_residuals, 1.0, self.objective.image_control_scale)
        return self.backbone.denoise(noisy, timesteps, states, mixed)

    def _image_branch_prediction(self, noisy, timesteps, states, residuals, images) -> torch.Tensor:
        """Siamese Image-Diffusion: c_mix = w_i · c_i + w_m · sg[c_m] (eq. 5), same ControlNet;
        the UNet trains through this branch unless the objective runs it as a copy θ′."""
        image_residuals = self.backbone.control(noisy, timesteps, states, self.backbone.image_hint(images))
        image_weight = self.objective.image_control_weight(self.global_step, self.total_steps)
        mixed = mix_residuals(image_residuals, detach_residuals(residuals), image_weight, self.objective.mask_control_weight)
        return self.backbone.denoise(noisy, timesteps, states, mixed, unet_grad=self.objective.image_branch_updates_unet)

    def _augmented_prediction(self, index, eps_image, noise, masks, noisy, timesteps, states, **_) -> torch.Tensor:
        """Mask-Diffusion's ε̂^m′ on z′_t for the rows ``index`` (Siamese-Diffusion eq. 11-12)."""
        if self.noise_scheduler.config.prediction_type != "epsilon":
            raise ConfigError("online augmentation reconstructs z′₀ from ε̂ (eq. 11): it needs an epsilon-prediction backbone")
        t = timesteps[index]
        renoised = renoise_from_prediction(self.noise_scheduler, noisy[index], eps_image[index], noise[index], t)
        row_states = states[index]
        residuals = self.backbone.control(renoised, t, row_states, self.backbone.mask_hint(masks[index]))
        return self.backbone.denoise(renoised, t, row_states, residuals)

    # --- snapshots --------------------------------------------------------------------------
    @torch.no_grad()
    def weight_maps(self, batch: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(images [0,1], masks, objective maps) for the first ``snapshot_count`` items, always
        with the condition, from a generator of their own (the training stream is untouched)."""
        count = max(1, self.config.snapshot_count)
        small = {k: v[:count] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        images, masks = self.inputs(small)
        eps_pred, target, extra = self.diffusion_forward(images, masks, torch.Generator().manual_seed(seed), 0.0)
        output = self._objective()(eps_pred.float(), target.float(), masks, **extra)
        return small["image"], small["mask"], output.maps

    def on_log(self, step: int, run_dir: Path, batch: dict[str, Any]) -> dict[str, Any]:
        """Delta-map snapshot (paper Fig. 8): ``snapshots/step_XXXXXXXX.png``, one row per sample,
        columns image | mask | w_ratio | δ | w_final (those the objective has); and validation
        samples of the held-out masks (``validation/step_XXXXXXXX.png``, see ``synth.validation``)."""
        from laworder.synth.snapshots import write_weight_grid

        grids = {}  # also sent to the experiment trackers (loop.report_to)
        if self.config.stage != "base":
            images, masks, maps = self.weight_maps(batch, seed=step)
            grids["snapshots/weights"] = write_weight_grid(Path(run_dir) / "snapshots" / f"step_{step:08d}.png",
                                                           images, masks, maps)
        if self.validation is not None:
            from laworder.data.io import read_image

            written = self.write_validation(Path(run_dir) / "validation" / f"step_{step:08d}.png")
            grids["validation/samples"] = read_image(written, 3).astype(np.float32) / 255.0
        return {"images": grids}

    def write_validation(self, path: Path) -> Path:
        """Sample the held-out masks with the current (raw) weights, bare modules, eval mode."""
        from laworder.synth.validation import write_validation_grid

        stems, masks = self.validation
        with self.bare_modules():
            return write_validation_grid(path, self.backbone, masks.to(self.device), stems,
                                         self.config.validation_steps, self.config.validation_guidance)

    @contextmanager
    def bare_modules(self) -> Iterator[None]:
        """The backbone on the bare modules in eval mode (no DDP wrapper: only the main process
        samples or probes), rebound to the wrapped ones and their modes afterwards."""
        wrapped = self.modules
        bare = {name: self.unwrapped(name) for name in wrapped}
        self.backbone.bind(bare)
        modes = {name: module.training for name, module in bare.items()}
        try:
            for module in bare.values():
                module.eval()
            yield
        finally:
            for name, module in bare.items():
                module.train(modes[name])
            self.backbone.bind(wrapped)

    def periodic_logs(self, step: int, run_dir: Path) -> dict[str, float]:
        """The mask probe every ``probe_every`` steps (``laworder.synth.probe``), on the bare
        modules in eval mode (no DDP wrapper: only the main process runs it)."""
        every = self.config.probe_every
        if not every or step % every or self.probe_set is None:
            return {}
        from laworder.synth.probe import probe_mask

        with self.bare_modules():
            return probe_mask(self.backbone, self.noise_scheduler, self.probe_set, self.device)


def held_out_probe_set(collection, config: SynthConfig):
    """The mask probe's fixed set: the first ``probe_count`` test pairs, taken in turn from each
    test subset (held out from training).

    Raises:
        ConfigError: ``probe_every`` < 0. DataError: the dataset has fewer than 2 test pairs.
    """
    from laworder.synth.probe import make_probe_set

    if config.probe_every < 0:
        raise ConfigError(f"probe_every must be >= 0 (0 = no probe), got {config.probe_every}")
    subsets = [list(records) for records in collection.test.values()]
    interleaved = [subset[i] for i in range(max(map(len, subsets), default=0)) for subset in subsets if i < len(subset)]
    if len(interleaved) < 2:
        raise DataError(f"{config.data}: the mask probe (probe_every={config.probe_every}) needs held-out test pairs; "
                        f"found {len(interleaved)}. Use a dataset with a test split or set probe_every=0")
    return make_probe_set(interleaved, config.resolution, config.image_channels, config.probe_count, seed=config.loop.seed)


def train_synth(config: SynthConfig | dict[str, Any]) -> Path:
    """Train a mask-conditioned diffusion model; returns the run folder.

    The run folder holds ``config.yaml`` (this config, resolved), ``model/last/*.safetensors``
    (the trained modules; EMA weights, the raw ones in ``model/raw/``), ``checkpoints/``,
    ``metrics.jsonl``, ``snapshots/`` and ``validation/``; ``sample_pool`` reads it. Frozen
    networks are not copied: they load from ``config.base`` / the VAE / the SD folder.
    """
    from laworder.data.dataset import PairDataset
    from laworder.data.layouts import load_dataset
    from laworder.synth.base_model import resolve_base
    from laworder.training import fit

    if isinstance(config, dict):
        config = from_dict(SynthConfig, config, where="synth config")
    config = resolve_base(config)  # a bad --base fails here, before anything is written
    from laworder.training.loop import check_run_dir, run_inputs

    check_run_dir(Path(config.loop.output_dir), config.loop.resume, config.loop.overwrite, inputs=run_inputs(config.data))
    if config.backbone_kwargs.get("vae"):  # saved absolute, so later runs find it from anywhere
        vae = str(resolve(config.backbone_kwargs["vae"]))
        config = replace(config, backbone_kwargs={**config.backbone_kwargs, "vae": vae})
    from laworder.resources import check_batch
    from laworder.training.validate import check_loop_config

    check_loop_config(config.loop)  # seeds, workers, ranges: before the dataset is read or a network built
    if config.resolution is not None:
        check_batch("loop.batch_size, resolution", config.loop.batch_size, config.resolution, config.image_channels)
    if config.check_data:
        from laworder.data.check import ensure_valid

        ensure_valid(config.data, config.layout)
    collection = load_dataset(config.data, layout=config.layout)
    if not collection.train:
        raise DataError(f"{config.data}: no training pairs")
    torch.manual_seed(config.loop.seed)  # network initialisation
    np.random.seed(config.loop.seed)
    task = SynthTask(config)
    config = replace(config, resolution=task.backbone.resolution)  # saved resolved in config.yaml
    if config.probe_every:
        task.probe_set = held_out_probe_set(collection, config)
    task.config = config
    if config.validation_masks > 0:
        from laworder.synth.validation import held_out_masks

        task.validation = held_out_masks(collection, config.validation_masks, config.resolution)
    dataset = PairDataset(collection.train, size=config.resolution, channels=config.image_channels, cache=config.cache_images)
    if config.cache_latents and task.backbone.latent_vae is not None:
        from laworder.synth.latents import LatentCache

        task.latent_cache = LatentCache(dataset)
    result = fit(task, dataset, config.loop, run_config=config)
    return result.run_dir

"""The UniSegDiff segmenter: staged diffusion training, staged inference, STAPLE fusion.

See the package docstring (``laworder.models.unisegdiff``) for the two-stage recipe and the
choices made where the paper is silent.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from laworder.errors import ConfigError, MissingWeightsError
from laworder.models.base import SegmentationModel, check_input_shape
from laworder.models.unisegdiff.networks import ConditionalFeatureNet, DenoisingNet, check_widths
from laworder.models.unisegdiff.stages import STAGE_NAMES, StagePlan
from laworder.models.unisegdiff.staple import staple, vote_entropy

STAGES = ("feature", "diffusion")
DEFAULT_WIDTHS = (8, 16, 32, 64, 64)  # ~1.0M parameters; ~2 GFLOPs per DNet pass at 256²
DICE_SMOOTH = 1e-5  # MONAI's DiceLoss smoothing: an empty target and prediction give a finite loss


@dataclass
class UniSegDiffOutput:
    """One staged-inference pass: ``logits``/``probability`` ``B×1×H×W`` (the STAPLE consensus),
    ``uncertainty`` ``B×1×H×W`` in [0, 1] and the raw ``samples`` ``B×N×H×W`` (bool)."""

    logits: torch.Tensor
    probability: torch.Tensor
    uncertainty: torch.Tensor
    samples: torch.Tensor


def soft_dice_and_bce(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample soft Dice loss and BCE-with-logits (``B`` each), the L_dice + L_ce of eq. 1."""
    logits, masks = logits.float(), masks.float()
    probs = torch.sigmoid(logits)
    intersection = (probs * masks).sum(dim=(1, 2, 3))
    total = probs.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)
    bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean(dim=(1, 2, 3))
    return dice, bce


def resolve_feature_weights(source: str | Path) -> Path:
    """A ``stage=feature`` run folder (its ``model/best``, else ``model/last``) or a safetensors file."""
    path = Path(source).expanduser()
    candidates = [path] if path.suffix == ".safetensors" else [
        path / "model" / "best" / "model.safetensors", path / "model" / "last" / "model.safetensors", path / "model.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"feature_weights {source!r}: none of {[str(c) for c in candidates]} exists; train the CFENet first "
        "(laworder seg train --model unisegdiff --set model_kwargs.stage=feature -o RUN) and pass RUN or its "
        "model/best/model.safetensors"
    )


class UniSegDiff(SegmentationModel):
    """UniSegDiff (Hu et al., MICCAI 2025): CFENet + DNet with DCA, staged diffusion over masks.

    ``forward(images)`` returns ``B×1×H×W`` logits: in the ``feature`` stage the CFENet's own
    segmentation, in the ``diffusion`` stage the log-odds of the STAPLE consensus of
    ``num_samples`` staged-inference samples (clipped to ±``logit_clip``); the disagreement map of
    that call is left in ``last_uncertainty``. ``forward(images, masks=..., generator=...)`` (or
    ``training_loss``) returns ``(loss, logs)`` for the stage being trained.

    Args:
        in_channels: image channels. num_classes: must be 1 (binary lesion masks).
        stage: ``"feature"`` trains the CFENet for segmentation (the DNet is frozen);
            ``"diffusion"`` trains the DNet on the frozen CFENet's features.
        feature_weights: for the diffusion stage, the ``stage=feature`` run folder or its
            ``model.safetensors``; its ``cfenet.*`` weights are loaded at construction.
        widths: channels per level of every UNet (5 levels, as the paper's CF_1 … CF_5);
            H and W must be divisible by 2^(levels − 1).
        norm_groups: GroupNorm groups (every width must be a multiple).
        head_dim: channels per attention head in DCA. kv_size: DCA keys/values pooled to at most
            ``kv_size × kv_size`` tokens.
        num_samples: masks fused per image (20, paper §2.4); each sampling run gives two, one
            per branch, so ``ceil(num_samples / 2)`` runs.
        staple_iterations: EM iterations of the fusion (20).
        beta_schedule: DDPM noise schedule (``linear``: DDPM's 1e-4 … 0.02).
        sample_seed: seed of the sampling noise; every image of a batch gets the same draws,
            so a prediction does not depend on batching (beyond float round-off in the fusion).
        logit_clip: bound on the returned log-odds.
        plan: overrides of ``StagePlan`` (thresholds, loss ratios, DDIM interval).

    Raises:
        ConfigError: unknown stage, ``num_classes != 1``, bad widths or sample counts.
        MissingWeightsError: ``feature_weights`` does not exist.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, stage: str = "diffusion",
                 feature_weights: str | None = None, widths: Sequence[int] = DEFAULT_WIDTHS, norm_groups: int = 8,
                 head_dim: int = 16, kv_size: int = 16, num_samples: int = 20, staple_iterations: int = 20,
                 beta_schedule: str = "linear", sample_seed: int = 0, logit_clip: float = 15.0,
                 plan: dict[str, Any] | None = None) -> None:
        from diffusers import DDPMScheduler

        super().__init__(in_channels, num_classes)
        if num_classes != 1:
            raise ConfigError(f"UniSegDiff diffuses one binary mask: num_classes must be 1, got {num_classes}")
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
        if num_samples < 1 or staple_iterations < 0 or logit_clip <= 0:
            raise ConfigError(f"need num_samples >= 1, staple_iterations >= 0, logit_clip > 0; got "
                              f"{num_samples}, {staple_iterations}, {logit_clip}")
        widths = check_widths(widths, norm_groups)
        self.stage, self.feature_weights = stage, feature_weights
        self.num_samples, self.staple_iterations = int(num_samples), int(staple_iterations)
        self.sample_seed, self.logit_clip = int(sample_seed), float(logit_clip)
        self.input_divisor = 2 ** (len(widths) - 1)
        self.plan = StagePlan(**(plan or {}))
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=self.plan.num_train_timesteps, beta_schedule=beta_schedule)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.cfenet = ConditionalFeatureNet(in_channels, widths, norm_groups)
        self.dnet = DenoisingNet(widths, norm_groups, head_dim, kv_size)
        self.last_uncertainty: torch.Tensor | None = None
        self._warned_untrained_features = False
        if feature_weights:
            self.load_feature_weights(feature_weights)
        # the stage decides what the optimizer sees (it only takes parameters that require grad)
        self.cfenet.requires_grad_(stage == "feature")
        self.dnet.requires_grad_(stage == "diffusion")

    def load_feature_weights(self, source: str | Path) -> Path:
        """Load the CFENet from a ``stage=feature`` run (folder or ``model.safetensors``)."""
        from safetensors.torch import load_file

        path = resolve_feature_weights(source)
        state = {k[len("cfenet."):]: v for k, v in load_file(str(path)).items() if k.startswith("cfenet.")}
        if not state:
            raise ConfigError(f"{path} holds no CFENet weights (no 'cfenet.*' keys): is it a unisegdiff run?")
        self.cfenet.load_state_dict(state)
        return path

    # --- training -------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, masks: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The current stage's loss and its parts: ``(scalar loss, {name: float})``.

        ``feature``: L_dice + L_ce of the CFENet's segmentation. ``diffusion``: eq. 1 with the
        stage's targets and weights, t ~ U{0 … T−1}. Every random number comes from
        ``generator`` (CPU) when given, so a resumed run repeats the step exactly.

        Raises:
            ValueError: images/masks shapes that do not fit.
        """
        check_input_shape(images, self.in_channels, self.input_divisor)
        if masks.shape != (images.shape[0], 1, *images.shape[-2:]):
            raise ValueError(f"masks must be B×1×H×W matching images {tuple(images.shape)}, got {tuple(masks.shape)}")
        if self.stage == "feature":
            dice, bce = soft_dice_and_bce(self.cfenet(images).logits, masks)
            return (dice + bce).mean(), {"loss_dice": float(dice.detach().mean()), "loss_ce": float(bce.detach().mean())}
        if self.feature_weights is None and not self._warned_untrained_features:
            warnings.warn("UniSegDiff diffusion stage without feature_weights: the frozen CFENet is untrained. "
                          "Pre-train it with model_kwargs.stage=feature first (see laworder.models.unisegdiff).",
                          stacklevel=2)
            self._warned_untrained_features = True
        with torch.no_grad():
            conditions = self.cfenet(images).features
        clean = masks.to(images.dtype) * 2.0 - 1.0  # x₀ in [-1, 1]
        noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
        timesteps = torch.randint(0, self.plan.num_train_timesteps, (clean.shape[0],), generator=generator).to(clean.device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        mask_logits, noise_pred = self.dnet(noisy, self.plan.network_timesteps(timesteps), conditions)
        alpha, beta = self.plan.loss_weights(timesteps)
        noise_loss = (noise_pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
        dice, bce = soft_dice_and_bce(mask_logits, masks)
        loss = (alpha * noise_loss + beta * (dice + bce)).mean()
        stage = self.plan.stage_of(timesteps)
        logs = {"loss_noise": float(noise_loss.detach().mean()), "loss_dice": float(dice.detach().mean()),
                "loss_ce": float(bce.detach().mean())}
        logs.update({f"frac_{name}": float((stage == index).float().mean()) for index, name in enumerate(STAGE_NAMES)})
        return loss, logs

    # --- inference ------------------------------------------------------------------------
    def _alpha_bar(self, timestep: int, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[timestep].to(like.device, like.dtype)

    def _eps_from_clean(self, noisy: torch.Tensor, clean: torch.Tensor, timestep: int) -> torch.Tensor:
        alpha_bar = self._alpha_bar(timestep, noisy)
        return (noisy - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()

    def _clean_from_eps(self, noisy: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        alpha_bar = self._alpha_bar(timestep, noisy)
        return ((noisy - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()).clamp(-1, 1)  # DDIM's clip_sample

    def _ddim_jump(self, clean: torch.Tensor, noise: torch.Tensor, to_timestep: int) -> torch.Tensor:
        """DDIM (η = 0, Song et al. eq. 12) from any t to ``to_timestep``: √ᾱ' x̂₀ + √(1−ᾱ') ε̂.
        Written out because ``DDIMScheduler.step`` only moves by a fixed interval."""
        alpha_bar = self._alpha_bar(to_timestep, clean)
        return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise

    def _timesteps(self, timestep: int, like: torch.Tensor) -> torch.Tensor:
        full = torch.full((like.shape[0],), timestep, dtype=torch.long, device=like.device)
        return self.plan.network_timesteps(full)

    def _sampling_noise(self, images: torch.Tensor, runs: int) -> torch.Tensor:
        """``runs×B×1×H×W`` x_999 draws; the same ``sample_seed`` stream for every image."""
        shape = (runs, 1, *images.shape[-2:])
        draw = torch.randn(shape, generator=torch.Generator().manual_seed(self.sample_seed))
        return draw[:, None].expand(runs, images.shape[0], *shape[1:]).to(images.device, images.dtype)

    @torch.no_grad()
    def sample_masks(self, images: torch.Tensor, conditions: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Staged inference (paper §2.2, Fig. 1C): ``B×num_samples×H×W`` boolean masks.

        Per run: the x₀ branch jumps x_999 → x_599; from x_599 one chain follows the x₀ branch
        and one the ε branch with DDIM every 30 steps to x_299; the ε branch then jumps each
        x_299 → x_0. Samples are ordered run by run, x₀-branch chain first.
        """
        if conditions is None:
            conditions = self.cfenet(images).features
        batch = images.shape[0]
        doubled = [torch.cat([c, c]) for c in conditions]
        chain = self.plan.chain_timesteps()
        runs = math.ceil(self.num_samples / 2)
        samples = []
        for start in self._sampling_noise(images, runs):
            # rapid segmentation: one x₀-branch jump 999 -> 599
            levels, temb = self.dnet.encode(start, self._timesteps(chain[0], start), conditions)
            clean = 2 * torch.sigmoid(self.dnet.decode_mask(levels, temb)) - 1
            pair = self._ddim_jump(clean, self._eps_from_clean(start, clean, chain[0]), chain[1]).repeat(2, 1, 1, 1)
            # probabilistic modeling: x₀-branch chain (first half) and ε-branch chain (second half)
            for timestep, next_timestep in zip(chain[1:-1], chain[2:]):
                levels, temb = self.dnet.encode(pair, self._timesteps(timestep, pair), doubled)
                mask_clean = 2 * torch.sigmoid(self.dnet.decode_mask([h[:batch] for h in levels], temb[:batch])) - 1
                noise_eps = self.dnet.decode_noise([h[batch:] for h in levels], temb[batch:])
                clean = torch.cat([mask_clean, self._clean_from_eps(pair[batch:], noise_eps, timestep)])
                noise = torch.cat([self._eps_from_clean(pair[:batch], mask_clean, timestep), noise_eps])
                pair = self._ddim_jump(clean, noise, next_timestep)
            # denoising refinement: one ε-branch jump 299 -> 0 for both chains
            levels, temb = self.dnet.encode(pair, self._timesteps(chain[-1], pair), doubled)
            final = self._clean_from_eps(pair, self.dnet.decode_noise(levels, temb), chain[-1]) > 0
            samples.extend([final[:batch], final[batch:]])
        return torch.cat(samples[: self.num_samples], dim=1)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> UniSegDiffOutput:
        """Logits, probability, uncertainty and samples for ``B×C×H×W`` images in [0, 1].

        In the ``feature`` stage: the CFENet's segmentation (one sample, zero uncertainty).
        """
        check_input_shape(images, self.in_channels, self.input_divisor)
        condition = self.cfenet(images)
        if self.stage == "feature":
            samples = condition.logits > 0
            return UniSegDiffOutput(condition.logits, torch.sigmoid(condition.logits), vote_entropy(samples), samples)
        samples = self.sample_masks(images, condition.features)
        fused = staple(samples, self.staple_iterations)
        logits = fused.logits.to(images.dtype).clamp(-self.logit_clip, self.logit_clip)
        return UniSegDiffOutput(logits, torch.sigmoid(logits), vote_entropy(samples).to(images.dtype), samples)

    def uncertainty(self, images: torch.Tensor) -> torch.Tensor:
        """``B×1×H×W`` disagreement between the samples (entropy of the vote, in bits)."""
        return self.segment(images).uncertainty

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """Logits ``B×1×H×W`` (no gradient in the diffusion stage); with ``masks``, the training
        loss ``(loss, logs)`` instead (the training step calls it this way so that DDP wrappers
        see the call)."""
        if masks is not None:
            return self.training_loss(images, masks, generator)
        if self.stage == "feature":
            check_input_shape(images, self.in_channels, self.input_divisor)
            return self.cfenet(images).logits
        result = self.segment(images)
        self.last_uncertainty = result.uncertainty
        return result.logits

"""``unisegdiff``: UniSegDiff (Hu et al., MICCAI 2025, ``../shared/papers/unisegdiff.txt``).

A diffusion segmenter over masks: a conditional feature network (CFENet, a UNet pre-trained for
segmentation, then frozen) guides a denoising network (DNet: one encoder with dual
cross-attention (DCA) injection of the CFENet features, an x₀ decoder and an ε decoder).
Training uses staged targets (``stages.py``), inference staged sampling and STAPLE fusion
(``staple.py``).

Two stages, one command each (the second reads the first's weights)::

    laworder seg train --model unisegdiff --set model_kwargs.stage=feature -o runs/usd_feature
    laworder seg train --model unisegdiff --set model_kwargs.feature_weights=runs/usd_feature -o runs/usd
    laworder seg evaluate runs/usd      # staged inference, 20 samples fused per image

``feature_weights`` is a ``stage=feature`` run folder (its ``model/best``, else ``model/last``)
or a ``model.safetensors``; it is read whenever the model is built, so keep it where it is
(``seg evaluate`` rebuilds the model before loading the run's own weights). Fewer samples make
validation and evaluation cheaper: ``--set model_kwargs.num_samples=4``.

Where the paper leaves a detail open, and what is done here:

* **"All timesteps are set to 999 / 0"** in the rapid / refinement stages is read as the
  timestep *fed to the DNet*; the noise level stays the sampled t. The network then sees every
  noise level of its stage, and the final 299 → 0 jump gets an input like those it was trained
  on (x_299 with t = 0 fed in).
* **α : β** (1:3, 1:1, 3:1) are normalised to α + β = 1, so every stage weighs the same in total.
* **L_ce** is binary cross-entropy on the x₀ decoder's logits, **L_dice** the soft Dice of their
  sigmoid (per sample, MONAI's 1e-5 smoothing), **L_n** the mean squared error of ε̂. The x₀
  decoder predicts mask logits, x̂₀ = 2σ(logits) − 1 (masks are diffused in [-1, 1]).
* **Noise schedule**: DDPM's linear β (1e-4 … 0.02, T = 1000), the diffusers default; with it
  x_t is nearly pure noise above t = 600, matching the paper's argument for the first stage.
* **Feature-stage loss**: L_dice + L_ce of the CFENet's own segmentation head.
* **Conditional features CF_1 … CF_5**: the CFENet's bottleneck and decoder outputs (the maps
  closest to a mask), matched to DNet encoder levels by resolution.
* **DCA**: two cascaded pre-norm cross-attention blocks (diffusers ``Attention``); the CFENet
  features query first, then the DNet features query the updated CFENet features. Keys and
  values are pooled to at most 16 × 16 tokens (PVT's spatial-reduction attention), so the
  full-resolution levels stay affordable; queries keep full resolution.
* **Widths**: 5 levels of (8, 16, 32, 64, 64) channels (~1.0M parameters in all), sized for
  CPU training; the paper gives none. Upsampling is nearest-neighbour without a convolution
  (the ResnetBlock after the skip concatenation convolves), which halves the decoders' cost.
  At 256² one DNet pass is ~2 GFLOPs, so 20 fused samples cost ~0.5 TFLOPs per image.
* **"Eleven steps"**: a chain stands at 999, 599, 569, …, 329, 299 (one rapid jump + ten DDIM
  steps of 30 = 11 steps); the ε-branch jump 299 → 0 that ends each chain is the fusion
  sampling. One run gives two samples (the x₀-branch chain and the ε-branch chain from the
  same x_599), so 20 samples are 10 runs with independent x_999. The x₀ → ε conversions use
  DDIM's clipping of x̂₀ to [-1, 1]; a sample is x̂₀ > 0.
* **Sampling noise** comes from ``sample_seed`` (one stream, the same for every image), so a
  prediction is reproducible and independent of the batch it is in.
* **STAPLE**: P(y = 1) starts at 50 % and is re-estimated each iteration (see ``staple.py``);
  20 EM iterations then a final E-step; the returned logits are the posterior log-odds,
  clipped to ±15.
* **Uncertainty map**: the entropy of the per-pixel vote fraction over the samples, in bits
  (``model.uncertainty(images)``, or ``model.last_uncertainty`` after a forward).
"""

from laworder.models.registry import register_model
from laworder.models.unisegdiff.model import UniSegDiff, UniSegDiffOutput, soft_dice_and_bce  # noqa: F401
from laworder.models.unisegdiff.stages import StagePlan  # noqa: F401
from laworder.models.unisegdiff.staple import StapleResult, staple, vote_entropy  # noqa: F401


@register_model("unisegdiff")
def unisegdiff(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UniSegDiff:
    """UniSegDiff: staged diffusion segmenter (CFENet + DNet with DCA), STAPLE of 20 samples."""
    return UniSegDiff(in_channels=in_channels, num_classes=num_classes, **kwargs)

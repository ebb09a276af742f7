"""Mask-conditioned diffusion with pluggable per-pixel loss weighting (LAW and baselines).

- ``weighting``: objectives behind ``OBJECTIVES`` / ``create_objective`` (uniform, fixed,
  ratio, law, adaptive_distillation, noise_consistency, siamese),
- ``backbones``: ``builtin`` (small pixel-space UNet + ControlNet) and ``sd15``,
- ``task``: ``SynthTask`` for the shared training core and ``train_synth(config)``,
- ``sampler``: DDIM + classifier-free guidance and ``sample_pool``.
"""

from laworder.synth.backbones import BACKBONES, Backbone, create_backbone  # noqa: F401
from laworder.synth.config import SynthConfig  # noqa: F401
from laworder.synth.weighting import OBJECTIVES, Objective, ObjectiveOutput, create_objective  # noqa: F401


def __getattr__(name: str):
    # training / sampling entry points import the data layer and diffusers lazily
    if name in ("SynthTask", "train_synth", "build_backbone"):
        from laworder.synth import task

        return getattr(task, name)
    if name in ("MaskConditionedSampler", "sample_pool", "load_backbone", "check_sampling_args"):
        from laworder.synth import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'laworder.synth' has no attribute {name!r}")


__all__ = [
    "BACKBONES", "Backbone", "create_backbone", "SynthConfig", "OBJECTIVES", "Objective", "ObjectiveOutput",
    "create_objective", "SynthTask", "train_synth", "build_backbone", "MaskConditionedSampler", "sample_pool",
    "load_backbone", "check_sampling_args",
]

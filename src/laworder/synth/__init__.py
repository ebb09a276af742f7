"""Mask-conditioned diffusion with pluggable per-pixel loss weighting (LAW and baselines).

- ``weighting``: objectives behind ``OBJECTIVES`` / ``create_objective`` (uniform, fixed,
  ratio, law, adaptive_distillation, noise_consistency, siamese),
- ``backbones``: ``builtin`` (small pixel-space UNet + ControlNet) and ``sd15``,
- ``task``: ``SynthTask`` for the shared training core and ``train_synth(config)``,
- ``sampler``: DDIM + classifier-free guidance and ``sample_pool``,
- ``pretrained``: generators shipped in the package (``load_pretrained("polyps/law")``).
"""

_LAZY = {  # name -> submodule: importing ``laworder.synth`` (the CLI does, to build its parser) stays torch-free
    "BACKBONES": "backbones", "Backbone": "backbones", "create_backbone": "backbones",
    "SynthConfig": "config",
    "OBJECTIVES": "weighting", "Objective": "weighting", "ObjectiveOutput": "weighting", "create_objective": "weighting",
    "SynthTask": "task", "train_synth": "task", "build_backbone": "build",
    "MaskConditionedSampler": "sampler", "sample_pool": "sampler", "load_backbone": "sampler",
    "check_sampling_args": "sampler",
    "load_pretrained": "pretrained", "list_generators": "pretrained", "PretrainedGenerator": "pretrained",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"laworder.synth.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'laworder.synth' has no attribute {name!r}")


__all__ = [
    "BACKBONES", "Backbone", "create_backbone", "SynthConfig", "OBJECTIVES", "Objective", "ObjectiveOutput",
    "create_objective", "SynthTask", "train_synth", "build_backbone", "MaskConditionedSampler", "sample_pool",
    "load_backbone", "check_sampling_args", "load_pretrained", "list_generators", "PretrainedGenerator",
]

"""Diffusion backbones behind one interface: ``builtin`` (small pixel-space UNet + ControlNet,
trained from scratch) and ``sd15`` (Stable Diffusion 1.5 + ControlNet from a local folder)."""

from laworder.synth.backbones.base import BACKBONES, LESION_TOKEN, NULL_TOKEN, Backbone, Residuals, create_backbone  # noqa: F401
from laworder.synth.backbones import builtin, sd15  # noqa: F401  (registration side effects)
from laworder.synth.backbones.builtin import BuiltinBackbone, ConditionEmbedding  # noqa: F401
from laworder.synth.backbones.sd15 import StableDiffusionBackbone, check_model_folder  # noqa: F401

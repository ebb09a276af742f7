"""``build_backbone(config)``: the backbone a ``SynthConfig`` names, for training (``task``) and
sampling (``sampler``) alike.

Its own module below both, so the sampler need not import the training task (which imports the
validation grid, which imports the sampler: an import circle).
"""

from __future__ import annotations

from laworder.errors import ConfigError
from laworder.synth.backbones import Backbone, create_backbone
from laworder.synth.config import SynthConfig
from laworder.synth.weighting import objective_backbone_defaults


def build_backbone(config: SynthConfig) -> Backbone:
    """The backbone a config names, at the config's resolution (or the backbone's default),
    with what the objective implies (e.g. ``siamese``: the dense hint input) unless the config
    sets it; training and sampling both build it here, so they agree.

    Stage ``base``: the UNet alone, all of it trained. With ``config.base``: the base run's
    UNet and embedding loaded and frozen (``unet_trainable`` unlocks UNet parts), then the
    ControlNet made from that UNet. ``sd15``: its UNet is the pretrained base.
    """
    from laworder.synth.base_model import load_base_weights, resolve_base

    config = resolve_base(config)
    kwargs = {**objective_backbone_defaults(config.objective), **config.backbone_kwargs}
    kwargs["image_channels"] = config.image_channels
    if config.resolution is not None:
        kwargs["resolution"] = config.resolution
    # the ControlNet copies the UNet encoder: build it only once a pretrained UNet is loaded
    try:
        backbone = create_backbone(config.backbone, controlnet=config.stage == "controlnet" and not config.base, **kwargs)
    except TypeError as exc:  # an unknown backbone_kwargs key
        raise ConfigError(f"backbone_kwargs={config.backbone_kwargs!r} not accepted by backbone {config.backbone!r} ({exc})") from None
    if config.stage == "base":
        if backbone.pretrained_unet:
            backbone.set_unet_trainable("all")
        return backbone
    if config.base:
        load_base_weights(backbone, config.base)
        if "embedding" in backbone.modules:
            backbone.freeze("embedding")  # the token embedding stays with the base, like SD's text encoder
        backbone.add_controlnet()
    if config.base or backbone.pretrained_unet:
        backbone.set_unet_trainable(config.unet_trainable)
    elif config.unet_trainable != "none":
        raise ConfigError(f"unet_trainable={config.unet_trainable!r} needs a pretrained UNet (--base RUN or the sd15 "
                          f"backbone); without --base the {config.backbone} UNet trains from scratch with the ControlNet")
    return backbone

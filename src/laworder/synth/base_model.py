"""A pretrained base (``laworder synth pretrain``) under a ControlNet run (``synth train --base``).

The base run trains the UNet and its token embedding alone (stage ``base``); a ControlNet run
names it in ``SynthConfig.base``, takes its backbone settings (backbone, backbone_kwargs with the
VAE, resolution, image channels), loads its weights and freezes them before the ControlNet is
made ``from_unet``, as ControlNet is built on SD 1.5. Everything here raises before a run
folder is written.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from laworder.config import from_dict, load_yaml
from laworder.errors import ConfigError, DataError, MissingWeightsError
from laworder.paths import resolve
from laworder.synth.backbones import Backbone
from laworder.synth.config import STAGES, SynthConfig

#: networks a base run provides (those the backbone has are loaded)
BASE_MODULES = ("unet", "embedding")


def read_base_run(path: str | Path) -> tuple[Path, SynthConfig]:
    """(absolute folder, its config) of a finished ``synth pretrain`` run.

    Raises:
        ConfigError: not a folder, no config.yaml, not a synth config, or a ControlNet run.
        MissingWeightsError: the run has no ``model/last/unet.safetensors`` (not finished).
    """
    folder = resolve(path)
    what = "a `laworder synth pretrain` run folder"
    if not folder.is_dir():
        raise ConfigError(f"--base {path}: no such folder (expected {what})")
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--base {path} is not {what}: it has no config.yaml")
    try:
        config = from_dict(SynthConfig, load_yaml(config_file), where=str(config_file))
    except ConfigError as err:
        raise ConfigError(f"--base {path} is not {what}: its config.yaml is not a synthesis config ({err})") from None
    if config.stage != "base":
        raise ConfigError(f"--base {path} is a `synth train` run (stage {config.stage!r}), not {what}")
    weights = folder / "model" / "last" / "unet.safetensors"
    if not weights.is_file():
        raise MissingWeightsError(f"--base {path} has no {weights.relative_to(folder)}: did `synth pretrain` finish?")
    return folder, config


def resolve_base(config: SynthConfig) -> SynthConfig:
    """``config`` with the base run's backbone settings (absolute ``base`` path); unchanged without
    a base. Settings the config gives that contradict the base are an error naming both."""
    if config.stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {config.stage!r}")
    if not config.base:
        return config
    if config.stage == "base":
        raise ConfigError("`synth pretrain` trains the base UNet from scratch: it takes no --base")
    folder, base = read_base_run(config.base)
    clashes = []
    if config.resolution is not None and config.resolution != base.resolution:
        clashes.append(f"resolution {config.resolution} (base: {base.resolution})")
    if config.image_channels != base.image_channels:
        clashes.append(f"image_channels {config.image_channels} (base: {base.image_channels})")
    if config.backbone not in (base.backbone, "builtin"):
        clashes.append(f"backbone {config.backbone!r} (base: {base.backbone!r})")
    for key, value in config.backbone_kwargs.items():
        if key in base.backbone_kwargs and base.backbone_kwargs[key] != value:
            clashes.append(f"backbone_kwargs.{key}={value!r} (base: {base.backbone_kwargs[key]!r})")
    if clashes:
        raise ConfigError(f"--base {config.base} does not fit this run: {'; '.join(clashes)}. "
                          "Leave these out: they come from the base run")
    return replace(config, base=str(folder), backbone=base.backbone, resolution=base.resolution,
                   image_channels=base.image_channels, backbone_kwargs={**base.backbone_kwargs, **config.backbone_kwargs})


def load_base_weights(backbone: Backbone, base: str | Path) -> None:
    """Load the base run's UNet (and token embedding) into ``backbone``.

    Raises:
        ConfigError: the weights do not fit (a VAE with other latent channels, other UNet widths).
    """
    from laworder.training import load_weights

    folder = Path(base) / "model" / "last"
    for name in BASE_MODULES:
        if name not in backbone.modules and name not in backbone.frozen:
            continue
        try:
            load_weights(backbone.network(name), folder / f"{name}.safetensors")
        except (RuntimeError, DataError) as err:
            if "size mismatch" not in str(err):
                raise
            detail = re.search(r"size mismatch[^)]*\)[^)]*\)", str(err))
            raise ConfigError(f"--base {base}: its {name} weights do not fit this backbone (latent channels or "
                              f"widths differ): {detail.group(0) if detail else err}") from None


__all__ = ["read_base_run", "resolve_base", "load_base_weights", "BASE_MODULES"]

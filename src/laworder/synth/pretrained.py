"""Mask-to-image generators shipped inside the package: ``load_pretrained("polyps/law")``.

A shipped generator is everything sampling needs, with no run folder and nothing to download:
the VAE, the UNet and its token embedding, and the mask ControlNet. It lives under the same
weights dir as the shipped segmenters (``laworder/pretrained/``, or ``$LAWORDER_PRETRAINED_DIR``)::

    synth/<dataset>-<variant>/meta.json   name, backbone and its kwargs, the VAE's diffusers config,
                                          resolution, sampler defaults, which file holds each module,
                                          how it was trained and what it scores (the card's numbers)
    synth/<dataset>-<variant>/card.md     the model card
    synth/_modules/<module>-<sha12>.safetensors
                                          one network's state dict, named by the sha256 of its bytes:
                                          generators sharing a frozen VAE / base UNet share the file,
                                          which keeps the wheel small

Weights may be stored in float16 (``meta["dtype"]``); they are loaded into float32 networks,
and the card states how far that moves the images (``meta["fp16_check"]``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from laworder.errors import ConfigError, DataError, MissingWeightsError

SYNTH_SUBDIR = "synth"
MODULES_SUBDIR = "_modules"
META_FILE = "meta.json"
CARD_FILE = "card.md"
#: the networks a generator holds, in the order they are built and hashed
GENERATOR_MODULES = ("vae", "unet", "embedding", "controlnet")
#: sampler settings a card fixes unless a call overrides them (the paper's CFG, DDIM 50)
DEFAULT_SAMPLING = {"steps": 50, "guidance_scale": 10.0, "mask_guidance": 1.0, "eta": 0.0}


@dataclass(frozen=True)
class GeneratorWeights:
    """One shipped generator and its ``meta.json`` (nothing loaded yet)."""

    folder: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def image_channels(self) -> int:
        return int(self.meta.get("image_channels", 3))

    @property
    def objective(self) -> str:
        return str(self.meta.get("objective", "unknown"))

    @property
    def sampling(self) -> dict[str, Any]:
        return {**DEFAULT_SAMPLING, **self.meta.get("sampling", {})}

    @property
    def files(self) -> dict[str, Path]:
        """Module name -> its safetensors file (paths in meta are relative to the generator folder)."""
        return {name: (self.folder / rel).resolve() for name, rel in self.meta["modules"].items()}

    @property
    def size_bytes(self) -> int:
        """Bytes of this generator's weight files (shared files counted in full)."""
        return sum(f.stat().st_size for f in self.files.values() if f.is_file())


def synth_dir(directory: str | os.PathLike | None = None) -> Path:
    """``<weights dir>/synth``: ``directory``, else ``$LAWORDER_PRETRAINED_DIR``, else the package's."""
    from laworder.models.pretrained import weights_dir

    return weights_dir(directory) / SYNTH_SUBDIR


def list_generators(directory: str | os.PathLike | None = None) -> list[GeneratorWeights]:
    """Every shipped generator (folders of ``synth/`` with a ``meta.json``), sorted by name.

    Raises:
        ConfigError: a ``meta.json`` that is not valid JSON or lacks a required key.
    """
    root = synth_dir(directory)
    if not root.is_dir():
        return []
    found = []
    for meta_path in sorted(root.glob(f"*/{META_FILE}")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"unreadable generator metadata {meta_path}: {err}") from err
        missing = [k for k in ("name", "backbone", "resolution", "modules") if k not in meta]
        if missing:
            raise ConfigError(f"generator metadata {meta_path} lacks {missing}")
        found.append(GeneratorWeights(meta_path.parent, meta))
    return sorted(found, key=lambda g: g.name)


def find_generator(name: str, directory: str | os.PathLike | None = None) -> GeneratorWeights:
    """The shipped generator called ``name`` (``<dataset>/<variant>``, e.g. ``polyps/law``).

    Raises:
        ConfigError: no such generator (the message lists the shipped ones).
    """
    available = list_generators(directory)
    for generator in available:
        if generator.name == name:
            return generator
    known = ", ".join(g.name for g in available) or "(none shipped)"
    raise ConfigError(f"no shipped generator {name!r} in {synth_dir(directory)}; known: {known}")


def build_generator_backbone(generator: GeneratorWeights):
    """Build the backbone ``meta.json`` describes and load the weights (float32, eval mode).

    Raises:
        ConfigError: a backbone other than ``builtin`` or weights that do not fit it.
        MissingWeightsError: a module's weights file is absent.
    """
    import torch
    from safetensors.torch import load_file

    from laworder.synth.backbones import create_backbone

    meta = generator.meta
    if meta["backbone"] != "builtin":
        raise ConfigError(f"generator {generator.name}: only builtin backbones can be shipped, got {meta['backbone']!r}")
    vae = None
    if meta.get("vae_config"):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(meta["vae_config"])
    backbone = create_backbone("builtin", resolution=generator.resolution, image_channels=generator.image_channels,
                               vae=vae, controlnet=True, **meta.get("backbone_kwargs", {}))
    wanted = [name for name in GENERATOR_MODULES if name in backbone.modules or name in backbone.frozen]
    if sorted(wanted) != sorted(meta["modules"]):
        raise ConfigError(f"generator {generator.name}: meta.json lists modules {sorted(meta['modules'])}, "
                          f"the backbone has {sorted(wanted)}")
    for name, file in generator.files.items():
        if not file.is_file():
            raise MissingWeightsError(f"generator {generator.name}: {file} is missing")
        state = {k: v.to(torch.float32) for k, v in load_file(str(file)).items()}
        try:
            backbone.network(name).load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = " ".join(s.strip() for s in str(err).splitlines()[:2])
            raise ConfigError(f"generator {generator.name}: {file.name} does not fit its {name} ({first})") from None
    for module in all_networks(backbone):  # nothing trains here: eval mode, no gradients
        module.eval().requires_grad_(False)
    return backbone


def all_networks(backbone) -> list:
    """The backbone's sampling networks and its frozen ones (VAE, a frozen UNet)."""
    return [*backbone.modules.values(), *backbone.frozen_modules().values()]


def masks_to_tensor(masks: Any, size: int):
    """``N×H×W`` or ``N×1×H×W`` masks in {0, 1} (numpy or torch, bool or numbers) -> float
    ``N×1×size×size`` {0, 1}, resized nearest.

    Raises:
        DataError: another shape, an empty batch, or values other than 0 and 1.
    """
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks.detach().cpu()
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[1] != 1 or tensor.shape[0] == 0:
        raise DataError(f"masks must be N×H×W or N×1×H×W with N >= 1, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        values = torch.unique(tensor)[:5].tolist()
        raise DataError(f"masks must hold only 0 and 1 (got values {values}...); binarise them first, e.g. masks > 0")
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="nearest")
    return tensor


class PretrainedGenerator:
    """A shipped generator ready to sample: ``generate(masks) -> images``.

    ``generator.backbone`` is the loaded ``BuiltinBackbone`` (every network frozen, eval mode);
    ``generator.weights`` its ``GeneratorWeights`` (``meta``, ``folder``, ``resolution``).
    """

    def __init__(self, weights: GeneratorWeights, device: str | None = None) -> None:
        import torch

        self.weights = weights
        self.backbone = build_generator_backbone(weights)
        try:
            self.device = torch.device(device) if device is not None else torch.device("cpu")
        except RuntimeError as exc:
            raise ConfigError(f"device={device!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
        for module in all_networks(self.backbone):
            module.to(self.device)

    @property
    def name(self) -> str:
        return self.weights.name

    @property
    def resolution(self) -> int:
        return self.weights.resolution

    def sampler(self, steps: int | None = None, guidance_scale: float | None = None, mask_guidance: float | None = None,
                eta: float | None = None):
        """A ``MaskConditionedSampler`` with the card's settings where an argument is ``None``."""
        from laworder.synth.ddim import MaskConditionedSampler

        defaults = self.weights.sampling
        pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
        return MaskConditionedSampler(self.backbone, pick(steps, "steps"), pick(guidance_scale, "guidance_scale"),
                                      pick(eta, "eta"), True, pick(mask_guidance, "mask_guidance"))

    def generate(self, masks: Any, seed: int = 0, guidance_scale: float | None = None,
                 mask_guidance: float | None = None, steps: int | None = None, eta: float | None = None,
                 seeds: Sequence[int] | None = None, batch_size: int = 8):
        """Images for ``masks`` (``N×H×W`` / ``N×1×H×W`` in {0, 1}, resized nearest to the
        generator's resolution) -> float ``N×C×R×R`` in [0, 1] on the CPU.

        Mask ``i`` is sampled from seed ``seed + i`` (or ``seeds[i]``): the same seed gives the
        same image, whatever ``batch_size`` (up to float round-off). ``None`` settings take the
        card's (DDIM 50 steps, CFG 10, mask guidance 1: the paper's sampler).

        Raises:
            DataError: masks of another shape or not binary. ConfigError: bad sampler settings.
        """
        import torch

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        tensor = masks_to_tensor(masks, self.resolution)
        if seeds is None:
            seeds = [int(seed) + i for i in range(tensor.shape[0])]
        if len(seeds) != tensor.shape[0]:
            raise ConfigError(f"{len(seeds)} seeds for {tensor.shape[0]} masks")
        sampler = self.sampler(steps, guidance_scale, mask_guidance, eta)
        out = []
        for start in range(0, tensor.shape[0], batch_size):
            batch = tensor[start:start + batch_size].to(self.device)
            images = sampler.sample(batch, list(seeds[start:start + batch_size]))
            out.append(((images.float().cpu() + 1.0) / 2.0).clamp(0, 1))
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"PretrainedGenerator({self.name!r}, resolution={self.resolution}, objective={self.weights.objective!r})"


def load_pretrained(name: str, directory: str | os.PathLike | None = None, device: str | None = None
                    ) -> PretrainedGenerator:
    """The shipped generator ``name`` (``polyps/law``, ``polyps/uniform``; see ``list_generators``),
    loaded and ready: ``load_pretrained("polyps/law").generate(masks, seed=0)``.

    ``name`` may also be a generator folder (one holding ``meta.json``).

    Raises:
        ConfigError: unknown name (lists the shipped ones). MissingWeightsError: a weights file is absent.
    """
    path = Path(name).expanduser()
    if (path / META_FILE).is_file():
        weights = GeneratorWeights(path.resolve(), json.loads((path / META_FILE).read_text()))
    else:
        weights = find_generator(name, directory)
    return PretrainedGenerator(weights, device)


__all__ = ["GeneratorWeights", "PretrainedGenerator", "list_generators", "find_generator", "load_pretrained",
           "build_generator_backbone", "masks_to_tensor", "synth_dir", "DEFAULT_SAMPLING", "GENERATOR_MODULES"]

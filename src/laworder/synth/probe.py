"""The mask probe: has the ControlNet learned to use the mask yet?

Every ``probe_every`` steps the training task scores ε̂ on a fixed held-out set twice: with each
image's own mask, and with a mask taken from another image of the set (a fixed derangement).
The same noise and timesteps are used both times, so the only difference is the mask. The
squared error is averaged per pixel class of the *true* mask, at the diffusion target's
resolution (latents for a VAE backbone):

    lesion      inside the mask, more than ``boundary_width`` px from its edge
    boundary    within ``boundary_width`` px of the edge, on either side
    background  outside the mask, more than ``boundary_width`` px from its edge

``probe_gap_<region> = probe_mse_shuffled_<region> − probe_mse_true_<region>``: positive once the
prediction depends on the mask; a run whose gap stays at zero has not learned the mask.
The records go to the run's ``metrics.jsonl``; ``laworder.experiments.figures.plot_probe``
draws them (``probe.png`` in the run folder after ``laworder synth train``, and in reports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from laworder.errors import ConfigError, DataError
from laworder.synth.backbones import LESION_TOKEN, Backbone

REGIONS = ("lesion", "boundary", "background", "all")
#: timesteps every probe image is scored at (a spread over the 1000-step schedule)
DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


@dataclass
class ProbeSet:
    """A fixed held-out set: ``images`` ``N×C×H×W`` in [-1, 1], ``masks`` ``N×1×H×W`` {0, 1},
    the ``shuffle`` permutation (no fixed points) and the seed of the noise."""

    images: torch.Tensor
    masks: torch.Tensor
    shuffle: torch.Tensor
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    seed: int = 0
    boundary_width: int = 1
    batch_size: int = 16


def derangement(count: int) -> torch.Tensor:
    """``i -> i + 1 mod N``: every item gets another item's mask (N ≥ 2)."""
    if count < 2:
        raise DataError(f"the mask probe needs at least 2 held-out pairs to shuffle masks, got {count}")
    return torch.roll(torch.arange(count), -1)


def make_probe_set(records: Sequence, size: int, channels: int = 3, count: int = 16,
                   timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0, boundary_width: int = 1) -> ProbeSet:
    """The first ``count`` of ``records`` (``PairRecord``, held out from training) at ``size``.

    Raises:
        DataError: fewer than 2 records. ConfigError: ``count`` < 2 or a bad boundary width.
    """
    from laworder.data.dataset import PairDataset

    if count < 2:
        raise ConfigError(f"probe_count must be >= 2 (masks are swapped between probe images), got {count}")
    if boundary_width < 1:
        raise ConfigError(f"boundary_width must be >= 1 px, got {boundary_width}")
    records = list(records)[:count]
    shuffle = derangement(len(records))
    dataset = PairDataset(records, size=size, channels=channels)
    items = [dataset[i] for i in range(len(records))]
    images = torch.stack([item["image"] for item in items]) * 2.0 - 1.0
    masks = torch.stack([item["mask"] for item in items]).float()
    return ProbeSet(images, masks, shuffle, tuple(int(t) for t in timesteps), seed, boundary_width)


def region_maps(masks: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """``B×1×h×w`` {0, 1} masks -> boolean maps per region (lesion, boundary, background, all).

    The boundary is the dilation minus the erosion by a (2·width+1)² square, so it is ``width``
    px wide on each side of the edge; an empty mask has no lesion and no boundary pixels.
    """
    kernel = 2 * width + 1
    dilated = F.max_pool2d(masks, kernel, stride=1, padding=width) > 0.5
    eroded = -F.max_pool2d(-masks, kernel, stride=1, padding=width) > 0.5
    inside = masks > 0.5
    boundary = dilated & ~eroded
    return {"lesion": inside & ~boundary, "boundary": boundary, "background": ~inside & ~boundary,
            "all": torch.ones_like(inside)}


def _target(noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(clean, noise, timesteps)
    raise ConfigError(f"the mask probe supports epsilon and v_prediction backbones, not {kind!r}")


@torch.no_grad()
def probe_mask(backbone: Backbone, noise_scheduler, probe: ProbeSet, device: torch.device | str = "cpu") -> dict[str, float]:
    """ε-MSE per region with the true and with the shuffled masks, and their gap.

    Returns:
        ``probe_mse_true_<region>``, ``probe_mse_shuffled_<region>`` and ``probe_gap_<region>``
        for region in lesion, boundary, background, all (pixel-weighted over the whole set; nan
        for a region with no pixels).
    """
    generator = torch.Generator().manual_seed(probe.seed)
    count = probe.images.shape[0]
    rows = [(index, t) for t in probe.timesteps for index in range(count)]
    sums = {f"{kind}_{region}": 0.0 for kind in ("true", "shuffled") for region in REGIONS}
    pixels = {region: 0.0 for region in REGIONS}
    for start in range(0, len(rows), probe.batch_size):
        chunk = rows[start : start + probe.batch_size]
        index = torch.tensor([i for i, _ in chunk])
        timesteps = torch.tensor([t for _, t in chunk], device=device)
        images = probe.images[index].to(device)
        clean = backbone.encode(images, generator)
        noise = torch.randn(clean.shape, generator=generator).to(device, clean.dtype)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        target = _target(noise_scheduler, clean, noise, timesteps).float()
        cond = torch.full((len(chunk),), LESION_TOKEN, device=device)
        true_masks = probe.masks[index].to(device)
        regions = region_maps(F.interpolate(true_masks, size=clean.shape[-2:], mode="nearest"), probe.boundary_width)
        for region, where in regions.items():
            pixels[region] += float(where.sum())
        for kind, masks in (("true", true_masks), ("shuffled", probe.masks[probe.shuffle[index]].to(device))):
            eps = backbone.predict_noise(noisy, timesteps, backbone.mask_hint(masks), cond).float()
            error = (eps - target).pow(2).mean(dim=1, keepdim=True)  # B×1×h×w, averaged over channels
            for region, where in regions.items():
                sums[f"{kind}_{region}"] += float((error * where).sum())
    logs: dict[str, float] = {}
    for region in REGIONS:
        total = pixels[region]
        true = sums[f"true_{region}"] / total if total else float("nan")
        shuffled = sums[f"shuffled_{region}"] / total if total else float("nan")
        logs.update({f"probe_mse_true_{region}": true, f"probe_mse_shuffled_{region}": shuffled,
                     f"probe_gap_{region}": shuffled - true})
    return logs


def read_probe(metrics_path: str | Path) -> list[dict]:
    """The probe records of a run's ``metrics.jsonl`` (in step order)."""
    path = Path(metrics_path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in records if "probe_gap_all" in r), key=lambda r: r["step"])

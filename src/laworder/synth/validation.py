"""Validation samples during training (as diffusers' ``train_controlnet.py`` logs them).

A fixed set of held-out masks is sampled with fixed seeds every ``loop.snapshot_every`` steps
and written as ``validation/step_XXXXXXXX.png``: one row per mask, columns mask | sample. A base
run (no ControlNet) writes its samples for the same seeds, without a mask. The sampler draws
only from its own generators, so validation leaves the training stream (and resume) untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from laworder.data.io import write_image
from laworder.synth.backbones import LESION_TOKEN, NULL_TOKEN, Backbone
from laworder.synth.ddim import MaskConditionedSampler, mask_seed
from laworder.synth.sampler import load_mask_tensor


class BaseModelSampler(MaskConditionedSampler):
    """DDIM + CFG on the image token for a UNet without a ControlNet (the mask is not used)."""

    def guided_noise(self, sample: torch.Tensor, timestep: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        cond = torch.full((batch,), LESION_TOKEN, device=sample.device)
        eps_cond = self.backbone.predict_noise(sample, timestep, None, cond)
        if self.guidance_scale == 1.0:
            return eps_cond
        eps_uncond = self.backbone.predict_noise(sample, timestep, None, torch.full_like(cond, NULL_TOKEN))
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)


def held_out_masks(collection, count: int, size: int) -> tuple[list[str], torch.Tensor]:
    """(stems, ``K×1×size×size`` masks): the first ``count`` test masks, else training masks."""
    records = [record for subset in collection.test.values() for record in subset] or list(collection.train)
    records = records[:count]
    return [record.stem for record in records], torch.stack([load_mask_tensor(Path(r.mask), size) for r in records])


@torch.no_grad()
def validation_grid(backbone: Backbone, masks: torch.Tensor, stems: list[str], steps: int, guidance: float) -> torch.Tensor:
    """``3×H×W`` grid in [0, 1]: one row per mask, mask | sample (seed ``crc32(stem)``)."""
    sampler_type = MaskConditionedSampler if backbone.has_controlnet else BaseModelSampler
    sampler = sampler_type(backbone, steps=steps, guidance_scale=guidance)
    images = (sampler.sample(masks, [mask_seed(0, stem) for stem in stems]).float().cpu() + 1.0) / 2.0
    images = images.clamp(0, 1).expand(-1, 3, -1, -1)
    columns = [masks.float().cpu().expand(-1, 3, -1, -1), images]
    rows = [torch.cat([F.pad(column[i], (2, 2, 2, 2), value=1.0) for column in columns], dim=2) for i in range(len(stems))]
    return torch.cat(rows, dim=1)


def write_validation_grid(path: Path, backbone: Backbone, masks: torch.Tensor, stems: list[str], steps: int,
                          guidance: float) -> Path:
    grid = validation_grid(backbone, masks, stems, steps, guidance)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.ascontiguousarray(grid.permute(1, 2, 0).numpy().astype(np.float32)))
    return path

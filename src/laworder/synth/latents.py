"""The frozen VAE's posterior of every training image, computed once per run.

A latent backbone's step starts with ``z₀ ~ q(z | x) · scaling_factor``. The VAE is frozen and
synthesis training applies no augmentation to the images, so the posterior's moments (mean and
log-variance, ``B×2C×h×w``) are a fixed function of each dataset item: computing them once and
drawing only the sample per step gives the same ``z₀`` from the same generator draws (the
``randn`` of ``DiagonalGaussianDistribution.sample``) at no encoder cost. Measured on the compact
benchmark's shapes (``bench/results/synth_speed.md``) the encoder is a fifth of a ControlNet step.

Exact resume: the moments are computed in fixed chunks of consecutive dataset items, whatever
order the batches come in, so a resumed run rebuilds the same numbers bit for bit.
Memory: ``2 · latent_channels · (resolution / downsample)²`` floats per image (8 KB at 64² with
the built-in 4× VAE; 128 KB at SD's 512²).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from laworder.errors import DataError

if TYPE_CHECKING:
    from laworder.synth.backbones import Backbone

#: dataset items encoded per VAE call while the cache is built (fixed: it fixes the numbers)
CHUNK = 32


class LatentCache:
    """Posterior moments of every item of ``dataset`` under ``backbone``'s VAE, built on first use.

    Args:
        dataset: the training dataset (items ``{"image": C×H×W in [0, 1], "index": int}``).
        chunk: items per VAE call while building.
    """

    def __init__(self, dataset: Any, chunk: int = CHUNK) -> None:
        self.dataset = dataset
        self.chunk = chunk
        self.moments: torch.Tensor | None = None  # N×2C×h×w on the training device once built

    @torch.no_grad()
    def build(self, backbone: "Backbone", device: torch.device) -> torch.Tensor:
        """Encode every item once (chunks of ``chunk`` consecutive items) -> ``N×2C×h×w``."""
        parts = []
        for start in range(0, len(self.dataset), self.chunk):
            stop = min(start + self.chunk, len(self.dataset))
            images = torch.stack([self.dataset[i]["image"] for i in range(start, stop)]).to(device)
            parts.append(backbone.latent_moments(images * 2.0 - 1.0))
        self.moments = torch.cat(parts)
        return self.moments

    def sample(self, backbone: "Backbone", indices: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Latent targets ``B×C×h×w`` of the items ``indices`` (what ``backbone.encode`` returns for
        their images, drawing the same random numbers from ``generator``)."""
        if self.moments is None:
            self.build(backbone, indices.device)
        indices = indices.to(self.moments.device, torch.long)
        if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < len(self.moments)):
            raise DataError(f"batch indices {indices.tolist()} outside the cached dataset of {len(self.moments)} items")
        return backbone.sample_latents(self.moments.index_select(0, indices), generator)


__all__ = ["LatentCache", "CHUNK"]

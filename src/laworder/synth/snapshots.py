"""PNG grids of the weighting maps during training (paper Fig. 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from laworder.data.io import write_image

COLUMNS = ("w_ratio", "delta", "w_final")


def _as_rgb(tile: torch.Tensor, channels_out: int = 3) -> torch.Tensor:
    return tile.expand(channels_out, -1, -1) if tile.shape[0] == 1 else tile


def write_weight_grid(
    path: Path, images: torch.Tensor, masks: torch.Tensor, maps: dict[str, torch.Tensor], pad: int = 2
) -> np.ndarray:
    """``weight_grid`` written as a PNG at ``path``; returns the grid (for the experiment trackers)."""
    grid = weight_grid(images, masks, maps, pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, grid)
    return grid


def weight_grid(images: torch.Tensor, masks: torch.Tensor, maps: dict[str, torch.Tensor], pad: int = 2) -> np.ndarray:
    """``H×W×3`` float grid in [0, 1], one row per sample: image | mask | w_ratio | δ | w_final
    (the maps the objective returned).

    δ is shown on its own [0, 1] scale; weight maps are divided by the largest weight in the
    grid so relative emphasis is visible. Maps are upsampled nearest to the image size.
    """
    images = images.detach().float().cpu().clamp(0, 1)
    size = images.shape[-2:]
    columns = [images, masks.detach().float().cpu().expand(-1, 1, -1, -1)]
    for name in COLUMNS:
        if name not in maps:
            continue
        values = F.interpolate(maps[name].detach().float().cpu(), size=size, mode="nearest")
        if name != "delta":
            values = values / values.max().clamp_min(1e-12)
        columns.append(values.clamp(0, 1))
    rows = []
    for index in range(images.shape[0]):
        tiles = [_as_rgb(column[index]) for column in columns]
        tiles = [F.pad(tile, (pad, pad, pad, pad), value=1.0) for tile in tiles]
        rows.append(torch.cat(tiles, dim=2))
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(grid.astype(np.float32))

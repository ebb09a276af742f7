"""Batch augmentation on tensors, run inside the training step.

Drawing the random numbers from a ``torch.Generator`` the training loop owns (and checkpoints)
makes a resumed run augment exactly as the uninterrupted one would; DataLoader workers never
touch randomness.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    hflip: bool = True,
    vflip: bool = True,
    rotate_degrees: float = 90.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and rotation, per sample, applied identically to image and mask.

    Args:
        images: ``B×C×H×W`` float.
        masks: ``B×1×H×W`` float in {0, 1}.
        generator: a CPU generator (even for CUDA tensors); exactly ``3·B`` numbers are drawn per
            call whatever the flags, so the stream does not depend on the options.
        hflip, vflip: flip left-right / up-down, each with probability 0.5.
        rotate_degrees: rotate by an angle uniform in [-rotate_degrees, rotate_degrees] about the
            centre (square pixels kept on non-square images); 0 disables it.

    Returns:
        ``(images, masks)`` of the same shapes. Images are resampled bilinearly, masks by nearest
        neighbour (so they stay exactly binary); the uncovered corners are zero.

    Raises:
        ValueError: shapes that do not fit, or a generator that is not on the CPU.
    """
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected images B×C×H×W and masks B×1×H×W, "
                         f"got {tuple(images.shape)} and {tuple(masks.shape)}")
    if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} differ in batch or size")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    if rotate_degrees < 0:
        raise ValueError(f"rotate_degrees must be >= 0, got {rotate_degrees}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be on the CPU, got {generator.device}")
    batch, _, height, width = images.shape
    draws = torch.rand(batch, 3, generator=generator, dtype=torch.float64)
    flip_x = torch.where((draws[:, 0] < 0.5) & hflip, -1.0, 1.0)
    flip_y = torch.where((draws[:, 1] < 0.5) & vflip, -1.0, 1.0)
    angle = (2 * draws[:, 2] - 1) * math.radians(rotate_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)

    # affine_grid works in normalised coordinates ([-1, 1] on each axis). A rotation R in pixel
    # units becomes S⁻¹ R S there, with S = diag(W, H), so non-square images are not sheared.
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * (height / width) * flip_y
    theta[:, 1, 0] = sin * (width / height) * flip_x
    theta[:, 1, 1] = cos * flip_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images_out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks_out = F.grid_sample(masks.to(grid), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)
    return images_out, masks_out.to(masks.dtype)

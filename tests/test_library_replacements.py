"""Hand-written pieces replaced by library calls give the same numbers as before (the old code is
kept here as the reference): Dice/IoU through MONAI, LR schedules through diffusers/transformers.
The overlay stays hand-written: MONAI's blend_images differs (see the last test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laworder.metrics.overlap import dice_iou_per_image
from laworder.training.optim import SCHEDULERS


def counted_dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous hand-written implementation: integer counts, ratio in float64."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    intersection = (pred & target).sum(dim=1).double()
    union = (pred | target).sum(dim=1).double()
    size_sum = pred.sum(dim=1).double() + target.sum(dim=1).double()
    both_empty = size_sum == 0
    dice = torch.where(both_empty, 1.0, 2.0 * intersection / size_sum.clamp_min(1.0))
    iou = torch.where(both_empty, 1.0, intersection / union.clamp_min(1.0))
    return dice.float(), iou.float()


@pytest.mark.parametrize("shape,density", [((6, 1, 32, 32), 0.3), ((5, 1, 17, 9), 0.05), ((3, 1, 256, 256), 0.5),
                                           ((4, 1, 64, 48), 0.001)])
def test_monai_dice_iou_equal_the_counted_values_including_empty_masks(shape, density):
    generator = torch.Generator().manual_seed(sum(shape))
    pred = torch.rand(shape, generator=generator) < density
    target = torch.rand(shape, generator=generator) < density
    pred[0], target[0] = False, False  # both empty -> 1
    pred[1] = False  # prediction empty, reference not -> 0
    target[2] = False  # reference empty, prediction not -> 0
    dice, iou = dice_iou_per_image(pred, target)
    expected_dice, expected_iou = counted_dice_iou(pred, target)
    assert torch.equal(dice, expected_dice) and torch.equal(iou, expected_iou)
    assert dice[:3].tolist() == [1.0, 0.0, 0.0] and iou[:3].tolist() == [1.0, 0.0, 0.0]
    # float {0, 1} masks give the same as bool ones
    assert torch.equal(dice_iou_per_image(pred.float(), target.float())[0], dice)


def old_cosine_factor(step: int, total: int, floor: float) -> float:
    """The previous hand-written cosine (no warm-up)."""
    progress = min(1.0, max(0.0, step / max(1, total)))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lrs(name: str, total: int, base_lr: float, min_lr: float, warmup: int = 0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = SCHEDULERS.create(name, optimizer=optimizer, total_steps=total, min_lr=min_lr, warmup_steps=warmup)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("total,base_lr,min_lr", [(1, 1e-4, 1e-6), (7, 3e-3, 1e-6), (100, 1e-4, 1e-6),
                                                  (1234, 1e-3, 0.0), (50, 2e-4, 2e-4)])
def test_library_cosine_schedule_is_bit_identical_to_the_hand_written_one(total, base_lr, min_lr):
    floor = min_lr / base_lr
    expected = [base_lr * old_cosine_factor(step, total, floor) for step in range(total + 1)]
    assert _lrs("cosine", total, base_lr, min_lr) == expected


def test_constant_schedule_and_linear_warmup_from_zero():
    assert _lrs("constant", 20, 1e-4, 0.0) == [1e-4] * 21
    warm = _lrs("constant", 10, 1e-3, 0.0, warmup=4)
    assert warm[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3]) and warm[5:] == [1e-3] * 6
    cosine = _lrs("cosine", 10, 1e-3, 1e-6, warmup=4)
    assert cosine[4] == pytest.approx(1e-3) and cosine[-1] == pytest.approx(1e-6)


def test_monai_blend_images_is_not_the_overlay_so_the_overlay_stays():
    """blend_images has no solid border and rounds differently: keeping our overlay is deliberate."""
    from monai.visualize import blend_images

    from laworder.seg.predict import overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    mask = np.zeros((24, 30), bool)
    mask[6:18, 8:22] = True
    ours = overlay(image, mask)
    border = mask & ~np.pad(mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:], 1)
    assert (ours[border] == (255, 64, 0)).all()
    blended = np.asarray(blend_images(image.transpose(2, 0, 1) / 255.0, mask[None].astype(float), alpha=0.45,
                                      rescale_arrays=False)).transpose(1, 2, 0)
    assert not (np.round(blended[border] * 255) == (255, 64, 0)).all()

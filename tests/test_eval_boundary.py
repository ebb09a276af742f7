"""HD95 / normalised surface Dice in ``seg evaluate``: per image, per subset, over subsets, markdown."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laworder.data.io import write_image, write_mask
from laworder.seg.evaluate import EvalResult, evaluate_records, evaluation_subsets, format_markdown

SIZE = 32


class BrightIsLesion(torch.nn.Module):
    """Logits +10 where the image's first channel is bright, -10 elsewhere (a known predictor)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images[:, :1] > 0.5).float() * 20 - 10


def _pair(folder, stem: str, bright: tuple[slice, slice] | None, lesion: tuple[slice, slice] | None) -> None:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    if bright:
        image[bright] = 255
    if lesion:
        mask[lesion] = True
    write_image(folder / "images" / f"{stem}.png", image)
    write_mask(folder / "masks" / f"{stem}.png", mask)


def test_evaluate_reports_hd95_and_nsd_per_image_subset_and_mean(tmp_path):
    square = (slice(8, 16), slice(8, 16))
    shifted = (slice(8, 16), slice(9, 17))  # one pixel right: HD95 1 px, NSD 1 at 2 px
    _pair(tmp_path / "a", "shift", square, shifted)
    _pair(tmp_path / "a", "both_empty", None, None)
    _pair(tmp_path / "b", "missed", None, square)  # nothing predicted: HD95 = diagonal, NSD 0
    subsets = {name: evaluation_subsets(str(tmp_path / name))[name] for name in ("a", "b")}
    result = evaluate_records(BrightIsLesion(), subsets, SIZE, nsd_tolerance=2.0)
    rows = {row["stem"]: row for rows in result.per_image.values() for row in rows}
    assert rows["shift"]["hd95"] == pytest.approx(1.0) and rows["shift"]["nsd"] == pytest.approx(1.0)
    assert rows["both_empty"]["hd95"] == 0.0 and rows["both_empty"]["nsd"] == 1.0
    diagonal = math.hypot(SIZE, SIZE)
    assert rows["missed"]["hd95"] == pytest.approx(diagonal) and rows["missed"]["nsd"] == 0.0
    assert result.subsets["a"]["hd95"] == pytest.approx(0.5) and result.subsets["a"]["nsd"] == pytest.approx(1.0)
    # the mean over subsets weighs each subset once
    assert result.mean["hd95"] == pytest.approx((0.5 + diagonal) / 2)
    assert result.mean["nsd"] == pytest.approx(0.5)
    assert result.boundary["nsd_tolerance_px"] == 2.0 and result.boundary["grid_px"] == [SIZE, SIZE]
    text = format_markdown(result, "bright")
    assert "NSD at 2 px" in text and "| a | 2 | 0.50 | 100.0 |" in text
    assert f"| mean over subsets | | {(0.5 + diagonal) / 2:.2f} | 50.0 |" in text
    # the JSON round-trips into EvalResult (bench scripts read eval.json back this way)
    assert EvalResult(**result.to_json()).boundary == result.boundary


def test_evaluate_without_tolerance_keeps_dice_iou_only(tmp_path):
    _pair(tmp_path / "a", "x", (slice(4, 12), slice(4, 12)), (slice(4, 12), slice(4, 12)))
    result = evaluate_records(BrightIsLesion(), evaluation_subsets(str(tmp_path / "a")), SIZE)
    assert set(result.mean) == {"dice", "iou"} and result.boundary == {}
    assert "HD95" not in format_markdown(result)

"""The protocol table carries HD95 and surface Dice beside Dice/IoU (issue 27, item 3)."""

from __future__ import annotations

import math

import pytest

from laworder.errors import ConfigError
from laworder.seg.evaluate import EvalResult
from laworder.seg.protocol import format_protocol, run_protocol, summarise


def _eval(dice: float, hd95: float | None = None, nsd: float | None = None) -> EvalResult:
    extra = {} if hd95 is None else {"hd95": hd95, "nsd": nsd}
    row = {"dice": dice, "iou": dice / 2, **extra}
    return EvalResult(subsets={"A": {**row, "n": 3}}, mean=dict(row))


def test_summary_and_table_hold_boundary_means():
    result = summarise("order", [0, 1], [_eval(0.6, 4.0, 0.5), _eval(0.8, 6.0, 0.7)])
    assert result.summary["mean/hd95"]["mean"] == pytest.approx(5.0)
    assert result.summary["mean/nsd"]["mean"] == pytest.approx(0.6)
    assert result.summary["mean/hd95"]["std"] == pytest.approx(math.sqrt(2))
    table = format_protocol([result])
    header, _, row = table.splitlines()
    assert header.endswith("| Mean HD95 (px) | Mean NSD |")
    assert row.split(" | ")[-2:] == ["5.0 ± 1.4", "60.0 ± 14.1 |"]  # HD95 in px, NSD in %


def test_without_boundary_scores_the_table_stays_dice_iou():
    table = format_protocol([summarise("mk_unet", [0], [_eval(0.5)])])
    assert "HD95" not in table and "NSD" not in table
    assert table.splitlines()[2] == "| mk_unet | 50.0 | 25.0 | 50.0 | 25.0 |"


def test_a_seed_without_boundary_scores_drops_them_from_the_summary():
    result = summarise("order", [0, 1], [_eval(0.6, 4.0, 0.5), _eval(0.8)])
    assert "mean/hd95" not in result.summary and "A/nsd" not in result.summary


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), float("inf")])
def test_bad_tolerance_is_refused_before_training(tolerance, tmp_path):
    from laworder.seg.config import SegTrainConfig
    from laworder.training import LoopConfig

    config = SegTrainConfig(data="procedural:8:32:0", model="mk_unet", image_size=32,
                            loop=LoopConfig(output_dir=str(tmp_path / "p"), epochs=1))
    with pytest.raises(ConfigError, match="nsd_tolerance"):
        run_protocol(config, seeds=[0], nsd_tolerance=tolerance)
    assert not (tmp_path / "p").exists()

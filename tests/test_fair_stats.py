"""Statistics of the fair LAW benchmark on synthetic numbers: hierarchical bootstrap, decision
rule, headroom, boundary F-score, size bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laworder.errors import DataError
from laworder.metrics.bootstrap import BootstrapCI, decide, headroom, hierarchical_bootstrap_difference
from laworder.metrics.boundary import boundary_f_score, boundary_map, size_bin


def test_a_constant_shift_gives_a_point_interval_at_the_shift():
    rng = np.random.default_rng(0)
    comparator = rng.uniform(0.2, 0.8, size=(3, 50))
    ci = hierarchical_bootstrap_difference(comparator + 0.1, comparator, replicates=500)
    # every seed row shifted by the same amount, but seeds are resampled per arm: only seed noise is left
    assert ci.low < 0.1 < ci.high and ci.difference == pytest.approx(0.1)
    identical = np.tile(comparator[:1], (3, 1))
    ci = hierarchical_bootstrap_difference(identical + 0.1, identical, replicates=500)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)


def test_between_seed_spread_widens_the_interval_as_theory_says():
    rng = np.random.default_rng(1)
    seeds, masks, sigma = 200, 40, 0.05
    arm = rng.normal(0.0, sigma, size=(seeds, 1)) + np.zeros((1, masks))  # seed effects only
    comparator = rng.normal(0.0, sigma, size=(seeds, 1)) + np.zeros((1, masks))
    ci = hierarchical_bootstrap_difference(arm, comparator, replicates=4000, seed=2)
    expected_half_width = 1.96 * sigma * np.sqrt(2.0 / seeds)
    assert (ci.high - ci.low) / 2 == pytest.approx(expected_half_width, rel=0.15)


def test_the_interval_covers_a_zero_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    trials = 60
    for trial in range(trials):
        mask_effect = rng.normal(0.5, 0.2, size=(1, 30))  # shared masks: paired across arms
        arm = mask_effect + rng.normal(0, 0.03, size=(3, 1)) + rng.normal(0, 0.05, size=(3, 30))
        comparator = mask_effect + rng.normal(0, 0.03, size=(3, 1)) + rng.normal(0, 0.05, size=(3, 30))
        ci = hierarchical_bootstrap_difference(arm, comparator, replicates=400, seed=trial)
        covered += ci.low <= 0.0 <= ci.high
    assert covered / trials >= 0.8  # percentile bootstrap with 3 seeds undercovers a little


def test_strata_weigh_each_subset_equally_like_a_mean_over_subsets_column():
    rng = np.random.default_rng(4)
    comparator = np.tile(rng.uniform(0.2, 0.8, size=(1, 40)), (3, 1))  # no seed noise: only masks vary
    arm = comparator.copy()
    arm[:, :10] += 0.2  # a gain on the small subset only
    strata = ["small"] * 10 + ["large"] * 30
    pooled = hierarchical_bootstrap_difference(arm, comparator, replicates=500)
    stratified = hierarchical_bootstrap_difference(arm, comparator, replicates=500, strata=strata)
    assert pooled.difference == pytest.approx(0.05)  # 10 of 40 images gained 0.2
    assert stratified.difference == pytest.approx(0.1)  # (0.2 + 0) / 2 subsets
    # within-subset resampling cannot change a subset's size: the shift is exact in every replicate
    assert stratified.low == pytest.approx(0.1) and stratified.high == pytest.approx(0.1)
    assert pooled.low < 0.05 < pooled.high


def test_bad_score_arrays_are_named():
    with pytest.raises(DataError, match="different mask counts"):
        hierarchical_bootstrap_difference(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(DataError, match="seeds × masks"):
        hierarchical_bootstrap_difference(np.zeros(5), np.zeros((2, 5)))
    with pytest.raises(DataError, match="non-finite"):
        hierarchical_bootstrap_difference(np.full((2, 5), np.nan), np.zeros((2, 5)))
    with pytest.raises(DataError, match="strata must label each of the 5 masks"):
        hierarchical_bootstrap_difference(np.zeros((2, 5)), np.zeros((2, 5)), strata=["a"] * 4)


def ci(low: float, high: float) -> BootstrapCI:
    return BootstrapCI((low + high) / 2, low, high, 0.95, 1000, (3, 3), 179)


@pytest.mark.parametrize("low, high, verdict", [
    (0.05, 0.12, "wins"), (0.005, 0.02, "wins (small: below the margin)"), (-0.05, -0.01, "loses"),
    (-0.02, 0.025, "refuted (no gain of +margin)"), (-0.02, 0.08, "inconclusive"),
])
def test_the_decision_rule(low, high, verdict):
    decision = decide(ci(low, high), margin=0.03)
    assert decision["verdict"] == verdict
    assert decision["wins"] == (low > 0) and decision["refuted"] == (high < 0.03)


def test_headroom_is_the_share_between_chance_and_ceiling():
    assert headroom(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert headroom(0.2, 0.2, 0.8) == 0.0 and headroom(0.8, 0.2, 0.8) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ceiling"):
        headroom(0.5, 0.4, 0.4)


def test_boundary_f_score_tolerates_small_shifts_and_follows_the_empty_rule():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:20, 8:20] = 1
    assert int(boundary_map(target).sum()) == 4 * 12 - 4
    assert boundary_f_score(target, target).item() == 1.0
    shifted = torch.roll(target, shifts=2, dims=-1)
    assert boundary_f_score(shifted, target, tolerance=2).item() == 1.0
    assert boundary_f_score(shifted, target, tolerance=1).item() < 1.0
    far = torch.roll(target, shifts=(10, 10), dims=(-2, -1))
    assert boundary_f_score(far, target, tolerance=2).item() < 0.3
    empty = torch.zeros_like(target)
    assert boundary_f_score(empty, empty).item() == 1.0 and boundary_f_score(empty, target).item() == 0.0


def test_size_bins():
    assert [size_bin(r) for r in (0.0, 0.049, 0.05, 0.15, 0.151, 0.9)] == ["small", "small", "medium", "medium", "large", "large"]

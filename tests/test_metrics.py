"""Dice/IoU, subset means, Fréchet distance, KID and the FID/KID driver (fast: no Inception)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from laworder.data.io import write_image
from laworder.errors import ConfigError, DataError
from laworder.metrics import (
    FewSamplesWarning,
    SegmentationMeter,
    compute_fid_kid,
    dice_iou_per_image,
    extract_features,
    frechet_distance,
    kid,
    mean_std,
    summarise_subsets,
    threshold_logits,
)
from laworder.metrics import fid as fid_module
from laworder.metrics.boundary import hd95_nsd_per_image


def _mask(rows: list[str]) -> torch.Tensor:
    """A 1×1×H×W mask drawn with '#' (foreground) and '.' (background)."""
    grid = [[1.0 if c == "#" else 0.0 for c in row] for row in rows]
    return torch.tensor(grid)[None, None]


# --- Dice / IoU -------------------------------------------------------------------------------


def test_dice_iou_match_hand_counted_overlap():
    pred = _mask(["##..", "##..", "....", "...."])  # 4 pixels
    target = _mask([".##.", ".##.", ".##.", "...."])  # 6 pixels, 2 shared
    dice, iou = dice_iou_per_image(pred, target)
    assert dice.item() == pytest.approx(2 * 2 / (4 + 6))
    assert iou.item() == pytest.approx(2 / 8)


def test_empty_masks_follow_the_documented_rule():
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    full = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    pred = torch.cat([empty, empty, full])
    target = torch.cat([empty, full, empty])
    dice, iou = dice_iou_per_image(pred, target)
    assert dice.tolist() == [1.0, 0.0, 0.0]
    assert iou.tolist() == [1.0, 0.0, 0.0]


def test_perfect_prediction_scores_one_and_batch_is_per_image():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    target[1, 0, 0:2, :] = 1
    pred = target.clone()
    pred[1] = 0
    pred[1, 0, 0, :] = 1  # half of image 1's lesion
    dice, iou = dice_iou_per_image(pred, target)
    assert dice[0].item() == 1.0 and iou[0].item() == 1.0
    assert dice[1].item() == pytest.approx(2 * 8 / (8 + 16))
    assert iou[1].item() == pytest.approx(8 / 16)


def test_dice_iou_rejects_probabilities_and_shape_mismatch():
    with pytest.raises(DataError, match="threshold"):
        dice_iou_per_image(torch.full((1, 1, 2, 2), 0.7), torch.ones(1, 1, 2, 2))
    with pytest.raises(DataError, match=r"\(1, 1, 2, 2\).*\(1, 1, 3, 3\)"):
        dice_iou_per_image(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3))
    with pytest.raises(DataError, match="B×1×H×W"):
        dice_iou_per_image(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2))


def test_threshold_logits_cuts_sigmoid_at_threshold():
    logits = torch.tensor([-3.0, -0.01, 0.01, 3.0]).view(1, 1, 2, 2)
    assert threshold_logits(logits).flatten().tolist() == [False, False, True, True]
    assert threshold_logits(logits, 0.95).flatten().tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        threshold_logits(logits, 1.0)


# --- HD95 / normalised surface Dice ----------------------------------------------------------


def test_hd95_nsd_match_hand_computed_shift():
    # a 2×2 square shifted one pixel right: every pixel is a boundary pixel; each mask has two
    # boundary pixels at distance 0 and two at distance 1 from the other -> HD95 = 1
    pred = _mask(["......", "..##..", "..##..", "......"])
    target = _mask(["......", "...##.", "...##.", "......"])
    hd95, nsd = hd95_nsd_per_image(pred, target, tolerance=2.0)
    assert hd95.tolist() == [1.0] and nsd.tolist() == [1.0]
    # tolerance 0.5 px: only the 2 + 2 distance-0 pixels of 8 count
    assert hd95_nsd_per_image(pred, target, tolerance=0.5)[1].item() == pytest.approx(0.5)


def test_hd95_is_a_percentile_not_the_maximum():
    # a 20-pixel line, and the same line plus one stray pixel 10 px away: the stray pixel is 1
    # of 21 target boundary distances, above the 95th percentile (Hausdorff max would be 10)
    pred = torch.zeros(1, 1, 12, 20)
    pred[0, 0, 0, :] = 1
    target = pred.clone()
    target[0, 0, 10, 0] = 1
    hd95, nsd = hd95_nsd_per_image(pred, target, tolerance=2.0)
    assert hd95.item() == 0.0
    assert nsd.item() == pytest.approx((20 + 20) / (20 + 21))


def test_hd95_of_two_single_pixels_is_their_distance():
    pred, target = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    pred[0, 0, 1, 1], target[0, 0, 4, 5] = 1, 1  # 3-4-5 triangle
    hd95, nsd = hd95_nsd_per_image(pred, target, tolerance=4.9)
    assert hd95.item() == pytest.approx(5.0) and nsd.item() == 0.0
    assert hd95_nsd_per_image(pred, target, tolerance=5.0)[1].item() == 1.0


def test_hd95_nsd_empty_mask_rule():
    empty = torch.zeros(1, 1, 6, 8, dtype=torch.bool)
    some = empty.clone()
    some[0, 0, 2:4, 2:4] = True
    hd95, nsd = hd95_nsd_per_image(torch.cat([empty, empty, some, some]), torch.cat([empty, some, empty, some]))
    # both empty: 0 / 1; one empty: the image diagonal √(6² + 8²) = 10 / 0; identical: 0 / 1
    assert hd95.tolist() == [0.0, 10.0, 10.0, 0.0]
    assert nsd.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_hd95_nsd_reject_bad_input():
    with pytest.raises(DataError, match="binary"):
        hd95_nsd_per_image(torch.full((1, 1, 2, 2), 0.7), torch.ones(1, 1, 2, 2))
    with pytest.raises(DataError, match="differ"):
        hd95_nsd_per_image(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="tolerance"):
        hd95_nsd_per_image(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), tolerance=-1)


# --- subset means, mean ± std -----------------------------------------------------------------


def test_summarise_subsets_weighs_each_subset_equally():
    per_subset = {
        "Kvasir": {"dice": [1.0, 1.0, 1.0, 0.0], "iou": [1.0, 1.0, 0.5, 0.0]},
        "CVC-ClinicDB": {"dice": [0.5], "iou": [0.25]},
    }
    summary = summarise_subsets(per_subset)
    assert summary["per_subset"]["Kvasir"] == {"dice": 0.75, "iou": 0.625, "n_images": 4}
    assert summary["per_subset"]["CVC-ClinicDB"]["n_images"] == 1
    # Mean of subset means (0.75 + 0.5) / 2, not the pooled per-image mean 0.7.
    assert summary["mean_over_subsets"]["dice"] == pytest.approx(0.625)
    assert summary["mean_over_subsets"]["iou"] == pytest.approx((0.625 + 0.25) / 2)


def test_summarise_subsets_rejects_inconsistent_metrics():
    with pytest.raises(DataError, match="metrics"):
        summarise_subsets({"a": {"dice": [1.0]}, "b": {"iou": [1.0]}})
    with pytest.raises(DataError, match="non-zero"):
        summarise_subsets({"a": {"dice": []}})
    with pytest.raises(DataError):
        summarise_subsets({})


def test_mean_std_reports_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert std == pytest.approx(math.sqrt(2.5))
    assert mean_std([1.0, 3.0], ddof=0) == (2.0, 1.0)
    single_mean, single_std = mean_std([0.7])
    assert single_mean == 0.7 and math.isnan(single_std)
    with pytest.raises(DataError):
        mean_std([])


def test_segmentation_meter_collects_per_image_values_by_subset():
    meter = SegmentationMeter()
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :2] = 1
    meter.update(target.clone(), target, subset="Kvasir", names=["k1", "k2"])
    meter.update(torch.zeros(1, 1, 4, 4), target[:1], subset="CVC-ClinicDB")
    assert meter.per_subset() == {
        "Kvasir": {"dice": [1.0, 1.0], "iou": [1.0, 1.0]},
        "CVC-ClinicDB": {"dice": [0.0], "iou": [0.0]},
    }
    assert [row["name"] for row in meter.per_image()] == ["k1", "k2", "0"]
    assert meter.summary()["mean_over_subsets"]["dice"] == pytest.approx(0.5)
    meter.reset()
    assert meter.per_subset() == {}


# --- Fréchet distance -------------------------------------------------------------------------


def _random_gaussian_stats(rng: np.random.Generator, dim: int):
    samples = rng.normal(size=(4 * dim, dim)) @ rng.normal(size=(dim, dim))
    return samples.mean(axis=0) + rng.normal(size=dim), np.cov(samples, rowvar=False)


def test_frechet_distance_matches_direct_scipy_computation():
    rng = np.random.default_rng(0)
    mu1, sigma1 = _random_gaussian_stats(rng, 8)
    mu2, sigma2 = _random_gaussian_stats(rng, 8)
    covmean = np.real(linalg.sqrtm(sigma1 @ sigma2))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    var1, var2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    result = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert result == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_keeps_real_part_of_slightly_complex_sqrtm(monkeypatch):
    sigma = np.eye(3)
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: a.astype(complex) + 1e-6j)
    assert frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma) == pytest.approx(0.0)
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda a: a.astype(complex) + 0.5j)
    with pytest.raises(ValueError, match="Imaginary component|imaginary component"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma)


def test_frechet_distance_offsets_diagonal_when_sqrtm_is_not_finite(monkeypatch):
    seen = []
    real_sqrtm = linalg.sqrtm

    def fake_sqrtm(matrix):
        seen.append(matrix.copy())
        return np.full_like(matrix, np.inf) if len(seen) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(fid_module.linalg, "sqrtm", fake_sqrtm)
    sigma = np.diag([1.0, 4.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        value = frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma, eps=1e-3)
    np.testing.assert_allclose(seen[1], (sigma + 1e-3 * np.eye(2)) @ (sigma + 1e-3 * np.eye(2)))
    assert value == pytest.approx(-2 * 2e-3, abs=1e-6)  # trace terms exclude the offset


def test_frechet_distance_is_finite_for_rank_deficient_covariances():
    rng = np.random.default_rng(2)
    few1, few2 = rng.normal(size=(5, 12)), rng.normal(size=(5, 12)) + 0.5
    stats1, stats2 = fid_module.feature_statistics(few1), fid_module.feature_statistics(few2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = frechet_distance(*stats1, *stats2)
    assert np.isfinite(value) and value > 0


def test_frechet_distance_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --- KID --------------------------------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 16))
    same = rng.normal(size=(200, 16))
    shifted = rng.normal(size=(200, 16)) + 1.0
    same_mean, same_std = kid(real, same, num_subsets=10, subset_size=1000)
    shifted_mean, _ = kid(real, shifted, num_subsets=10, subset_size=1000)
    assert abs(same_mean) < 3 * same_std + 1e-2
    assert shifted_mean > 10 * max(abs(same_mean), same_std)


def test_kid_matches_explicit_unbiased_mmd_on_full_sets():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    n = 6
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = kid(x, y, num_subsets=3, subset_size=50, seed=7)  # subset = whole set
    assert mean == pytest.approx(xx + yy - 2 * xy)
    assert std == pytest.approx(0.0, abs=1e-12)


# --- FID/KID driver with a cheap stand-in extractor -------------------------------------------


class PooledPixels(torch.nn.Module):
    """Cheap stand-in for Inception: 4×4 average-pooled pixels (48-d features)."""

    input_size = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, 4).flatten(1)


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_compute_fid_kid_refuses_mismatched_counts():
    with pytest.raises(DataError, match=r"6 real vs 5 generated.*truncate"):
        compute_fid_kid(_images(6, 0), _images(5, 1), PooledPixels())


def test_compute_fid_kid_truncates_on_request_and_records_it():
    with pytest.warns(FewSamplesWarning):
        result = compute_fid_kid(
            _images(60, 0), _images(50, 1), PooledPixels(), match_counts="truncate",
            reference="toy reference", kid_subsets=5,
        )
    assert (result.n_real, result.n_fake) == (50, 50)
    assert result.truncated_from == (60, 50)
    assert result.reference == "toy reference"
    assert result.kid_subset_size == 50
    assert result.fid > 0 and np.isfinite(result.kid_mean)
    assert result.to_dict()["n_real"] == 50


def test_compute_fid_kid_warns_below_2048_images_and_same_set_scores_zero():
    images = _images(40, 2)
    with pytest.warns(FewSamplesWarning, match="40 images.*rank deficient"):
        result = compute_fid_kid(images, images.clone(), PooledPixels(), kid_subsets=3)
    assert result.fid == pytest.approx(0.0, abs=1e-6)
    assert result.truncated_from is None


def test_compute_fid_kid_rejects_unknown_mode_and_non_finite_features():
    with pytest.raises(ConfigError, match="match_counts"):
        compute_fid_kid(_images(4, 0), _images(4, 1), PooledPixels(), match_counts="pad")

    class Broken(PooledPixels):
        def forward(self, images):
            return torch.full((len(images), 8), float("nan"))

    with pytest.raises(DataError, match="non-finite"), pytest.warns(FewSamplesWarning):
        compute_fid_kid(_images(4, 0), _images(4, 1), Broken())


def test_compute_fid_kid_reads_folders_with_mixed_sizes(tmp_path):
    rng = np.random.default_rng(5)
    for folder, seed_offset in (("real", 0), ("fake", 1)):
        (tmp_path / folder).mkdir()
        for index in range(6):
            size = 16 if index % 2 else 24
            write_image(tmp_path / folder / f"{index:02d}.png",
                        rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        (tmp_path / folder / "notes.txt").write_text("ignored")
    with pytest.warns(FewSamplesWarning):
        result = compute_fid_kid(tmp_path / "real", tmp_path / "fake", PooledPixels(), batch_size=4)
    assert result.reference == str(tmp_path / "real")
    assert (result.n_real, result.n_fake) == (6, 6)


def test_extract_features_validates_pixel_ranges_and_layouts():
    with pytest.raises(DataError, match=r"\[0, 1\].*\(x \+ 1\) / 2"):
        extract_features(_images(2, 0) * 2 - 1, PooledPixels())
    uint8_hwc = (np.random.default_rng(6).random((3, 16, 16, 3)) * 255).astype(np.uint8)
    from_array = extract_features(uint8_hwc, PooledPixels())
    from_tensor = extract_features(torch.from_numpy(uint8_hwc).permute(0, 3, 1, 2), PooledPixels())
    np.testing.assert_allclose(from_array, from_tensor)
    grey = extract_features(torch.rand(2, 1, 16, 16), PooledPixels())
    assert grey.shape == (2, 48)
    with pytest.raises(DataError, match="not found"):
        extract_features("/nonexistent/folder", PooledPixels())

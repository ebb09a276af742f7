"""FID and KID as pytorch-fid / torch-fidelity compute them.

FID (Heusel et al. 2017) fits a Gaussian to the Inception pool3 features of each image
set and measures::

    d² = ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

:func:`frechet_distance` follows pytorch-fid's ``calculate_frechet_distance`` (Dougal
Sutherland's stable version) including its numerical guards. Features come from
:class:`~laworder.metrics.inception.FIDInceptionV3`; statistics are float64 with
``np.cov(rowvar=False)`` (N − 1 normalisation), as pytorch-fid.

KID (Bińkowski et al. 2018) is the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (xᵀy / d + 1)³`` averaged over random subsets, as torch-fidelity reports it.

Every result records its reference set, both sample counts and which weights computed it
(``weights``; anything but the published TF Inception-2015-12-05 file is labelled "not
comparable with published FID"): FID depends strongly on the number of images, so numbers are
only comparable at equal counts.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor

from laworder.errors import ConfigError, DataError
from laworder.metrics.image_sources import (
    ImageSource,
    count_images,
    describe_source,
    iter_image_batches,
)

__all__ = [
    "MIN_RELIABLE_FID_SAMPLES",
    "FIDResult",
    "FewSamplesWarning",
    "compute_fid_kid",
    "extract_features",
    "fid_kid_from_features",
    "feature_statistics",
    "frechet_distance",
    "kid",
]

# pool3 has 2048 dimensions: with fewer images the covariance estimate is rank deficient.
MIN_RELIABLE_FID_SAMPLES = 2048
MATCH_COUNT_MODES = ("refuse", "truncate")


class FewSamplesWarning(UserWarning):
    """FID/KID computed on fewer images than the feature dimension."""


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    # scipy >= 1.16 deprecates (1.18 removes) ``disp``; the plain call returns the same
    # square root pytorch-fid gets from ``sqrtm(..., disp=False)[0]``.
    return linalg.sqrtm(matrix)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), pytorch-fid's way.

    Guards, as pytorch-fid: if ``sqrtm(sigma1 @ sigma2)`` is not finite (near-singular
    product) it is recomputed with ``eps·I`` added to both covariances; a complex result
    whose diagonal imaginary parts are below 1e-3 keeps its real part, otherwise
    ``ValueError`` is raised.

    Args:
        mu1, mu2: mean vectors, shape ``D``.
        sigma1, sigma2: covariance matrices, shape ``D×D``.
        eps: diagonal offset used only when the first square root is not finite.

    Returns:
        The squared Fréchet distance (what FID reports), as a Python float.

    Raises:
        ValueError: mismatched shapes, or an imaginary component that is too large.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")

    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: sigma1·sigma2 is singular; adding {eps} to the covariance diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))

    # Numerical error can leave a slight imaginary component.
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: sqrtm has an imaginary component of {largest}")
        covmean = covmean.real

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, rows are samples) of ``N×D`` features, float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD² over random subsets.

    Kernel ``k(x, y) = (xᵀy / d + 1)³`` (degree 3, gamma 1/d, coef 1). Each of
    ``num_subsets`` rounds draws ``m`` rows without replacement from each set, where
    ``m = min(subset_size, N1, N2)``, and computes::

        MMD² = [Σ_{i≠j} k(xᵢ, xⱼ) + Σ_{i≠j} k(yᵢ, yⱼ)] / (m(m−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

    Args:
        features1, features2: ``N1×D`` and ``N2×D`` features.
        num_subsets: number of random subsets.
        subset_size: requested subset size; clipped to the smaller set.
        seed: seed of the subset sampler (results are reproducible).

    Returns:
        ``(mean, std)`` of the per-subset MMD² values; std is the population std over
        subsets (``ddof=0``), as torch-fidelity reports it.

    Raises:
        ValueError: feature dimensions differ, fewer than two rows, or bad arguments.
    """
    x = np.asarray(features1, dtype=np.float64)
    y = np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs N×D features of equal D, got {x.shape} and {y.shape}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(
            f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}"
        )
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    dim = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for index in range(num_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        k_xx = (xs @ xs.T / dim + 1) ** 3
        k_yy = (ys @ ys.T / dim + 1) ** 3
        k_xy = (xs @ ys.T / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[index] = within - 2 * k_xy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def _model_device(model: Callable) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return torch.device("cpu")


def _stack(images: list[Tensor], size: int | None) -> Tensor:
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images)
    if size is None:
        raise DataError(
            f"images in one batch differ in size ({sorted({tuple(i.shape) for i in images})}) "
            "and the extractor has no input_size to resize them to"
        )
    # Per-image resizing gives exactly what the extractor's own resize would give.
    return torch.cat(
        [
            F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
            for image in images
        ]
    )


@torch.no_grad()
def extract_features(
    source: ImageSource,
    extractor: Callable[[Tensor], Tensor],
    batch_size: int = 50,
    limit: int | None = None,
) -> np.ndarray:
    """Run ``extractor`` over an image source and return ``N×D`` float64 features.

    Args:
        source: folder, file list, tensor or array (see :mod:`.image_sources`).
        extractor: maps ``B×3×H×W`` float images in [0, 1] to ``B×D`` features, e.g.
            :func:`~laworder.metrics.inception.load_fid_inception`'s network. Its optional
            ``input_size`` attribute is used to batch images of different sizes.
        batch_size: images per forward pass (pytorch-fid's default is 50).
        limit: use only the first ``limit`` images.

    Raises:
        DataError: unreadable images, or features that are not finite.
    """
    device = _model_device(extractor)
    size = getattr(extractor, "input_size", None)
    chunks = []
    for images in iter_image_batches(source, batch_size, limit=limit):
        features = extractor(_stack(images, size).to(device))
        chunks.append(features.reshape(len(images), -1).double().cpu().numpy())
    features = np.concatenate(chunks)
    bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad_rows.size:
        raise DataError(
            f"non-finite features for {bad_rows.size} image(s) of {describe_source(source)}, "
            f"first indices {bad_rows[:5].tolist()}; check those images and the weights"
        )
    return features


@dataclasses.dataclass(frozen=True)
class FIDResult:
    """FID/KID of a generated set against a stated reference set.

    Attributes:
        fid: Fréchet Inception Distance.
        kid_mean, kid_std: KID over ``kid_subsets`` subsets of ``kid_subset_size`` images.
        n_real, n_fake: images actually used from each set.
        reference: description of the real reference set (e.g. "Polyps held-out test").
        generated: description of the generated set.
        truncated_from: ``(n_real, n_fake)`` available before truncation, or ``None``.
        weights: which network computed the features (e.g. "TF Inception 2015-12-05 pool3
            (default_1.pt, sha1:a16e4d89)"; otherwise it ends in "not comparable with published FID").
        comparable: the features come from the published FID network (checked by file digest).
    """

    fid: float
    kid_mean: float
    kid_std: float
    n_real: int
    n_fake: int
    reference: str
    generated: str
    kid_subsets: int
    kid_subset_size: int
    truncated_from: tuple[int, int] | None = None
    weights: str = ""
    comparable: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _matched_count(n_real: int, n_fake: int, match_counts: str) -> int:
    if match_counts not in MATCH_COUNT_MODES:
        raise ConfigError(f"match_counts must be one of {MATCH_COUNT_MODES}, got {match_counts!r}")
    if n_real != n_fake and match_counts == "refuse":
        raise DataError(
            f"FID needs matched sample counts: {n_real} real vs {n_fake} generated images. "
            "Generate/select the same number, or pass match_counts='truncate' to use the "
            f"first {min(n_real, n_fake)} of each (recorded in the result)."
        )
    return min(n_real, n_fake)


def compute_fid_kid(
    real_images: ImageSource,
    fake_images: ImageSource,
    extractor: Callable[[Tensor], Tensor],
    match_counts: str = "refuse",
    *,
    reference: str | None = None,
    batch_size: int = 50,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> FIDResult:
    """FID and KID between a real reference set and a generated set.

    Args:
        real_images: the reference set (folder, file list, tensor or array).
        fake_images: the generated set, same kinds.
        extractor: feature network, normally ``load_fid_inception(weights)``.
        match_counts: ``"refuse"`` (default) raises when the counts differ;
            ``"truncate"`` uses the first ``min(n_real, n_fake)`` images of each and
            records the original counts in ``truncated_from``.
        reference: description of the reference set stored in the result (defaults to
            the folder path or the in-memory type and count).
        batch_size: images per forward pass.
        kid_subsets, kid_subset_size: KID subset sampling (see :func:`kid`).
        seed: KID subset seed.

    Warns:
        FewSamplesWarning: fewer than 2048 images per set; the 2048×2048 covariance is
            then rank deficient and FID is biased upward (compare only at equal counts).

    Raises:
        DataError: counts differ under ``"refuse"``, unreadable images, non-finite features.
        ConfigError: unknown ``match_counts``.
    """
    n_real_available, n_fake_available = count_images(real_images), count_images(fake_images)
    n_used = _matched_count(n_real_available, n_fake_available, match_counts)
    if n_used < 2:
        raise DataError(f"FID needs at least 2 images per set, got {n_used}")
    if n_used < MIN_RELIABLE_FID_SAMPLES:
        warnings.warn(
            f"FID/KID on {n_used} images per set (< {MIN_RELIABLE_FID_SAMPLES}, the pool3 "
            "dimension): the covariance estimate is rank deficient, FID is biased upward and "
            "only comparable with FIDs computed on the same number of images.",
            FewSamplesWarning,
            stacklevel=2,
        )
    real_features = extract_features(real_images, extractor, batch_size, limit=n_used)
    fake_features = extract_features(fake_images, extractor, batch_size, limit=n_used)
    truncated = n_real_available != n_fake_available
    return fid_kid_from_features(
        real_features,
        fake_features,
        extractor,
        reference=reference if reference is not None else describe_source(real_images),
        generated=describe_source(fake_images),
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        seed=seed,
        truncated_from=(n_real_available, n_fake_available) if truncated else None,
    )


def fid_kid_from_features(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    extractor: object,
    *,
    reference: str,
    generated: str,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    truncated_from: tuple[int, int] | None = None,
) -> FIDResult:
    """FID/KID of two ``N×D`` feature sets of equal N (features reused, e.g. one reference set
    scored against a pool and against the floor). ``extractor`` is only described, not run.

    Raises:
        DataError: the counts differ or are below 2.
    """
    from laworder.metrics.inception import describe_extractor

    if len(real_features) != len(fake_features) or len(real_features) < 2:
        raise DataError(
            f"FID needs two feature sets of equal size >= 2, got {len(real_features)} and {len(fake_features)}"
        )
    n_used = len(real_features)
    fid = frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))
    kid_mean, kid_std = kid(real_features, fake_features, kid_subsets, kid_subset_size, seed)
    weights, comparable = describe_extractor(extractor)
    return FIDResult(
        fid=fid,
        kid_mean=kid_mean,
        kid_std=kid_std,
        n_real=n_used,
        n_fake=n_used,
        reference=reference,
        generated=generated,
        kid_subsets=kid_subsets,
        kid_subset_size=min(kid_subset_size, n_used),
        truncated_from=truncated_from,
        weights=weights,
        comparable=comparable,
    )

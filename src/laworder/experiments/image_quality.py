"""FID/KID of a synthetic pool against real images, with the real-vs-real floor beside it.

A pool's FID alone says little: at a few hundred images and 64² FID is large even for real
images. The *floor* is the FID of real test images against real train images, both resized to
the generator's resolution exactly as training resized them (``load_pair``: Pillow bilinear),
at the same count as the pool's FID: what a generator indistinguishable from the training data
would score. Every record names the weights that computed it (``FIDResult.weights``); with
anything but the published TF Inception-2015-12-05 file it says "not comparable with published
FID".

Features are computed once per real image and size within one call (the pool's reference set
and the floor's test set are often the same images).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from laworder.errors import DataError
from laworder.metrics.fid import FIDResult, FewSamplesWarning, extract_features, fid_kid_from_features

__all__ = ["FeatureCache", "fid_floor", "pool_fid", "real_images_at", "split_records"]

DEFAULT_WEIGHTS = "default"  # config value: the default weights (resolve_fid_weights(None))


def _extractor(weights: str | os.PathLike | None, extractor: Callable | None, device: str | None) -> Callable:
    if extractor is not None:
        return extractor
    from laworder.metrics.inception import load_fid_inception

    if weights in (None, "", DEFAULT_WEIGHTS):
        weights = None
    return load_fid_inception(weights, device=device or "cpu")


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        from laworder.errors import ConfigError

        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def real_images_at(records: Sequence, size: int) -> np.ndarray:
    """The records' images as ``N×size×size×3`` uint8, resized as training resizes them."""
    from laworder.data.dataset import load_pair

    return np.stack([load_pair(record, size)[0] for record in records])


def split_records(data: str, split: str, layout: str = "auto") -> list:
    """``train``, ``test`` (every test subset) or one test subset of a dataset, as records."""
    from laworder.data.layouts import load_dataset

    collection = load_dataset(data, layout=layout)
    if split == "train":
        return list(collection.train)
    if split == "test":
        return [record for subset in collection.test.values() for record in subset]
    if split in collection.test:
        return list(collection.test[split])
    from laworder.errors import ConfigError

    raise ConfigError(f"unknown split {split!r}; choose train, test or one of {sorted(collection.test)}")


class FeatureCache:
    """Inception features of real images, computed once per (image file, size) in one process."""

    def __init__(self, extractor: Callable[[Tensor], Tensor], batch_size: int = 50) -> None:
        self.extractor, self.batch_size = extractor, batch_size
        self._rows: dict[tuple[str, int], np.ndarray] = {}

    def real(self, records: Sequence, size: int) -> np.ndarray:
        """``N×2048`` features of the records' images at ``size``² (float64)."""
        todo = [r for r in records if (str(r.image), size) not in self._rows]
        if todo:
            features = extract_features(real_images_at(todo, size), self.extractor, self.batch_size)
            self._rows.update({(str(r.image), size): row for r, row in zip(todo, features)})
        return np.stack([self._rows[(str(r.image), size)] for r in records])

    def images(self, source: Any) -> np.ndarray:
        """Features of any image source (a pool's images), not cached."""
        return extract_features(source, self.extractor, self.batch_size)


def _subset(count: int, total: int, seed: int) -> list[int]:
    """``count`` of ``range(total)`` chosen by ``seed`` (all of them, in order, when count >= total)."""
    if count >= total:
        return list(range(total))
    return sorted(np.random.default_rng(seed).choice(total, count, replace=False).tolist())


def fid_floor(
    data: str,
    image_size: int,
    count: int | None = None,
    *,
    weights: str | os.PathLike | None = None,
    extractor: Callable[[Tensor], Tensor] | None = None,
    reference_split: str = "test",
    other_split: str = "train",
    layout: str = "auto",
    seed: int = 0,
    batch_size: int = 50,
    kid_subsets: int = 100,
    device: str | None = None,
    cache: FeatureCache | None = None,
) -> FIDResult:
    """The FID floor: real ``reference_split`` images against real ``other_split`` images.

    Both sets are resized to ``image_size``² as training resizes them, then scored like a pool.

    Args:
        data: a dataset folder or spec (``load_dataset``).
        image_size: the generator's resolution.
        count: images per set (the pool's FID count, so the two FIDs compare); ``None`` = the
            smaller split. A larger set is subsampled with ``seed`` (sorted indices).
        weights: FID weights (``None``/``"default"``: :func:`~laworder.metrics.inception.resolve_fid_weights`).
        extractor: a feature network instead of ``weights`` (tests, a network already loaded).
        reference_split, other_split: ``train``, ``test`` or a test-subset name.
        seed: subset seed (also the KID subset seed).
        kid_subsets: KID subsets.
        device: where to run the network loaded from ``weights``.
        cache: features already computed in this process.

    Returns:
        An :class:`~laworder.metrics.fid.FIDResult` (``reference``: the first split,
        ``generated``: the second, both described with the size and count).

    Raises:
        MissingWeightsError: no FID weights (the message names the expected files).
        DataError: a split with fewer than 2 images.
    """
    _check_batch_size(batch_size)
    cache = cache or FeatureCache(_extractor(weights, extractor, device), batch_size)
    first, second = split_records(data, reference_split, layout), split_records(data, other_split, layout)
    n = min(len(first), len(second), count if count is not None else len(first))
    if n < 2:
        raise DataError(f"FID floor needs 2+ images in {reference_split} and {other_split} of {data}, "
                        f"got {len(first)} and {len(second)}")
    first = [first[i] for i in _subset(n, len(first), seed)]
    second = [second[i] for i in _subset(n, len(second), seed + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        real_a, real_b = cache.real(first, image_size), cache.real(second, image_size)
    return fid_kid_from_features(
        real_a, real_b, cache.extractor,
        reference=f"{data} {reference_split} ({n} real images at {image_size}²)",
        generated=f"{data} {other_split} ({n} real images at {image_size}²)",
        kid_subsets=kid_subsets, kid_subset_size=min(1000, n), seed=seed,
    )


def pool_fid(
    pool: str | os.PathLike,
    data: str,
    split: str = "test",
    *,
    weights: str | os.PathLike | None = None,
    extractor: Callable[[Tensor], Tensor] | None = None,
    floor: bool = True,
    layout: str = "auto",
    batch_size: int = 50,
    kid_subsets: int = 100,
    seed: int = 0,
    device: str | None = None,
    cache: FeatureCache | None = None,
) -> dict[str, Any]:
    """FID/KID of a pool against the real images of its conditioning masks, and the floor.

    The reference set is the real image of each pool pair's source mask (``manifest.json``
    ``items[].source_mask``), in ``data``'s ``split``, at the pool's resolution; counts are
    matched (the first ``min`` of each, pool stem order). The floor (:func:`fid_floor`, test vs
    train) uses the same count where the splits allow it.

    Returns:
        ``{"fid": FIDResult dict, "floor": FIDResult dict | None, "weights": label,
        "comparable": bool, "resolution": int, "n": int}``.

    Raises:
        DataError: no pool pair whose source mask belongs to ``split`` of ``data``.
        MissingWeightsError: no FID weights.
    """
    from laworder.experiments.mask_recovery import read_manifest

    _check_batch_size(batch_size)
    pool = Path(pool)
    manifest = read_manifest(pool)
    resolution = int(manifest["resolution"])
    by_mask = {str(Path(r.mask)): r for r in split_records(data, split, layout)}
    pairs = [(item["stem"], by_mask.get(str(Path(item.get("source_mask", ""))))) for item in manifest.get("items", [])]
    pairs = sorted((stem, record) for stem, record in pairs if record is not None)
    if len(pairs) < 2:
        raise DataError(f"{pool}: fewer than 2 pool images come from masks of {data} ({split}); "
                        "compare a pool with the dataset and split its masks came from")
    cache = cache or FeatureCache(_extractor(weights, extractor, device), batch_size)
    fakes = [pool / "images" / f"{stem}.png" for stem, _ in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        real = cache.real([record for _, record in pairs], resolution)
        fake = cache.images(fakes)
    result = fid_kid_from_features(
        real, fake, cache.extractor,
        reference=f"{data} {split} ({len(pairs)} real images of the pool's masks at {resolution}²)",
        generated=str(pool), kid_subsets=kid_subsets, kid_subset_size=min(1000, len(pairs)), seed=seed)
    floor_result = fid_floor(data, resolution, len(pairs), extractor=cache.extractor, layout=layout, seed=seed,
                             kid_subsets=kid_subsets, cache=cache) if floor else None
    return {"fid": result.to_dict(), "floor": floor_result.to_dict() if floor_result else None,
            "weights": result.weights, "comparable": result.comparable, "resolution": resolution, "n": len(pairs)}

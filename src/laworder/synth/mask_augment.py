"""New conditioning masks from existing ones: seeded affine jitter (flip, rotation, scale, shift).

``N`` jittered copies of each of ``M`` source masks give ``N×M`` new pairs when a pool is sampled
from them (``sample_pool(..., mask_augment=N)``). Each copy's transform is drawn from its own
generator, seeded by ``(seed, crc32(source stem), copy index)``, and applied to the mask at the
sampling resolution with nearest-neighbour inverse mapping in float64 numpy, so a pool is the same
byte for byte whatever the batch size or process count.

A transform is accepted only if it keeps every lesion: each connected component of the source
mask (8-connectivity) must land wholly inside the frame (the forward-mapped centres of all its
pixels) and keep at least ``min_kept`` of its expected area (``scale² × pixels``, at least one
pixel). A rejected draw is retried with the jitter amplitudes halved; after ``tries`` rejections
the copy is the flip alone, which always keeps every lesion. Each copy records its transform and
the attempt that gave it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from laworder.errors import ConfigError

__all__ = ["MaskJitter", "MaskTransform", "augmented_stem", "check_copies", "draw_transform", "transform_seed"]


@dataclass(frozen=True)
class MaskJitter:
    """Ranges of the jitter (first attempt; each retry halves every amplitude).

    Attributes:
        max_shift: shift up to this fraction of the height / width, each axis.
        max_rotation: rotation up to this many degrees either way.
        max_scale: zoom factor in ``[1 − max_scale, 1 + max_scale]``.
        flip: mirror left-right with probability ½.
        min_kept: fraction of each lesion's expected area (``scale² × pixels``) that must remain.
        tries: jittered draws before falling back to the flip alone.
    """

    max_shift: float = 0.1
    max_rotation: float = 20.0
    max_scale: float = 0.15
    flip: bool = True
    min_kept: float = 0.75
    tries: int = 8

    def __post_init__(self) -> None:
        checks = (("max_shift", self.max_shift, 0.0, 0.5), ("max_rotation", self.max_rotation, 0.0, 180.0),
                  ("max_scale", self.max_scale, 0.0, 0.9), ("min_kept", self.min_kept, 0.0, 1.0))
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"mask jitter {name} must be a number in [{low}, {high}], got {value!r}")
        if isinstance(self.tries, bool) or not isinstance(self.tries, int) or self.tries < 1:
            raise ConfigError(f"mask jitter tries must be an integer >= 1, got {self.tries!r}")


@dataclass(frozen=True)
class MaskTransform:
    """One affine jitter about the image centre: ``p = R(rotation)·scale·F(q − c) + c + shift``.

    Attributes:
        flip: mirror left-right first (F).
        rotation: degrees, counter-clockwise on screen.
        scale: zoom factor.
        shift: ``(dy, dx)`` in pixels of the mask it was drawn for.
        attempt: which draw was accepted (0 = first; ``tries`` = the flip-only fallback).
    """

    flip: bool = False
    rotation: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    attempt: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "shift": list(self.shift)}

    def _matrix(self) -> np.ndarray:
        """2×2 forward matrix on (row, col) offsets from the centre."""
        angle = math.radians(self.rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        # counter-clockwise on screen (rows point down): r' = r·cos − c·sin, c' = r·sin + c·cos
        rotate = np.array([[cos, -sin], [sin, cos]])
        flip = np.diag([1.0, -1.0 if self.flip else 1.0])
        return rotate @ (self.scale * flip)

    def forward_points(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Where source pixel centres ``(rows, cols)`` land: ``2×K`` (row, col)."""
        centre = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])[:, None]
        points = np.stack([rows, cols]).astype(np.float64) - centre
        return self._matrix() @ points + centre + np.asarray(self.shift, dtype=np.float64)[:, None]

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Warp an ``H×W`` mask or label map (nearest neighbour; outside the source is 0)."""
        height, width = mask.shape
        rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
        centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])[:, None]
        points = np.stack([rows.ravel(), cols.ravel()]) - centre - np.asarray(self.shift, dtype=np.float64)[:, None]
        source = np.linalg.inv(self._matrix()) @ points + centre
        index = np.floor(source + 0.5).astype(np.int64)
        inside = (index[0] >= 0) & (index[0] < height) & (index[1] >= 0) & (index[1] < width)
        out = np.zeros(height * width, dtype=mask.dtype)
        out[inside] = mask[index[0, inside], index[1, inside]]
        return out.reshape(height, width)


def transform_seed(seed: int, stem: str, copy: int) -> list[int]:
    """Entropy of copy ``copy`` of mask ``stem``: ``[seed mod 2³², crc32(stem), copy]``."""
    return [int(seed) % 2**32, zlib.crc32(stem.encode("utf-8")), int(copy)]


def augmented_stem(stem: str, copy: int) -> str:
    """The pool stem of copy ``copy`` (0-based) of mask ``stem``: ``<stem>_aug<copy>``."""
    return f"{stem}_aug{copy}"


def _keeps_lesions(labels: np.ndarray, counts: np.ndarray, transform: MaskTransform, min_kept: float) -> bool:
    """Every component inside the frame and at least ``min_kept`` of its expected area."""
    height, width = labels.shape
    rows, cols = np.nonzero(labels)
    landed = transform.forward_points(rows, cols, labels.shape)
    if ((landed[0] < -0.5) | (landed[0] >= height - 0.5) | (landed[1] < -0.5) | (landed[1] >= width - 0.5)).any():
        return False
    warped = np.bincount(transform.apply(labels).ravel(), minlength=len(counts))
    needed = np.maximum(1, np.floor(min_kept * transform.scale**2 * counts[1:]))
    return bool((warped[1:] >= needed).all())


def draw_transform(mask: np.ndarray, seed: Sequence[int] | int, jitter: MaskJitter = MaskJitter()) -> MaskTransform:
    """A jitter of ``mask`` (``H×W``, nonzero = lesion) that keeps every lesion whole and in frame.

    Args:
        mask: the source mask at the resolution it will be used at.
        seed: entropy for ``numpy.random.default_rng`` (see :func:`transform_seed`).
        jitter: the ranges.

    Returns:
        The first accepted draw (amplitudes halved after each rejection), or the flip alone after
        ``jitter.tries`` rejections.
    """
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(mask) != 0, structure=np.ones((3, 3), dtype=int))
    counts = np.bincount(labels.ravel(), minlength=count + 1)
    rng = np.random.default_rng(seed)
    height, width = labels.shape
    flip = bool(jitter.flip and rng.random() < 0.5)
    for attempt in range(jitter.tries):
        amplitude = 0.5**attempt
        rotation, zoom, dy, dx = rng.uniform(-1.0, 1.0, size=4)
        transform = MaskTransform(
            flip=flip,
            rotation=float(rotation * jitter.max_rotation * amplitude),
            scale=float(1.0 + zoom * jitter.max_scale * amplitude),
            shift=(float(dy * jitter.max_shift * height * amplitude), float(dx * jitter.max_shift * width * amplitude)),
            attempt=attempt,
        )
        if count == 0 or _keeps_lesions(labels, counts, transform, jitter.min_kept):
            return transform
    return MaskTransform(flip=flip, attempt=jitter.tries)  # a mirror keeps every pixel in frame


def check_copies(copies: object) -> int:
    """Validate ``mask_augment`` (copies per source mask).

    Raises:
        ConfigError: not an integer >= 1 (0 would make an empty pool; leave it unset for none).
    """
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ConfigError(f"mask_augment must be an integer >= 1 (jittered copies per mask), got {copies!r}; "
                          "leave it unset to sample the masks as they are")
    return int(copies)

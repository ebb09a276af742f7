"""Image sets for FID/KID/CLIP-I: folders, file lists, tensors or arrays, read in batches.

An *image source* is one of

* a folder (``str``/``Path``): every image file directly inside it (the project's
  extensions, :func:`laworder.data.io.is_image_file`), sorted by name;
* a sequence of image file paths (read with :func:`laworder.data.io.read_image`, RGB);
* a tensor ``N×C×H×W`` (C = 1 or 3), float in [0, 1] or uint8 — the segmentation layout;
* a numpy array ``N×H×W×C`` (or ``N×H×W``), uint8 or float in [0, 1] — the layout
  ``read_image`` returns;
* a sequence of per-image tensors ``C×H×W`` / arrays ``H×W×C`` with those encodings.

Every image comes out as a float32 ``3×H×W`` tensor in [0, 1]; grey images are repeated
to three channels, as pytorch-fid's ``Image.convert("RGB")`` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from laworder.data.io import IMAGE_EXTENSIONS, list_image_files, read_image
from laworder.errors import DataError

__all__ = ["ImageSource", "count_images", "describe_source", "iter_image_batches"]

ImageSource = Union[str, os.PathLike, Tensor, np.ndarray, Sequence]


def _list_image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = list_image_files(folder)
    if not files:
        raise DataError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _as_items(source: ImageSource) -> Sequence:
    """The source as an indexable sequence of items (paths, tensors or arrays)."""
    if isinstance(source, (str, os.PathLike)):
        return _list_image_files(Path(source))
    if isinstance(source, (Tensor, np.ndarray)):
        if source.ndim not in (3, 4):
            raise DataError(
                f"an image stack must be N×C×H×W (tensor) or N×H×W[×C] (array), got shape "
                f"{tuple(source.shape)}"
            )
        return source
    if isinstance(source, Sequence) and len(source) > 0:
        return source
    raise DataError(f"unsupported or empty image source of type {type(source).__name__}")


def count_images(source: ImageSource) -> int:
    """Number of images in ``source`` (without reading them)."""
    return len(_as_items(source))


def describe_source(source: ImageSource) -> str:
    """Short human description of a source, for result records."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return f"in-memory {type(source).__name__} ({count_images(source)} images)"


def _to_float_image(item, where: str, channels_last: bool) -> Tensor:
    """One image as float32 ``3×H×W`` in [0, 1]."""
    if isinstance(item, (str, os.PathLike)):
        item = read_image(Path(item), channels=3)
        channels_last = True
    image = torch.from_numpy(np.array(item)) if isinstance(item, np.ndarray) else item
    if not isinstance(image, Tensor):
        raise DataError(f"{where}: unsupported image type {type(item).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0 if not channels_last else -1)
    if image.ndim != 3:
        raise DataError(f"{where}: expected one image, got shape {tuple(image.shape)}")
    if channels_last:
        image = image.permute(2, 0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.shape[0] != 3:
        raise DataError(f"{where}: expected 1 or 3 channels, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise DataError(f"{where}: expected uint8 or float pixels, got {image.dtype}")
    image = image.float()
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{where}: float pixels must lie in [0, 1], found [{low:.3g}, {high:.3g}]; "
            "map diffusion outputs in [-1, 1] with (x + 1) / 2 first"
        )
    return image


def iter_image_batches(
    source: ImageSource, batch_size: int, limit: int | None = None
) -> Iterator[list[Tensor]]:
    """Yield lists of up to ``batch_size`` float32 ``3×H×W`` images in [0, 1].

    Args:
        source: an image source (see module docstring).
        batch_size: images per list.
        limit: read only the first ``limit`` images (in source order).

    Raises:
        DataError: unreadable files, bad shapes, dtypes or value ranges, naming the image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = _as_items(source)
    # Stacks follow the documented layouts: tensors channels-first, numpy channels-last.
    channels_last = isinstance(source, np.ndarray) or (
        not isinstance(source, Tensor) and len(items) > 0 and isinstance(items[0], np.ndarray)
    )
    total = len(items) if limit is None else min(limit, len(items))
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        yield [
            _to_float_image(items[index], _where(source, items, index), channels_last)
            for index in range(start, stop)
        ]


def _where(source: ImageSource, items: Sequence, index: int) -> str:
    item = items[index]
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return f"image {index} of {describe_source(source)}"

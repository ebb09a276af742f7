"""``PairDataset``: pair records -> resized tensors for segmentation and diffusion training.

Augmentation is not done here but on the batch in the training step
(``laworder.data.transforms.augment_batch``), so a resumed run draws the same random numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from laworder.data.io import read_image, read_mask
from laworder.data.labels import read_label_map, resize_label_map
from laworder.data.records import PairRecord
from laworder.errors import DataError


def _as_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


def load_pair(record: PairRecord, size: int | tuple[int, int] | None = None, channels: int = 3,
              num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair as ``(uint8 H×W×channels, bool H×W)``, resized to ``size`` (H, W) if given.

    The image is resized bilinearly (Pillow's resampling is antialiased when shrinking), the mask
    by nearest neighbour so it stays binary. ``num_classes`` > 2 reads the mask as a label map
    (``uint8`` class indices, ``laworder.data.labels.read_label_map``) instead.

    Raises:
        DataError: unreadable files, image and mask of different sizes (both paths named), or a
            label value >= ``num_classes``.
    """
    image = read_image(record.image, channels=channels)
    if num_classes > 2:
        return _load_label_pair(record, image, size, channels, num_classes)
    mask = read_mask(record.mask)
    if image.shape[:2] != mask.shape:
        raise DataError(f"image {record.image} is {image.shape[1]}×{image.shape[0]} (W×H) but mask "
                        f"{record.mask} is {mask.shape[1]}×{mask.shape[0]}")
    target = _as_hw(size)
    if target is None or target == mask.shape:
        return image, mask
    height, width = target
    source = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = source.resize((width, height), Image.Resampling.BILINEAR)
    image = np.array(resized).reshape(height, width, channels)
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    return image, np.asarray(mask_image) >= 128


def _load_label_pair(record: PairRecord, image: np.ndarray, size, channels: int, num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    labels = read_label_map(record.mask)
    if image.shape[:2] != labels.shape:
        raise DataError(f"image {record.image} is {image.shape[1]}×{image.shape[0]} (W×H) but mask "
                        f"{record.mask} is {labels.shape[1]}×{labels.shape[0]}")
    if labels.max() >= num_classes:
        raise DataError(f"{record.mask}: label value {int(labels.max())} is not declared (classes 0..{num_classes - 1}); "
                        "run `laworder data check`")
    target = _as_hw(size)
    if target is None or target == labels.shape:
        return image, labels
    height, width = target
    source = Image.fromarray(image[..., 0] if channels == 1 else image)
    image = np.array(source.resize((width, height), Image.Resampling.BILINEAR)).reshape(height, width, channels)
    return image, resize_label_map(labels, target)


class PairDataset(Dataset):
    """Image/mask pairs as tensors.

    Args:
        records: the pairs (``DatasetCollection.train``, a split, or a test subset).
        size: output size, an int for square or ``(H, W)``; ``None`` keeps each file's size
            (then batch with ``batch_size=1``).
        channels: 3 (RGB; grayscale repeated) or 1 (grayscale).
        cache: keep the resized uint8 arrays in memory after the first read. Worth it for the
            polyp JPEGs (decode + resize dominates CPU epochs); each DataLoader worker process
            holds its own cache, so use it with ``num_workers=0`` or ``persistent_workers=True``.
        num_classes: 2 (binary, the default) or K > 2: masks are label maps and the item's
            ``mask`` holds class indices 0..K-1 (as float32, so batch augmentation treats both alike).

    Items: ``{"image": float32 C×H×W in [0, 1], "mask": float32 1×H×W in {0, 1}, "index": int}``.
    """

    def __init__(self, records: Sequence[PairRecord], size: int | tuple[int, int] | None = 256,
                 channels: int = 3, cache: bool = False, num_classes: int = 2) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.records = list(records)
        self.size = _as_hw(size)
        self.channels = channels
        self.cache = cache
        self.num_classes = num_classes
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 H×W×C image, bool H×W mask)`` of item ``index``, resized (and cached)."""
        if index in self._cached:
            return self._cached[index]
        pair = load_pair(self.records[index], self.size, self.channels, self.num_classes)
        if self.cache:
            self._cached[index] = pair
        return pair

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index = index % len(self)
        image, mask = self.arrays(index)
        # Converted in numpy: tiny torch ops on a busy CPU pay thread start-up for nothing.
        pixels = np.multiply(image.transpose(2, 0, 1), np.float32(1 / 255), dtype=np.float32, order="C")
        image_tensor = torch.from_numpy(pixels)
        mask_tensor = torch.from_numpy(mask[None].astype(np.float32))
        return {"image": image_tensor, "mask": mask_tensor, "index": index}

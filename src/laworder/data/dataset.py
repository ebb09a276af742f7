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
from laworder.data.records import PairRecord
from laworder.errors import DataError


def _as_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


def load_pair(record: PairRecord, size: int | tuple[int, int] | None = None, channels: int = 3
              ) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair as ``(uint8 H×W×channels, bool H×W)``, resized to ``size`` (H, W) if given.

    The image is resized bilinearly (Pillow's resampling is antialiased when shrinking), the mask
    by nearest neighbour so it stays binary.

    Raises:
        DataError: unreadable files, or image and mask of different sizes (both paths named).
    """
    image = read_image(record.image, channels=channels)
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

    Items: ``{"image": float32 C×H×W in [0, 1], "mask": float32 1×H×W in {0, 1}, "index": int}``.
    """

    def __init__(self, records: Sequence[PairRecord], size: int | tuple[int, int] | None = 256,
                 channels: int = 3, cache: bool = False) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.records = list(records)
        self.size = _as_hw(size)
        self.channels = channels
        self.cache = cache
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 H×W×C image, bool H×W mask)`` of item ``index``, resized (and cached)."""
        if index in self._cached:
            return self._cached[index]
        pair = load_pair(self.records[index], self.size, self.channels)
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

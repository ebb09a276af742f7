"""Declared classes of a dataset (multi-class label maps) and reading label-map files.

Binary is the default: a dataset without a declaration has background and one lesion class,
and its masks are read by ``laworder.data.io.read_mask`` (0/255, 0/1, palette, JPEG-noisy).

A dataset declares K classes in its root folder, in either file:

* ``labels.json``: ``{"background": 0, "kidney": 1, "tumour": 2}``;
* nnU-Net v2's ``dataset.json``: the same mapping under ``"labels"`` (the v1 form
  ``{"0": "background", "1": "kidney"}`` is read too).

Values must be 0..K-1 (0 = background), as nnU-Net requires. With K > 2 each mask is a label
map: one 8-bit (or 16-bit, or palette-index) channel whose pixel value is the class index;
``laworder data check`` names every file holding an undeclared value. K = 2 keeps the binary
reading (a binary nnU-Net dataset declares ``{"background": 0, "lesion": 1}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from laworder.errors import DataError

LABEL_FILES = ("labels.json", "dataset.json")
BINARY_LABELS = ("background", "lesion")
MAX_CLASSES = 256  # label maps are 8-bit files and uint8 arrays: values 0..255


def parse_labels(mapping: object, where: str) -> list[str]:
    """A ``{name: value}`` (or nnU-Net v1 ``{"value": name}``) mapping -> names ordered by value.

    Raises:
        DataError: not a mapping, non-integer or repeated values, values not 0..K-1, fewer than 2 classes.
    """
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{where}: labels must be a non-empty JSON object {{name: value}}")
    if all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in mapping.items()):
        mapping = {v: int(k) for k, v in mapping.items()}  # nnU-Net v1: {"0": "background", ...}
    values = {}
    for name, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{where}: label {name!r} has value {value!r}; values must be integers "
                            "(region-based nnU-Net labels are not supported)")
        if value in values:
            raise DataError(f"{where}: labels {values[value]!r} and {name!r} share the value {value}")
        values[value] = str(name)
    if sorted(values) != list(range(len(values))) or len(values) < 2:
        shown = sorted(values) if len(values) <= 20 else f"{sorted(values)[:20]}…"
        raise DataError(f"{where}: label values must be 0..K-1 with 0 the background and K >= 2, got {shown}")
    if len(values) > MAX_CLASSES:  # label maps are read and written as 8-bit: 256 and above would wrap
        raise DataError(f"{where}: {len(values)} classes declared; at most {MAX_CLASSES} (values 0..{MAX_CLASSES - 1}: "
                        "label maps are 8-bit)")
    return [values[v] for v in range(len(values))]


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Class names (index = label value) from a ``labels.json`` or nnU-Net ``dataset.json``."""
    from laworder.config import read_json_file

    path = Path(path)
    data = read_json_file(path, "label declaration")
    if path.name == "dataset.json":
        if not isinstance(data, dict) or "labels" not in data:
            raise DataError(f"{path}: an nnU-Net dataset.json needs a \"labels\" entry")
        data = data["labels"]
    return parse_labels(data, str(path))


def find_labels(folders: Iterable[str | os.PathLike]) -> tuple[list[str], Path] | None:
    """The first declaration (``labels.json`` before ``dataset.json``) in ``folders``, with its file.

    Raises:
        DataError: a broken declaration, or two folders declaring different classes.
    """
    found: tuple[list[str], Path] | None = None
    for folder in folders:
        for name in LABEL_FILES:
            path = Path(folder) / name
            if path.is_file():
                names = read_labels_file(path)
                if found is not None and found[0] != names:
                    raise DataError(f"{path} declares classes {names} but {found[1]} declares {found[0]}")
                found = found or (names, path)
                break
    return found


def write_labels(folder: str | os.PathLike, names: list[str]) -> Path:
    """Write ``labels.json`` (``{name: index}``) into ``folder``; returns its path."""
    parse_labels({n: i for i, n in enumerate(names)}, "labels")
    path = Path(folder) / "labels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({n: i for i, n in enumerate(names)}, indent=2) + "\n")
    return path


def is_multiclass(names: list[str] | None) -> bool:
    return bool(names) and len(names) > 2


def output_channels(names: list[str] | None) -> int:
    """Network output channels: 1 (sigmoid) for binary, K (softmax) for K > 2 classes."""
    return len(names) if is_multiclass(names) else 1


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label-map file as ``uint8`` ``H×W`` class indices (the pixel values, unscaled).

    Grayscale 8/16-bit: the value; palette: the palette index; RGB(A) only when the colour
    channels are equal (a grey map saved as RGB).

    Raises:
        DataError: unreadable file, colours that differ between channels, or values above 255.
    """
    from laworder.data.io import open_image

    path = Path(path)
    with open_image(path) as image:
        if image.mode in ("P", "PA", "L", "LA"):
            values = np.asarray(image)
            values = values[..., 0] if values.ndim == 3 else values
        elif image.mode == "1":
            values = np.asarray(image, dtype=np.uint8)
        elif image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            values = np.asarray(image).astype(np.int64)
        elif image.mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise DataError(f"{path}: a colour label map; save class indices as one grayscale channel")
            values = rgb[..., 0]
        else:
            raise DataError(f"{path}: cannot read label map mode {image.mode!r}")
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: label values must lie in 0..255, got {int(values.min())}..{int(values.max())}")
    return np.array(values, dtype=np.uint8)


def resize_label_map(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``uint8`` label map to ``(H, W)``."""
    height, width = size
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))

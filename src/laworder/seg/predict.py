"""``laworder seg predict``: mask PNGs (at each image's own size) and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from laworder.data.io import IMAGE_EXTENSIONS, read_image, write_image, write_mask
from laworder.errors import DataError


def list_images(source: str | Path) -> list[Path]:
    """Image files in ``source`` (a folder, a pair folder's ``images/``, or one file)."""
    source = Path(source)
    if source.is_file():
        return [source]
    folder = source / "images" if (source / "images").is_dir() else source
    if not folder.is_dir():
        raise DataError(f"no such image folder or file: {source}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
    return files


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 0), alpha: float = 0.45) -> np.ndarray:
    """Blend a boolean mask onto an ``H×W×3`` uint8 image; the mask border is drawn solid."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array(color, np.float32)
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    out[mask & ~inner] = color
    return out.clip(0, 255).astype(np.uint8)


@torch.no_grad()
def predict_folder(model: Callable[[torch.Tensor], torch.Tensor], source: str | Path, out_dir: str | Path,
                   image_size: int, channels: int = 3, threshold: float = 0.5, write_overlays: bool = True) -> list[Path]:
    """Segment every image in ``source``; writes ``masks/<stem>.png`` (+ ``overlays/``)."""
    out_dir = Path(out_dir)
    written = []
    for path in list_images(source):
        image = read_image(path, channels)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
        resized = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        logits = model(resized)
        prob = torch.sigmoid(F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False))
        mask = (prob[0, 0] >= threshold).cpu().numpy()
        target = out_dir / "masks" / f"{path.stem}.png"
        write_mask(target, mask)
        written.append(target)
        if write_overlays:
            rgb = image if image.shape[2] == 3 else np.repeat(image[..., :1], 3, axis=2)
            write_image(out_dir / "overlays" / f"{path.stem}.png", overlay(rgb, mask))
    return written

"""CLIP-I: cosine similarity of CLIP image embeddings, generated vs real.

The paper (§4.1.3) reports "the mean cosine similarity between generated-image embeddings
and the corresponding real reference set". Two readings exist and both are offered; the
result always records which one was used:

* ``mode="paired"`` (default): generated image ``i`` was produced from the mask of real
  image ``i`` (one generation per reference mask, as in the held-out protocol), and
  CLIP-I = mean_i cos(g_i, r_i). Counts must match and the two sources must be in the
  same order (folders are sorted by file name).
* ``mode="all_pairs"``: mean over every generated/real pair, mean_{i,j} cos(g_i, r_j) —
  a set-level score for unpaired reference sets (e.g. the training distribution).

Embeddings come from a local CLIP checkpoint folder (``CLIPVisionModelWithProjection``,
i.e. the projected ``image_embeds``) preprocessed by the folder's own image-processor
config; nothing is downloaded. Images are converted to uint8 before preprocessing (what
saving them as PNG would do), because the CLIP processor expects 0–255 pixels.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from laworder.errors import ConfigError, DataError, MissingWeightsError
from laworder.metrics.image_sources import (
    ImageSource,
    count_images,
    describe_source,
    iter_image_batches,
)

__all__ = [
    "ClipImageEncoder",
    "ClipScoreResult",
    "clip_image_similarity",
    "load_clip_image_encoder",
]

CLIP_MODES = ("paired", "all_pairs")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _image_processor_class():
    try:  # transformers >= 5: the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _check_clip_folder(folder: Path) -> None:
    hint = (
        "CLIP-I needs a local CLIP checkpoint folder with config.json, model weights "
        f"({' or '.join(_WEIGHT_FILES[::2])}) and preprocessor_config.json — e.g. "
        "openai/clip-vit-base-patch32 saved with save_pretrained() or downloaded from "
        "https://huggingface.co/openai/clip-vit-base-patch32 on a machine with internet."
    )
    if not folder.is_dir():
        raise MissingWeightsError(f"CLIP checkpoint folder not found: {folder}\n{hint}")
    required = ("config.json", "preprocessor_config.json")
    missing = [name for name in required if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES[::2]))
    if missing:
        raise MissingWeightsError(f"CLIP checkpoint {folder} lacks {', '.join(missing)}\n{hint}")


class ClipImageEncoder:
    """A CLIP vision tower with projection and its image processor, in eval mode."""

    def __init__(self, model: torch.nn.Module, processor, source: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.source = source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: list[Tensor]) -> Tensor:
        """L2-normalised embeddings ``B×D`` of float32 ``3×H×W`` images in [0, 1]."""
        pixels_uint8 = [
            (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            for image in images
        ]
        pixel_values = self.processor(images=pixels_uint8, return_tensors="pt")["pixel_values"]
        embeds = self.model(pixel_values=pixel_values.to(self.device)).image_embeds
        return torch.nn.functional.normalize(embeds.float(), dim=-1)

    def embed_source(
        self, source: ImageSource, batch_size: int = 32, limit: int | None = None
    ) -> Tensor:
        """Embeddings ``N×D`` (CPU) of every image of a source."""
        batches = iter_image_batches(source, batch_size, limit)
        chunks = [self.embed(batch).cpu() for batch in batches]
        embeds = torch.cat(chunks)
        if not torch.isfinite(embeds).all():
            raise DataError(f"non-finite CLIP embeddings for {describe_source(source)}")
        return embeds


def load_clip_image_encoder(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> ClipImageEncoder:
    """Load a CLIP image encoder from a local checkpoint folder (no hub access).

    The folder may hold a full ``CLIPModel`` checkpoint or a ``CLIPVisionModelWithProjection``
    one; only the vision tower and its projection are loaded.

    Raises:
        MissingWeightsError: the folder, ``config.json``, the weights or
            ``preprocessor_config.json`` are missing.
    """
    from transformers import CLIPVisionModelWithProjection

    path = Path(folder).expanduser()
    _check_clip_folder(path)
    model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
    processor = _image_processor_class().from_pretrained(path, local_files_only=True)
    return ClipImageEncoder(model.to(device), processor, str(path))


@dataclasses.dataclass(frozen=True)
class ClipScoreResult:
    """CLIP-I of a generated set against a stated reference set.

    Attributes:
        clip_i: mean cosine similarity (see ``mode``).
        mode: ``"paired"`` or ``"all_pairs"`` (module docstring).
        n_real, n_fake: images used from each set.
        reference, generated: descriptions of the two sets.
        checkpoint: the CLIP checkpoint folder.
    """

    clip_i: float
    mode: str
    n_real: int
    n_fake: int
    reference: str
    generated: str
    checkpoint: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def clip_image_similarity(
    real_images: ImageSource,
    fake_images: ImageSource,
    encoder: ClipImageEncoder,
    mode: str = "paired",
    *,
    reference: str | None = None,
    batch_size: int = 32,
) -> ClipScoreResult:
    """CLIP-I between generated images and their real reference set.

    Args:
        real_images: the reference set (folder, file list, tensor or array).
        fake_images: the generated set, in the same order as ``real_images`` for
            ``mode="paired"``.
        encoder: from :func:`load_clip_image_encoder`.
        mode: ``"paired"`` or ``"all_pairs"`` (module docstring).
        reference: description of the reference set stored in the result.
        batch_size: images per forward pass.

    Raises:
        ConfigError: unknown ``mode``.
        DataError: ``mode="paired"`` with different counts, unreadable images.
    """
    if mode not in CLIP_MODES:
        raise ConfigError(f"CLIP-I mode must be one of {CLIP_MODES}, got {mode!r}")
    n_real, n_fake = count_images(real_images), count_images(fake_images)
    if mode == "paired" and n_real != n_fake:
        raise DataError(
            f"paired CLIP-I needs one generated image per real image: {n_real} real vs "
            f"{n_fake} generated; use mode='all_pairs' for unpaired sets"
        )
    real = encoder.embed_source(real_images, batch_size)
    fake = encoder.embed_source(fake_images, batch_size)
    if mode == "paired":
        score = (real * fake).sum(dim=1).mean()
    else:
        # mean_{i,j} <g_i, r_j> of unit vectors = <mean_i g_i, mean_j r_j>.
        score = fake.double().mean(dim=0) @ real.double().mean(dim=0)
    return ClipScoreResult(
        clip_i=float(np.clip(float(score), -1.0, 1.0)),
        mode=mode,
        n_real=n_real,
        n_fake=n_fake,
        reference=reference if reference is not None else describe_source(real_images),
        generated=describe_source(fake_images),
        checkpoint=encoder.source,
    )

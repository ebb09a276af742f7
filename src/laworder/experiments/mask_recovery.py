"""Mask recovery (paper Table 3): do generated lesions land where the conditioning masks say?

A frozen segmenter trained on the dataset's real training images predicts a mask for every
generated image of a synthetic pool; Dice and IoU (per image, the empty-mask rule of
``laworder.metrics.overlap``) compare each prediction with the mask that conditioned the
image. Reported as mean ± std over the pool's images (sample std).

A pool is a pair folder (``images/`` + ``masks/``) with a ``manifest.json`` saying how it was
generated; ``laworder synth sample`` (``laworder.synth.sampler.sample_pool``) writes both.

It lives in ``experiments`` because it applies a trained segmenter (``laworder.seg``): the
``metrics`` layer below stays free of the apps (data → seg/synth → metrics → experiments).

Beyond the paper, :func:`filter_pool` keeps only the pairs whose frozen-segmenter Dice reaches a
threshold and writes them as a new pool whose manifest records the filter.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from laworder import parallel
from laworder.data.io import read_image, read_mask
from laworder.data.layouts import load_dataset
from laworder.data.precheck import readable_inputs
from laworder.errors import ConfigError, DataError
from laworder.metrics.overlap import mean_std
from laworder.outputs import write_json_atomic
from laworder.paths import resolve
from laworder.seg.evaluate import evaluate_records
from laworder.seg.loading import load_segmenter

MANIFEST = "manifest.json"
Segmenter = str | os.PathLike | nn.Module


def read_manifest(pool_dir: str | os.PathLike) -> dict[str, Any]:
    """The pool's ``manifest.json``.

    Raises:
        DataError: the folder or its manifest is missing or unreadable (the message says where
            pools come from).
    """
    pool = Path(pool_dir)
    path = pool / MANIFEST
    if not pool.is_dir():
        raise DataError(f"synthetic pool not found: {pool}")
    if not path.is_file():
        raise DataError(
            f"{pool} has no {MANIFEST}: it is not a synthetic pool. Pools come from `laworder synth sample` "
            f"(laworder.synth.sampler.sample_pool), which writes images/, masks/ and {MANIFEST}; for a pool made "
            f"elsewhere, write a {MANIFEST} that says how (at least {{\"method\": ...}})"
        )
    from laworder.config import read_json_file

    return read_json_file(path, "manifest")


def _segmenter(segmenter: Segmenter, image_size: int | None, threshold: float | None
               ) -> tuple[nn.Module, int, int, float, str]:
    """(model in eval mode, image size, channels, threshold, description)."""
    if isinstance(segmenter, nn.Module):
        if image_size is None:
            raise ConfigError("mask_recovery with a model object needs image_size (a run folder records its own)")
        channels = int(getattr(segmenter, "in_channels", 3))
        return segmenter.eval(), image_size, channels, 0.5 if threshold is None else threshold, type(segmenter).__name__
    model, config = load_segmenter(segmenter, "best")
    if image_size is not None:
        from laworder.seg.validate import check_image_size

        check_image_size(model, image_size, config.model)
        from laworder.resources import check_batch

        check_batch("image_size", 1, image_size, config.channels)
    return (model, image_size or config.image_size, config.channels,
            config.threshold if threshold is None else threshold, str(segmenter))


@dataclass
class RecoveryInputs:
    """A pool and a segmenter, checked and read, ready for :func:`score_mask_recovery`.

    ``records`` are the pool's readable pairs (every image and mask decoded once when this was
    made); ``skipped`` maps the stems left out under ``skip_unreadable`` to their errors.
    """

    pool: str
    manifest: dict[str, Any]
    records: list
    skipped: dict[str, str]
    model: nn.Module
    image_size: int
    channels: int
    threshold: float
    description: str


def prepare_mask_recovery(segmenter: Segmenter, pool_dir: str | os.PathLike, image_size: int | None = None,
                          threshold: float | None = None, skip_unreadable: bool = False) -> RecoveryInputs:
    """Check and read everything :func:`mask_recovery` needs, before anything is scored or written.

    Lets a caller (the CLI) check its own outputs between reading and scoring without loading
    the segmenter or decoding the pool twice. Arguments and errors as :func:`mask_recovery`.
    """
    manifest = read_manifest(pool_dir)
    records = load_dataset(pool_dir, "pairs").train
    model, size, channels, cut, description = _segmenter(segmenter, image_size, threshold)
    records, skipped = readable_inputs(records, lambda r: (read_image(r.image, channels), read_mask(r.mask)),
                                       skip_unreadable, what="pool pairs", key=lambda r: r.stem)
    return RecoveryInputs(str(pool_dir), manifest, records, skipped, model, size, channels, cut, description)


def mask_recovery(segmenter: Segmenter, pool_dir: str | os.PathLike, image_size: int | None = None,
                  threshold: float | None = None, batch_size: int = 16, device: str | torch.device | None = None,
                  skip_unreadable: bool = False) -> dict:
    """Score a synthetic pool with a frozen segmenter.

    Args:
        segmenter: a segmentation run folder (``laworder seg train``; its ``best`` weights, image
            size, channels and threshold are used) or a model (then give ``image_size``).
        pool_dir: a pool folder with ``images/``, ``masks/`` and ``manifest.json``.
        image_size: size at which the segmenter sees the images (default: the run's); the
            conditioning masks are resized nearest to it.
        threshold: probability cut-off (default: the run's, else 0.5).
        device: where the segmenter runs (default: CUDA when available, else CPU).
        skip_unreadable: score the readable pairs and list the others (stem -> error) under
            ``"skipped"`` instead of stopping at the first unreadable file.

    Returns:
        ``{"pool", "method", "segmenter", "image_size", "threshold", "count", "skipped",
        "dice": {"mean", "std"}, "iou": {"mean", "std"}, "per_image": [{"stem", "dice", "iou"}]}``.
        Dice/IoU are fractions in [0, 1]; std is over images (nan for a single image); ``count``
        is the number of scored pairs.

    Raises:
        DataError: no manifest, an inconsistent pool, an empty pool, or (without
            ``skip_unreadable``) an unreadable image or mask, named before anything is scored.
    """
    inputs = prepare_mask_recovery(segmenter, pool_dir, image_size, threshold, skip_unreadable)
    return score_mask_recovery(inputs, batch_size, device)


def score_mask_recovery(inputs: RecoveryInputs, batch_size: int = 16,
                        device: str | torch.device | None = None) -> dict:
    """Score what :func:`prepare_mask_recovery` read; returns :func:`mask_recovery`'s dict."""
    records, size, channels, cut, model = (inputs.records, inputs.image_size, inputs.channels, inputs.threshold,
                                           inputs.model)
    # Under `accelerate launch` each process scores whole batches; every process gets all rows.
    state = parallel.process_state()
    device = parallel.inference_device(state, device)
    mine = [r for batch in parallel.my_share(parallel.batches_of(records, batch_size), state) for r in batch]
    rows = evaluate_records(model, {"pool": mine}, size, channels, cut, batch_size, device).per_image["pool"] if mine else []
    order = {record.stem: index for index, record in enumerate(records)}
    rows = sorted(parallel.gather(rows, state), key=lambda row: order[row["stem"]])
    dice, iou = mean_std(r["dice"] for r in rows), mean_std(r["iou"] for r in rows)
    return {
        "pool": inputs.pool,
        "method": inputs.manifest.get("method", "unknown"),
        "segmenter": inputs.description,
        "image_size": size,
        "threshold": cut,
        "count": len(rows),
        "skipped": inputs.skipped,
        "dice": {"mean": dice[0], "std": dice[1]},
        "iou": {"mean": iou[0], "std": iou[1]},
        "per_image": rows,
    }


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def subset_output(pool_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False):
    """The ``OutputFolder`` a subset of ``pool_dir`` is written to (``check()`` it before scoring:
    it refuses the pool itself, a folder inside it or holding it, and files laworder did not write)."""
    from laworder.outputs import OutputFolder

    return OutputFolder(out_dir, ("images", "masks", MANIFEST), overwrite, what="--filter-out",
                        inputs={"the pool": pool_dir}, kind="filtered pool",
                        hint="choose an empty folder or pass --overwrite (replaces an earlier filtered pool only)")


def subset_pool(pool_dir: str | os.PathLike, stems: Iterable[str], out_dir: str | os.PathLike,
                manifest_update: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the pairs ``stems`` of a pool as a new pool (files hard-linked where possible).

    The new ``manifest.json`` is the source manifest with ``items`` and ``count`` restricted to
    ``stems``, ``source_pool`` set, and ``manifest_update`` merged in.

    Raises:
        DataError: a stem the pool does not hold. RunDirError: ``out_dir`` not empty without
            ``overwrite``, holding files laworder did not write, or overlapping the pool.
    """
    manifest = read_manifest(pool_dir)
    records = {r.stem: r for r in load_dataset(pool_dir, "pairs").train}
    stems = list(stems)
    unknown = sorted(set(stems) - set(records))
    if unknown:
        raise DataError(f"{pool_dir} holds no pair(s) {unknown[:5]}")
    out = Path(out_dir)
    folder = subset_output(pool_dir, out, overwrite)
    folder.check()
    keep = set(stems)
    items = manifest.get("items")
    subset = dict(manifest, count=len(stems), source_pool=str(resolve(pool_dir)), **manifest_update)
    if isinstance(items, list):
        subset["items"] = [item for item in items if isinstance(item, dict) and item.get("stem") in keep]
    with folder:  # an earlier subset written here (its manifest) is replaced, put back if this one fails
        for stem in stems:
            record = records[stem]
            _link_or_copy(record.image, out / "images" / record.image.name)
            _link_or_copy(record.mask, out / "masks" / record.mask.name)
        write_json_atomic(out / MANIFEST, subset)
    return out


def filter_pool(pool_dir: str | os.PathLike, segmenter: Segmenter, min_dice: float, out_dir: str | os.PathLike,
                image_size: int | None = None, overwrite: bool = False, scores: dict | None = None) -> Path:
    """Keep the pairs whose frozen-segmenter Dice is ≥ ``min_dice``; write them as a new pool.

    The new manifest adds ``filter = {"kind": "mask_recovery", "min_dice", "segmenter", "kept",
    "dropped", "source_count"}``. ``scores`` reuses a :func:`mask_recovery` result for this pool.

    Raises:
        ConfigError: ``min_dice`` outside [0, 1]. DataError: as :func:`mask_recovery`.
    """
    if not 0.0 <= min_dice <= 1.0:
        raise ConfigError(f"min_dice must be in [0, 1], got {min_dice}")
    scores = scores or mask_recovery(segmenter, pool_dir, image_size)
    kept = [row["stem"] for row in scores["per_image"] if row["dice"] >= min_dice]
    skipped = scores.get("skipped", {})
    update = {"filter": {"kind": "mask_recovery", "min_dice": min_dice, "segmenter": scores["segmenter"],
                         "image_size": scores["image_size"], "kept": len(kept),
                         "dropped": scores["count"] - len(kept), "unreadable": sorted(skipped),
                         "source_count": scores["count"] + len(skipped)}}
    return subset_pool(pool_dir, kept, out_dir, update, overwrite=overwrite)


def sample_stems(pool_dir: str | os.PathLike, count: int, seed: int = 0) -> list[str]:
    """``count`` stems of a pool drawn without replacement (a seeded permutation prefix, so the
    draw for a smaller count is a subset of the draw for a larger one)."""
    stems = sorted(r.stem for r in load_dataset(pool_dir, "pairs").train)
    if count > len(stems):
        raise DataError(f"cannot draw {count} pairs from {pool_dir}: the pool holds {len(stems)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    return [stems[i] for i in order[:count]]


@torch.no_grad()
def recovery_per_image(segmenter: Segmenter, pool_dir: str | os.PathLike, image_size: int | None = None,
                       tolerance: int = 2, batch_size: int = 16, device: str | torch.device = "cpu") -> list[dict]:
    """Per pair of a pool: recovery Dice/IoU, boundary F-score (``tolerance`` px), the conditioning
    mask's lesion ratio and size bin, and the chance Dice (the same prediction against the next
    pair's mask in stem order: what a segmenter gets when the image ignores its mask).

    Returns:
        ``[{"stem", "dice", "iou", "boundary_f", "lesion_ratio", "size_bin", "chance_dice"}]`` in stem order.

    Raises:
        DataError: as :func:`mask_recovery`; a pool of one pair has no chance level.
    """
    from laworder.data.dataset import PairDataset
    from laworder.metrics.boundary import boundary_f_score, size_bin
    from laworder.metrics.overlap import dice_iou_per_image

    read_manifest(pool_dir)
    records = sorted(load_dataset(pool_dir, "pairs").train, key=lambda r: r.stem)
    if len(records) < 2:
        raise DataError(f"{pool_dir}: the chance level needs at least 2 pairs, got {len(records)}")
    model, size, channels, cut, _ = _segmenter(segmenter, image_size, None)
    model = model.to(device)
    dataset = PairDataset(records, size, channels)
    predictions, masks = [], []
    for start in range(0, len(records), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(records)))]
        images = torch.stack([item["image"] for item in batch]).to(device)
        predictions.append((torch.sigmoid(model(images)) >= cut).cpu())
        masks.append(torch.stack([item["mask"] for item in batch]) > 0.5)
    pred, mask = torch.cat(predictions), torch.cat(masks)
    dice, iou = dice_iou_per_image(pred, mask)
    chance, _ = dice_iou_per_image(pred, torch.roll(mask, shifts=-1, dims=0))
    boundary = boundary_f_score(pred.float(), mask.float(), tolerance)
    ratios = mask.float().mean(dim=(1, 2, 3))
    return [{"stem": r.stem, "dice": float(d), "iou": float(i), "boundary_f": float(b), "lesion_ratio": float(q),
             "size_bin": size_bin(float(q)), "chance_dice": float(c)}
            for r, d, i, b, q, c in zip(records, dice, iou, boundary, ratios, chance)]

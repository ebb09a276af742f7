"""How much of a frozen segmenter's Dice survives a VAE round trip (issue: latent diffusion on CPU).

Generated images can only be as segmentable as what the decoder can draw, so before a latent
diffusion model is trusted the VAE is checked on real test images: the segmenter predicts on
each image at the VAE's resolution and on its reconstruction decode(mode(encode(x))), and the
Dice against the true mask is compared. Target: the reconstructions keep ≥ 0.9× the Dice of the
originals; below that, stay in pixel space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

TARGET_RATIO = 0.9


def _at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@torch.no_grad()
def reconstruction_dice(
    vae: str | Path,
    segmenter: str | Path,
    data: str | None = None,
    subsets: Iterable[str] | None = None,
    which: str = "best",
    limit: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> dict:
    """Segmenter Dice on real test images vs on their VAE reconstructions, per subset.

    Args:
        vae: a ``synth pretrain-vae`` run or a diffusers ``AutoencoderKL`` folder.
        segmenter: a ``seg train`` run (its ``which`` weights, threshold and image size).
        data: the dataset whose test subsets are scored (default: the segmenter's dataset).
        subsets: only these subsets. limit: only the first ``limit`` images of each.

    Both images go through the VAE's resolution (``sample_size``) first, then the segmenter's;
    masks are resized nearest to the segmenter's size. Returns a JSON-able dict with per-subset
    ``dice_original``, ``dice_reconstructed``, ``ratio``, ``psnr``, ``n`` and the means over
    subsets (each subset weighs 1), ``ratio`` = mean reconstructed / mean original Dice and
    ``meets_target`` (≥ 0.9).
    """
    from laworder.data.dataset import PairDataset
    from laworder.metrics.overlap import dice_iou_per_image
    from laworder.seg.evaluate import evaluation_subsets, predict_probabilities
    from laworder.seg.loading import load_segmenter
    from laworder.synth.vae import load_vae, psnr, reconstruct, resolve_vae_folder

    autoencoder = load_vae(vae).to(device)
    model, config = load_segmenter(segmenter, which)
    model = model.to(device).eval()
    vae_size = int(autoencoder.config.sample_size)
    chosen = evaluation_subsets(data or config.data, "auto" if data else config.layout, subsets)
    channels = int(autoencoder.config.in_channels)
    result: dict = {"vae": str(resolve_vae_folder(vae)), "segmenter": str(segmenter), "vae_resolution": vae_size,
                    "segmenter_resolution": config.image_size, "threshold": config.threshold, "subsets": {}}
    for name, records in chosen.items():
        records = list(records)[:limit] if limit else list(records)
        if not records:
            continue
        loader = DataLoader(PairDataset(records, vae_size, channels), batch_size=batch_size, shuffle=False)
        dice = {"original": [], "reconstructed": []}
        scores = []
        for batch in loader:
            originals = batch["image"].to(device)
            reconstructions = reconstruct(autoencoder, originals)
            scores.append(psnr(reconstructions, originals).cpu())
            masks = F.interpolate(batch["mask"].to(device), size=(config.image_size,) * 2, mode="nearest") > 0.5
            for key, images in (("original", originals), ("reconstructed", reconstructions)):
                if config.channels != images.shape[1]:
                    images = images.mean(dim=1, keepdim=True) if config.channels == 1 else images.expand(-1, 3, -1, -1)
                probabilities = predict_probabilities(model, _at_size(images, config.image_size))
                dice[key].append(dice_iou_per_image(probabilities >= config.threshold, masks)[0].cpu())
        original, reconstructed = float(torch.cat(dice["original"]).mean()), float(torch.cat(dice["reconstructed"]).mean())
        result["subsets"][name] = {"dice_original": original, "dice_reconstructed": reconstructed,
                                   "ratio": reconstructed / original if original > 0 else float("nan"),
                                   "psnr": float(torch.cat(scores).mean()), "n": len(records)}
    rows = result["subsets"].values()
    original = sum(r["dice_original"] for r in rows) / len(rows)
    reconstructed = sum(r["dice_reconstructed"] for r in rows) / len(rows)
    ratio = reconstructed / original if original > 0 else float("nan")
    result.update(dice_original=original, dice_reconstructed=reconstructed, ratio=ratio, target_ratio=TARGET_RATIO,
                  meets_target=bool(ratio >= TARGET_RATIO))
    return result


def format_reconstruction_dice(result: dict) -> str:
    """Markdown table: one row per subset, then the mean and the verdict."""
    lines = ["| subset | n | PSNR (dB) | Dice original | Dice reconstructed | ratio |", "|---|---|---|---|---|---|"]
    for name, row in result["subsets"].items():
        lines.append(f"| {name} | {row['n']} | {row['psnr']:.2f} | {row['dice_original']:.3f} | "
                     f"{row['dice_reconstructed']:.3f} | {row['ratio']:.3f} |")
    lines.append(f"| mean over subsets | | | {result['dice_original']:.3f} | {result['dice_reconstructed']:.3f} | "
                 f"{result['ratio']:.3f} |")
    verdict = "meets" if result["meets_target"] else "misses"
    lines.append(f"\nreconstructions keep {result['ratio']:.2f}x the Dice of the originals: {verdict} the "
                 f">= {result['target_ratio']}x target")
    return "\n".join(lines)

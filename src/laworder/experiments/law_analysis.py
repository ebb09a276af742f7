"""What LAW learned: is δ more than the mask, and what weighting does LAW end up applying?

φ sees the mask and the Dice term (eq. 9) pulls δ towards it; once δ ≈ m, LAW is a normalised,
clamped ratio prior. This module measures that on a trained LAW run (``analyse_law``):

* **δ with the true ε̂ vs ε̂ from another image with the same mask**: for held-out image i with
  mask m_i, δ = σ(φ(ε̂(z_t^i | m_i), m_i)/τ); the same with z_t of image j ≠ i (still conditioned
  on m_i), and with ε̂ = 0. Equal maps mean δ depends on the mask only.
* **δ per region** (lesion / boundary / background of the true mask, ``laworder.synth.probe``).
* **lesion:background weight contrast** of w_final over training (from ``metrics.jsonl``: mean
  weight on lesion pixels / on background pixels of each logged batch) against the references
  on the training masks: the ratio prior's (1 − r)/r and LAW's own eq. 5-7 with δ = m exactly.

``write_law_analysis`` adds a figure (``law_analysis.png``) and the numbers (``law_analysis.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from laworder.errors import ConfigError
from laworder.synth.backbones import LESION_TOKEN
from laworder.synth.probe import DEFAULT_TIMESTEPS, make_probe_set, region_maps
from laworder.synth.weighting.base import lesion_ratio, ratio_prior, resize_mask

REGIONS = ("lesion", "boundary", "background")


def load_law(run: str | Path):
    """(backbone with sampling modules, trained LAW objective, run config) of a LAW run.

    Raises:
        ConfigError: the run was not trained with ``law`` and δ (``use_delta``).
    """
    from laworder.synth.sampler import find_run, load_backbone
    from laworder.synth.weighting import create_objective
    from laworder.training import load_weights

    weights, config = find_run(run)
    if config.objective != "law" or config.objective_kwargs.get("use_delta", True) is False:
        raise ConfigError(f"{run} was trained with {config.objective!r} {config.objective_kwargs}: no δ to analyse")
    backbone, _, _ = load_backbone(run)
    objective = create_objective("law", channels=backbone.target_channels, **config.objective_kwargs)
    load_weights(objective, weights / "objective.safetensors")
    return backbone, objective.eval(), config


def delta_map(objective, eps_pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """δ = σ(φ(ε̂, m)/τ) with ``mask`` resized to ε̂'s size as the run trained it (eq. 4;
    the objective's ``latent_mask``, nearest by default)."""
    mask = resize_mask(mask, eps_pred.shape[-2:], getattr(objective, "latent_mask", "nearest"))
    return torch.sigmoid(objective.phi(eps_pred, mask) / objective.tau)


def weights_if_delta_is_mask(masks: torch.Tensor, gamma: float, w_min: float, w_max: float) -> torch.Tensor:
    """LAW's w_final (eq. 5-7) when δ equals the mask exactly: a normalised, clamped ratio prior."""
    w_adapt = ratio_prior(masks) * (1.0 + gamma * (2.0 * masks - 1.0))
    return (w_adapt / w_adapt.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)).clamp(w_min, w_max)


def pooled_contrast(weights: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean weight on lesion pixels / mean weight on background pixels, pooled over the set
    (what ``metrics.jsonl`` logs per batch as w_final_lesion / w_final_background)."""
    lesion = masks > 0.5
    return float(weights[lesion].mean() / weights[~lesion].mean())


def reference_contrasts(masks: torch.Tensor, objective) -> dict[str, float]:
    """Contrasts the training masks imply: ratio prior (pooled, and the per-mask median of
    (1 − r)/r) and LAW with δ = m (pooled). Masks without lesion or background are skipped."""
    ratio = lesion_ratio(masks).flatten()
    keep = (ratio > 0) & (ratio < 1)
    masks, ratio = masks[keep], ratio[keep]
    law_mask = weights_if_delta_is_mask(masks, objective.gamma, objective.w_min, objective.w_max)
    return {
        "ratio_pooled": pooled_contrast(ratio_prior(masks), masks),
        "ratio_median_per_mask": float(((1 - ratio) / ratio).median()),
        "law_delta_equals_mask_pooled": pooled_contrast(law_mask, masks),
        "uniform": 1.0,
        "masks": int(keep.sum()),
    }


def contrast_curve(run: str | Path) -> list[dict[str, float]]:
    """Per logged step: w_final and δ on lesion / background, and the contrast (``metrics.jsonl``)."""
    path = Path(run) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if record.get("w_final_background"):
            rows.append({"step": record["step"], "contrast": record["w_final_lesion"] / record["w_final_background"],
                         **{k: record[k] for k in ("w_final_lesion", "w_final_background", "delta_lesion",
                                                   "delta_background", "w_clamped_fraction") if k in record}})
    return rows


@torch.no_grad()
def analyse_law(run: str | Path, data: str | Path | None = None, count: int = 16,
                timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0, train_masks: int = 256) -> dict[str, Any]:
    """The numbers of the module docstring for a LAW run, on ``count`` held-out test pairs of
    ``data`` (default: the run's dataset) and ``train_masks`` training masks for the references.

    Returns:
        ``{"delta": {"true"|"other_image"|"zero_eps": {region: mean δ}}, "delta_other_image":
        {"mean_abs_difference", "correlation"}, "delta_zero_eps": {...}, "contrast":
        {"references", "curve", "final"}, ...}``.
    """
    from laworder.data.layouts import load_dataset

    backbone, objective, config = load_law(run)
    collection = load_dataset(str(data or config.data))
    held_out = [r for subset in collection.test.values() for r in subset]
    probe = make_probe_set(held_out, backbone.resolution, backbone.image_channels, count, timesteps, seed)
    scheduler = backbone.noise_scheduler()
    generator = torch.Generator().manual_seed(seed)
    maps: dict[str, list[torch.Tensor]] = {"true": [], "other_image": [], "zero_eps": []}
    region_list: list[dict[str, torch.Tensor]] = []
    for t in probe.timesteps:
        clean = backbone.encode(probe.images, generator)
        noise = torch.randn(clean.shape, generator=generator)
        steps = torch.full((clean.shape[0],), int(t))
        noisy = scheduler.add_noise(clean, noise, steps)
        cond = torch.full((clean.shape[0],), LESION_TOKEN)
        hint = backbone.mask_hint(probe.masks)
        eps_true = backbone.predict_noise(noisy, steps, hint, cond)
        eps_other = backbone.predict_noise(noisy[probe.shuffle], steps, hint, cond)  # another image, same mask
        maps["true"].append(delta_map(objective, eps_true, probe.masks))
        maps["other_image"].append(delta_map(objective, eps_other, probe.masks))
        maps["zero_eps"].append(delta_map(objective, torch.zeros_like(eps_true), probe.masks))
        region_list.append(region_maps(F.interpolate(probe.masks, size=clean.shape[-2:], mode="nearest"), 1))
    stacked = {k: torch.cat(v) for k, v in maps.items()}
    regions = {name: torch.cat([r[name] for r in region_list]) for name in REGIONS}
    result: dict[str, Any] = {"run": str(run), "held_out_pairs": probe.images.shape[0], "timesteps": list(probe.timesteps),
                              "delta": {kind: {name: float(delta[regions[name]].mean()) if regions[name].any() else None
                                               for name in REGIONS} for kind, delta in stacked.items()}}
    for kind in ("other_image", "zero_eps"):
        a, b = stacked["true"].flatten(), stacked[kind].flatten()
        correlation = float(np.corrcoef(a.numpy(), b.numpy())[0, 1]) if a.std() > 0 and b.std() > 0 else None
        result[f"delta_{kind}"] = {"mean_abs_difference": float((a - b).abs().mean()), "correlation": correlation}
    result["contrast"] = analyse_contrast(run, data, train_masks)
    return result


def analyse_contrast(run: str | Path, data: str | Path | None = None, train_masks: int = 256) -> dict[str, Any]:
    """LAW's logged lesion:background weight contrast over training and the references on the
    first ``train_masks`` training masks (at the diffusion target's resolution). Needs only the
    run's ``config.yaml`` and ``metrics.jsonl``, not its weights.

    Raises:
        ConfigError: not a LAW run with δ.
    """
    from laworder.data.dataset import PairDataset
    from laworder.data.layouts import load_dataset
    from laworder.synth.sampler import find_run
    from laworder.synth.build import build_backbone
    from laworder.synth.weighting import create_objective

    _, config = find_run(Path(run) / "config.yaml" if (Path(run) / "config.yaml").is_file() else run)
    if config.objective != "law" or config.objective_kwargs.get("use_delta", True) is False:
        raise ConfigError(f"{run} was trained with {config.objective!r} {config.objective_kwargs}: no δ to analyse")
    backbone = build_backbone(config)
    objective = create_objective("law", channels=backbone.target_channels, **config.objective_kwargs)
    collection = load_dataset(str(data or config.data))
    train = PairDataset(collection.train[:train_masks], size=backbone.resolution, channels=backbone.image_channels)
    masks = torch.stack([train[i]["mask"] for i in range(len(train))]).float()
    masks = F.interpolate(masks, size=(backbone.target_size, backbone.target_size), mode="nearest")
    curve = contrast_curve(Path(run))
    return {"references": reference_contrasts(masks, objective), "curve": curve,
            "final": curve[-1]["contrast"] if curve else None}


def plot_law_analysis(result: dict[str, Any], out: str | Path) -> Path:
    """Left: LAW's lesion:background contrast over training with the reference lines; right (when
    ``result`` has δ numbers): mean δ per region with the true ε̂, another image's ε̂ and ε̂ = 0."""
    from laworder.experiments.figures import plt, save_figure

    with_delta = "delta" in result
    fig, axes = plt.subplots(1, 2 if with_delta else 1, figsize=(10 if with_delta else 5.5, 3.6), squeeze=False)
    left = axes[0][0]
    curve = result["contrast"]["curve"]
    if curve:
        left.plot([r["step"] for r in curve], [r["contrast"] for r in curve], marker="." if len(curve) < 50 else None,
                  label="LAW w_final (per batch)")
    references = result["contrast"]["references"]
    styles = {"ratio_pooled": ("ratio (1−r)/r, pooled", "tab:red"),
              "law_delta_equals_mask_pooled": ("LAW if δ = m", "tab:green"), "uniform": ("uniform", "grey")}
    for key, (label, colour) in styles.items():
        left.axhline(references[key], ls="--", color=colour, lw=1, label=f"{label}: {references[key]:.1f}")
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("lesion : background weight")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    if not with_delta:
        return save_figure(fig, out)
    right = axes[0][1]
    kinds = ("true", "other_image", "zero_eps")
    labels = {"true": "own ε̂", "other_image": "another image's ε̂ (same mask)", "zero_eps": "ε̂ = 0"}
    width = 0.25
    for offset, kind in enumerate(kinds):
        values = [result["delta"][kind][name] or 0.0 for name in REGIONS]
        right.bar(np.arange(len(REGIONS)) + (offset - 1) * width, values, width, label=labels[kind])
    right.set_xticks(range(len(REGIONS)), REGIONS)
    right.set_ylabel("mean δ")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    right.set_title(f"|δ(own) − δ(other image)| = {result['delta_other_image']['mean_abs_difference']:.3g}", fontsize=9)
    return save_figure(fig, out)


def write_law_analysis(run: str | Path, out_dir: str | Path, contrast_only: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``analyse_law`` (or, with ``contrast_only``, ``analyse_contrast``: no weights needed) +
    ``law_analysis.json`` and ``law_analysis.png`` in ``out_dir``."""
    if contrast_only:
        kwargs = {k: v for k, v in kwargs.items() if k in ("data", "train_masks")}
        result = {"run": str(run), "contrast": analyse_contrast(run, **kwargs)}
    else:
        result = analyse_law(run, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "law_analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_law_analysis(result, out / "law_analysis.png")
    return result

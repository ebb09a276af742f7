"""Turn a finished ``synth train`` run into a shipped generator: weights + meta.json + model card.

``export_generator(run_dir, dest_root, "polyps/law", ...)`` gathers every network sampling needs
(the run's ControlNet, the base run's UNet and token embedding, the VAE), stores each as
``synth/_modules/<module>-<sha12>.safetensors`` (float16 when that keeps the images within
``tolerance``, see below) and writes ``synth/<dataset>-<variant>/meta.json`` and ``card.md``
(layout: :mod:`laworder.synth.pretrained`).

The float16 check: the run's float32 networks and the shipped generator, as loaded by
``load_pretrained``, sample the same masks with the same seeds and the card's sampler settings;
the largest difference of the 8-bit images (levels of 255) is recorded. ``dtype="auto"`` stores
float16 when it is at most ``tolerance`` levels, float32 otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from laworder.errors import ConfigError, MissingWeightsError
from laworder.synth.pretrained import (
    CARD_FILE, DEFAULT_SAMPLING, GENERATOR_MODULES, META_FILE, MODULES_SUBDIR, SYNTH_SUBDIR, GeneratorWeights,
    load_pretrained,
)

DTYPES = ("auto", "float16", "float32")
DEFAULT_TOLERANCE = 4  # levels of 255: the largest pixel difference float16 storage may cause
BLOB = re.compile(r"^[a-z_]+-[0-9a-f]{12}\.safetensors$")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run_backbone(run_dir: str | Path, base: str | Path | None = None, vae: str | Path | None = None):
    """(backbone with the run's sampling networks loaded, the run's config resolved over its base).

    ``base`` / ``vae`` replace the run's recorded base run / VAE folder (runs moved to another
    machine record paths that no longer exist).

    Raises:
        MissingWeightsError: the run, its base, its VAE or a weights file is absent.
        ConfigError: not a builtin-backbone run.
    """
    from laworder.synth.base_model import load_base_weights, resolve_base
    from laworder.synth.sampler import find_run
    from laworder.synth.task import build_backbone
    from laworder.training import load_weights

    weights, config = find_run(run_dir)
    if base is not None:
        config = replace(config, base=str(Path(base).expanduser().resolve()))
    if config.backbone != "builtin":
        raise ConfigError(f"{run_dir}: only builtin-backbone runs can be shipped (this one is {config.backbone!r})")
    if config.stage != "controlnet":
        raise ConfigError(f"{run_dir} is a `synth pretrain` run: ship the ControlNet run trained on top of it")
    if vae is not None:  # the recorded VAE path (in the run's and the base's config) is replaced, not compared
        config = replace(config, backbone_kwargs={k: v for k, v in config.backbone_kwargs.items() if k != "vae"})
    config = resolve_base(config)
    if vae is not None:
        config = replace(config, backbone_kwargs={**config.backbone_kwargs, "vae": str(Path(vae).expanduser().resolve())})
    # built without the base (whose recorded VAE may be gone), then the base's weights loaded by hand:
    # the ControlNet's own weights replace whatever from_unet would have copied
    backbone = build_backbone(replace(config, base=None, unet_trainable="none"))
    if config.base:
        load_base_weights(backbone, config.base)
    for name in ("unet", "embedding", "controlnet"):
        file = weights / f"{name}.safetensors"
        if file.is_file():
            load_weights(backbone.network(name), file)
        elif name == "controlnet" or not config.base:  # a frozen UNet / embedding comes from the base
            raise MissingWeightsError(f"{weights} has no {file.name}; expected the trained {name} weights there")
    for module in (*backbone.modules.values(), *backbone.frozen_modules().values()):
        module.eval().requires_grad_(False)
    return backbone, config


def _write_blob(state: dict, folder: Path, name: str, dtype: str) -> Path:
    """Save ``state`` in ``dtype`` as ``<name>-<sha12>.safetensors`` in ``folder`` (content-addressed)."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    tensors = {k: (v.detach().to(torch_dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp.safetensors"
    save_file(tensors, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    final = folder / f"{name}-{digest}.safetensors"
    tmp.replace(final)
    return final


def _check_masks(source: Any, config, count: int, size: int):
    """The first ``count`` masks of ``source`` (default: the run's data, test split if any) at ``size``."""
    import torch

    from laworder.synth.sampler import collect_masks, load_mask_tensor

    if source is None:
        try:
            items = collect_masks(config.data, split="test", layout=config.layout)
        except Exception:  # a dataset without a test split: its training masks
            items = collect_masks(config.data, split="train", layout=config.layout)
    else:
        items = collect_masks(source)
    items = items[:count]
    return [item.stem for item in items], torch.stack([load_mask_tensor(item.path, size) for item in items])


def _to_uint8(images) -> np.ndarray:
    """``N×C×H×W`` in [-1, 1] -> uint8 levels, as a pool's PNGs store them."""
    return np.round(((images.float().cpu().numpy() + 1.0) / 2.0).clip(0, 1) * 255).astype(np.int16)


def _run_summary(folder: Path) -> dict[str, Any]:
    """Steps, time, command and training settings of one run folder (empty when it is not one)."""
    run = _read_json(folder / "run.json")
    provenance = _read_json(folder / "provenance.json")
    loop = {}
    if (folder / "config.yaml").is_file():
        from laworder.config import load_yaml

        loop = (load_yaml(folder / "config.yaml") or {}).get("loop", {})
    return {"folder": str(folder), "global_step": run.get("global_step"), "seconds": run.get("seconds"),
            "device": run.get("device"), "command": provenance.get("command"),
            "commits": [s.get("commit") for s in provenance.get("sessions", []) if s.get("commit")],
            "loop": {k: loop.get(k) for k in ("max_steps", "batch_size", "lr", "optimizer", "scheduler", "ema_decay", "seed")
                     if k in loop}}


def export_generator(run_dir: str | Path, dest_root: str | Path, name: str, description: str, command: str,
                     metrics: dict[str, Any] | None = None, notes: str | None = None, dtype: str = "auto",
                     tolerance: float = DEFAULT_TOLERANCE, check_masks: Any = None, check_count: int = 4,
                     sampling: dict[str, Any] | None = None, base: str | Path | None = None,
                     vae: str | Path | None = None, terms: str | None = None,
                     source_name: str | None = None) -> GeneratorWeights:
    """Ship ``run_dir`` as generator ``name`` (``<dataset>/<variant>``) under ``<dest_root>/synth/``.

    Args:
        description: one paragraph on what the generator is (goes on the card).
        command: the exact commands that trained it (VAE, base, ControlNet).
        metrics: what it scores (recovery Dice, FID/KID with their weights and floor, diversity...):
            shown on the card as given, nested dicts flattened.
        notes: free text from the training run (e.g. its README), quoted on the card.
        dtype: ``auto`` (float16 within ``tolerance``, else float32), ``float16`` or ``float32``.
        tolerance: largest allowed 8-bit pixel difference float16 storage may cause.
        check_masks: masks for the float16 check (a folder or dataset; default the run's test masks).
        sampling: the card's sampler defaults (default: DDIM 50, CFG 10, mask guidance 1).
        base, vae: replace the run's recorded base run / VAE folder.

    Raises:
        ConfigError: a bad name, dtype or run. MissingWeightsError: absent weights.
    """
    import torch

    from laworder.synth.ddim import MaskConditionedSampler
    from laworder.synth.weighting import objective_backbone_defaults

    if not re.fullmatch(r"[a-z0-9_]+/[a-z0-9_]+", name):
        raise ConfigError(f"generator name must be <dataset>/<variant> in lower case, e.g. polyps/law; got {name!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
    backbone, config = load_run_backbone(run_dir, base, vae)
    kwargs = {**objective_backbone_defaults(config.objective), **config.backbone_kwargs}
    kwargs.pop("vae", None)

    # reference: the run's own float32 networks
    stems, masks = _check_masks(check_masks, config, check_count, backbone.resolution)
    seeds = list(range(len(stems)))
    sampler = MaskConditionedSampler(backbone, sampling["steps"], sampling["guidance_scale"], sampling["eta"], True,
                                     sampling["mask_guidance"])
    reference = _to_uint8(sampler.sample(masks, seeds))

    meta: dict[str, Any] = {
        "objective": config.objective, "objective_kwargs": config.objective_kwargs,
        "sampling": sampling, "description": description, "command": command,
        "metrics": metrics or {}, "notes": notes,
        "terms": terms or _data_terms(name.split("/")[0]),
        "source_run": source_name or str(run_dir),
    }
    meta["training"] = _training(Path(run_dir), config)

    root = Path(dest_root) / SYNTH_SUBDIR
    folder = root / name.replace("/", "-")

    def write(storage: str) -> tuple[GeneratorWeights, dict[str, Any]]:
        save_generator(backbone, dest_root, name, kwargs, meta, storage)
        shipped = load_pretrained(str(folder))
        with torch.no_grad():
            images = _to_uint8(shipped.sampler(**{k: sampling[k] for k in ("steps", "guidance_scale", "mask_guidance", "eta")})
                               .sample(masks, seeds))
        diff = np.abs(images - reference)
        return shipped.weights, {"masks": len(stems), "seeds": seeds, "sampler": sampling,
                                 "max_abs_levels": int(diff.max()), "mean_abs_levels": float(diff.mean()),
                                 "tolerance_levels": tolerance}

    weights, check = write("float32" if dtype == "float32" else "float16")
    if dtype == "auto" and check["max_abs_levels"] > tolerance:
        fp16_check = check
        weights, check = write("float32")
        check["float16_rejected"] = fp16_check
    meta["fp16_check"] = check
    meta["size_bytes"] = weights.size_bytes
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (folder / CARD_FILE).write_text(format_card(meta))
    prune_modules(root)
    return GeneratorWeights(folder.resolve(), meta)


def save_generator(backbone, dest_root: str | Path, name: str, backbone_kwargs: dict[str, Any],
                   meta: dict[str, Any] | None = None, dtype: str = "float16") -> GeneratorWeights:
    """Write ``backbone``'s networks (``synth/_modules/``) and ``synth/<dataset>-<variant>/meta.json``.

    ``backbone_kwargs`` rebuild the backbone (everything but the VAE, whose config is stored);
    ``meta`` adds to what is written (objective, sampling, metrics...). ``meta`` is updated in
    place with the fields written. No card and no float16 check: ``export_generator`` does those.
    """
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, got {dtype!r}")
    if backbone.name != "builtin":
        raise ConfigError(f"only builtin backbones can be shipped, got {backbone.name!r}")
    meta = meta if meta is not None else {}
    root = Path(dest_root) / SYNTH_SUBDIR
    folder = root / name.replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    modules = {n: backbone.network(n) for n in GENERATOR_MODULES if n in backbone.modules or n in backbone.frozen}
    vae_module = getattr(backbone, "vae", None)
    files = {n: _write_blob(m.state_dict(), root / MODULES_SUBDIR, n, dtype) for n, m in modules.items()}
    meta.update({
        "name": name, "dataset": name.split("/")[0], "variant": name.split("/")[1],
        "backbone": backbone.name, "backbone_kwargs": {k: v for k, v in backbone_kwargs.items() if k != "vae"},
        # the diffusers config minus its bookkeeping (``_name_or_path`` is a path on this machine)
        "vae_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae_module.config).items()
                       if not k.startswith("_")} if vae_module is not None else None,
        "resolution": backbone.resolution, "image_channels": backbone.image_channels,
        "latent": {"channels": backbone.target_channels, "size": backbone.target_size},
        "params": {n: int(sum(p.numel() for p in m.parameters())) for n, m in modules.items()},
        "dtype": dtype, "modules": {n: f"../{MODULES_SUBDIR}/{f.name}" for n, f in files.items()},
    })
    meta.setdefault("sampling", dict(DEFAULT_SAMPLING))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return GeneratorWeights(folder.resolve(), meta)


def prune_modules(root: Path) -> list[Path]:
    """Remove module files in ``root/_modules`` that no generator's meta.json references any more
    (only files named the way ``export_generator`` names them)."""
    used = set()
    for meta_path in root.glob(f"*/{META_FILE}"):
        for rel in json.loads(meta_path.read_text()).get("modules", {}).values():
            used.add((meta_path.parent / rel).resolve())
    removed = []
    for blob in (root / MODULES_SUBDIR).glob("*.safetensors"):
        if BLOB.match(blob.name) and blob.resolve() not in used:
            blob.unlink()
            removed.append(blob)
    return removed


def _training(run_dir: Path, config) -> dict[str, Any]:
    from laworder.synth.sampler import find_run

    weights, _ = find_run(run_dir)
    run_folder = next((f for f in (weights, *weights.parents) if (f / "config.yaml").is_file()), run_dir)
    training = {"controlnet": _run_summary(run_folder)}
    if config.base:
        training["base"] = _run_summary(Path(config.base))
    vae = config.backbone_kwargs.get("vae")
    if vae:
        vae_path = Path(vae)
        run = next((f for f in (vae_path, *vae_path.parents[:2]) if (f / "run.json").is_file()), None)
        training["vae"] = _run_summary(run) if run is not None else {"folder": str(vae_path)}
    return training


def _data_terms(dataset: str) -> str:
    from laworder.data.terms import DATA_TERMS  # the data's terms bind generators as they bind segmenters

    return DATA_TERMS.get(dataset, "See the dataset's own terms of use.")


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{label} / ")
        else:
            rows.append((label, value))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_card(meta: dict[str, Any]) -> str:
    """The model card (markdown) of one generator's ``meta.json``."""
    name, res = meta["name"], meta["resolution"]
    sampling = meta["sampling"]
    metrics = _flatten(meta.get("metrics") or {})
    metric_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics) or "| (none recorded) | |"
    check = meta["fp16_check"]
    rejected = check.get("float16_rejected")
    storage = (f"float16: at most {check['max_abs_levels']} of 255 levels from the float32 weights "
               f"(mean {check['mean_abs_levels']:.3f}; tolerance {check['tolerance_levels']})"
               if meta["dtype"] == "float16" else
               "float32" + (f" (float16 moved pixels by up to {rejected['max_abs_levels']} levels, more than the tolerance "
                            f"{rejected['tolerance_levels']})" if rejected else ""))
    params = meta["params"]
    param_rows = "\n".join(f"| {k} | {v:,} |" for k, v in params.items())
    training_lines = []
    for stage, info in meta["training"].items():
        loop = info.get("loop") or {}
        steps = info.get("global_step")
        hours = f", {info['seconds'] / 3600:.2f} h" if info.get("seconds") else ""
        settings = ", ".join(f"{k} {v}" for k, v in loop.items() if v is not None)
        training_lines.append(f"- {stage}: {steps if steps is not None else 'unknown'} steps{hours}"
                              f"{' on ' + info['device'] if info.get('device') else ''}"
                              f"{f' ({settings})' if settings else ''}"
                              f"{'; `' + info['command'] + '`' if info.get('command') else ''}")
    commits = sorted({c for info in meta["training"].values() for c in info.get("commits", [])})
    notes = meta.get("notes")
    notes_block = ("\n## Notes from the training run\n\n" + "\n".join(f"> {line}" for line in notes.strip().splitlines())
                   + "\n") if notes else ""
    vae = meta.get("vae_config")
    space = (f"latent diffusion: a {vae['latent_channels']}-channel VAE latent of {meta['latent']['size']}²"
             if vae else "pixel space")
    return f"""# {name}: mask-to-image generator ({meta['objective']} weighting), {res}×{res}

```python
from laworder.synth import load_pretrained
generator = load_pretrained("{name}")
images = generator.generate(masks, seed=0)   # masks N×H×W in {{0, 1}} -> N×{meta['image_channels']}×{res}×{res} in [0, 1]
```
```
laworder synth sample --pretrained {name} masks/ pool/
```

Images are {res}×{res} ({space}); masks of any size are resized (nearest) to {res}². Default
sampler: DDIM {sampling['steps']} steps, CFG {sampling['guidance_scale']:g}, mask guidance {sampling['mask_guidance']:g}
(the paper's sampler); mask `i` of a call uses seed `seed + i`, so the same seed gives the same image.

{meta['description']}

## What it scores

| Metric | Value |
|---|---|
{metric_rows}

## How it was made

- Objective: `{meta['objective']}` {json.dumps(meta.get('objective_kwargs') or {})}; backbone `{meta['backbone']}` {json.dumps(meta['backbone_kwargs'])}.
{chr(10).join(training_lines)}
- Command: `{meta['command']}`
- Source run: `{meta['source_run']}`; laworder commit(s): {', '.join(commits) or 'not recorded'}

## Size

| Network | Parameters |
|---|---|
{param_rows}

Stored as {storage}; {_mb(meta['size_bytes'])} of weight files (networks shared with another shipped generator, such as a
frozen VAE or base UNet, are stored once in the package).
{notes_block}
## Data and terms

{meta['terms']}
"""


__all__ = ["export_generator", "save_generator", "load_run_backbone", "format_card", "prune_modules", "DEFAULT_TOLERANCE"]

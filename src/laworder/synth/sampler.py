"""DDIM sampling with classifier-free guidance, and synthetic pools on disk.

A pool is a pair folder (``images/`` + ``masks/``, matched by stem) plus ``manifest.json``,
so ``laworder seg train`` reads it directly (``pairs`` layout). One image per mask, each
seeded by its mask: ``seed = base_seed + crc32(stem)``, so a pool does not depend on batching.
With ``mask_augment=N`` each source mask gives N jittered copies instead
(``laworder.synth.mask_augment``), each recorded in the manifest with its source and transform.
LAW's φ is a training-only module: sampling builds the backbone alone and loads only the
modules the backbone samples with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from laworder import parallel
from laworder.config import from_dict, load_yaml
from laworder.errors import ConfigError, DataError, MissingWeightsError, RunDirError
from laworder.paths import resolve
from laworder.synth.backbones import Backbone
from laworder.synth.config import SynthConfig
from laworder.synth.ddim import MaskConditionedSampler, check_sampling_args, mask_seed  # noqa: F401 (re-exported)

MANIFEST = "manifest.json"


# --- loading a trained run ----------------------------------------------------------------------
def find_run(checkpoint: str | Path) -> tuple[Path, SynthConfig]:
    """A run folder, a weights folder (``model/last``) or a checkpoint (``checkpoints/step_…``)
    -> (folder holding ``<module>.safetensors``, the run's ``SynthConfig``)."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"checkpoint not found: {path}")
    weights = path / "model" / "last" if (path / "model" / "last").is_dir() else path
    for folder in (weights, *weights.parents):
        if (folder / "config.yaml").is_file():
            return weights, from_dict(SynthConfig, load_yaml(folder / "config.yaml"), where=str(folder / "config.yaml"))
    raise MissingWeightsError(f"no config.yaml in {weights} or its parents: is {path} a `laworder synth train` run?")


def load_backbone(checkpoint: str | Path) -> tuple[Backbone, SynthConfig, list[Path]]:
    """Build the run's backbone and load only its sampling modules (never the objective)."""
    from laworder.synth.build import build_backbone
    from laworder.training import load_weights

    weights, config = find_run(checkpoint)
    backbone = build_backbone(config)
    files = []
    for name in backbone.sampling_modules:
        file = weights / f"{name}.safetensors"
        if not file.is_file():
            raise MissingWeightsError(f"{weights} has no {file.name}; expected the trained {name} weights there")
        load_weights(backbone.modules[name], file)
        files.append(file)
    for module in (*backbone.modules.values(), *backbone.frozen_modules().values()):
        module.eval()
    return backbone, config, files


def files_sha256(files: Iterable[Path]) -> str:
    """sha256 over the files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda p: p.name):
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --- masks in, pool out ---------------------------------------------------------------------
@dataclass
class MaskItem:
    """One conditioning mask: its pool ``stem`` and file; a jittered copy also has the
    ``transform`` applied at the sampling resolution and its ``source`` mask's stem."""

    stem: str
    path: Path
    transform: Any = None  # laworder.synth.mask_augment.MaskTransform
    source: str = ""


def augment_items(items: list[MaskItem], copies: int, seed: int, size: int, jitter: Any = None) -> list[MaskItem]:
    """``copies`` jittered copies of each mask (``<stem>_aug<k>``, k = 0..copies−1, source order),
    each transform drawn for the mask at ``size`` from ``(seed, crc32(stem), k)``.

    Raises:
        ConfigError: ``copies`` < 1, or a copy's stem equals another mask's.
    """
    from laworder.synth.mask_augment import MaskJitter, augmented_stem, check_copies, draw_transform, transform_seed

    copies = check_copies(copies)
    jitter = jitter if jitter is not None else MaskJitter()
    out = []
    for item in items:
        mask = load_mask_tensor(item.path, size)[0].numpy()
        for copy in range(copies):
            transform = draw_transform(mask, transform_seed(seed, item.stem, copy), jitter)
            out.append(MaskItem(augmented_stem(item.stem, copy), item.path, transform, item.stem))
    clash = sorted({i.stem for i in items} & {i.stem for i in out})
    if clash:
        raise ConfigError(f"mask_augment: copies would reuse the stems of source masks {clash[:5]}; rename those masks")
    return out


def collect_masks(source: Any, split: str = "train", layout: str = "auto") -> list[MaskItem]:
    """Masks to condition on, from a folder of mask files, a dataset (``load_dataset``: ``split``
    is ``train``, ``test`` (every test subset) or one subset name), or a list of ``PairRecord``.
    Stems repeated across subsets are prefixed with the subset name."""
    from laworder.data.io import list_image_files

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir() and (path / "masks").is_dir() and not (path / "images").is_dir():
            path = path / "masks"  # a folder holding only masks/
        files = list_image_files(path) if path.is_dir() else []
        if files:
            return [MaskItem(p.stem, p) for p in files]
        from laworder.data.layouts import load_dataset

        source = load_dataset(source, layout=layout)
    if hasattr(source, "train") and hasattr(source, "test"):
        if split == "train":
            records = list(source.train)
        elif split == "test":
            records = [r for subset in source.test.values() for r in subset]
        elif split in source.test:
            records = list(source.test[split])
        else:
            raise ConfigError(f"unknown split {split!r}; choose train, test or one of {sorted(source.test)}")
    else:
        records = list(source)
    if not records:
        raise DataError(f"no masks found in {source!r} (split {split!r})")
    counts: dict[str, int] = {}
    for record in records:
        counts[record.stem] = counts.get(record.stem, 0) + 1
    return [MaskItem(f"{r.subset}_{r.stem}" if counts[r.stem] > 1 and r.subset else r.stem, Path(r.mask)) for r in records]


def _conditioning_mask(item: MaskItem, size: int) -> torch.Tensor:
    """``1×size×size`` float {0, 1}: the mask file, jittered when the item carries a transform."""
    mask = load_mask_tensor(item.path, size)
    if item.transform is None:
        return mask
    return torch.from_numpy(item.transform.apply(mask[0].numpy()))[None]


def load_mask_tensor(path: Path, size: int) -> torch.Tensor:
    """One mask file -> ``1×size×size`` float {0, 1}, resized nearest."""
    from laworder.data.io import read_mask

    mask = torch.from_numpy(read_mask(path).astype(np.float32))[None, None]
    if mask.shape[-2:] != (size, size):
        mask = F.interpolate(mask, size=(size, size), mode="nearest")
    return mask[0]


def sample_pool(
    checkpoint: str | Path | None,
    masks: Any,
    out_dir: str | Path,
    steps: int = 50,
    guidance_scale: float = 10.0,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    split: str = "train",
    batched_cfg: bool = True,
    limit: int | None = None,
    layout: str = "auto",
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = False,
    mask_guidance: float = 1.0,
    resume: bool = False,
    skip_unreadable: bool = False,
    pretrained: str | None = None,
    mask_augment: int | None = None,
    mask_jitter: Any = None,
) -> Path:
    """Generate one image per mask and write a pair folder + ``manifest.json``; returns ``out_dir``.

    Every input (masks, weights, settings) is checked before ``out_dir`` is touched; the pool
    folder's ``run_lock`` is held while sampling. Images are written batch by batch, each file
    atomically, with the settings in ``pool_state.json``: ``resume`` continues a killed pool from
    its first incomplete batch (same batches, same seeds), so it ends bit-identical to an
    uninterrupted one.

    Args:
        checkpoint: a ``synth train`` run folder, its ``model/last`` or a checkpoint folder
            (``None`` with ``pretrained``).
        masks: a folder of masks, a dataset (see ``collect_masks``) or a list of ``PairRecord``.
        out_dir: the pool folder (``images/``, ``masks/``, ``manifest.json``).
        steps, guidance_scale, eta: DDIM settings (50, 10.0, 0.0; see ``check_sampling_args``).
        mask_guidance: guidance scale on the mask (1 = off; see ``MaskConditionedSampler``).
        seed: base seed; mask ``stem`` uses ``seed + crc32(stem)``.
        batch_size: masks per batch (does not change the images beyond float round-off).
        split: which part of a dataset to take masks from.
        batched_cfg: one 2B forward per step (True) or two B forwards.
        limit: take only the first ``limit`` masks.
        layout: layout of ``masks`` when it is a dataset folder (``auto`` detects it).
        device: where to sample (default: CUDA when available, else CPU).
        overwrite: replace the pool files in a non-empty ``out_dir``.
        resume: continue the partial pool in ``out_dir`` (its settings must match).
        skip_unreadable: leave out unreadable masks (listed in ``skipped.json``) instead of stopping.
        pretrained: a generator shipped in the package (``polyps/law``, ``laworder.synth.pretrained``)
            instead of ``checkpoint``.
        mask_augment: N >= 1 jittered copies of each mask instead of the masks themselves (N×M
            pairs from M masks; ``laworder.synth.mask_augment``); ``None`` samples the masks as they are.
        mask_jitter: the jitter ranges (``MaskJitter``; default ranges when ``None``).

    Raises:
        ConfigError, MissingWeightsError, DataError, RunDirError (``out_dir`` not empty without
        ``overwrite`` / ``resume``), RunLockedError (another process writes the pool).
    """
    from laworder.data.io import read_mask
    from laworder.data.precheck import readable_inputs, write_skipped
    from laworder.outputs import OutputFolder
    from laworder.runlock import run_lock

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every mask), got {limit}")
    from laworder.config import check_seed

    check_seed("seed", seed)
    check_sampling_args(steps, guidance_scale, eta, mask_guidance=mask_guidance)
    if mask_augment is not None:
        from laworder.synth.mask_augment import MaskJitter, check_copies

        check_copies(mask_augment)
        mask_jitter = mask_jitter if mask_jitter is not None else MaskJitter()
    items = collect_masks(masks, split=split, layout=layout)[:limit]
    _, skipped = readable_inputs([item.path for item in items], read_mask, skip_unreadable, what="masks")
    items = [item for item in items if str(item.path) not in skipped]  # every mask read before anything is written
    out_dir = Path(out_dir)
    inputs = {"the masks": [masks] if isinstance(masks, (str, os.PathLike)) and not str(masks).startswith("procedural")
              else [], "mask": sorted({Path(item.path).parent for item in items}), "the checkpoint": checkpoint}
    folder = OutputFolder(out_dir, (*POOL_FILES, POOL_STATE), overwrite, what="pool", inputs=inputs, kind="synth sample",
                          containers=("the checkpoint",), keep_on_interrupt=True, resume=resume,
                          hint="pass --resume to continue a killed pool or --overwrite to replace it")
    folder.check()
    if (checkpoint is None) == (pretrained is None):
        raise ConfigError("give a trained run (checkpoint) or a shipped generator (pretrained), not both or neither")
    if pretrained is not None:
        from laworder.synth.pretrained import load_pretrained

        generator = load_pretrained(pretrained)
        backbone, weight_files = generator.backbone, sorted(set(generator.weights.files.values()))
        meta = generator.weights.meta
        origin = {"method": meta.get("objective"), "objective_kwargs": meta.get("objective_kwargs", {}),
                  "backbone": meta["backbone"], "checkpoint": f"pretrained:{generator.name}",
                  "pretrained": generator.name}
    else:
        backbone, config, weight_files = load_backbone(checkpoint)
        origin = {"method": config.objective, "objective_kwargs": config.objective_kwargs, "backbone": config.backbone,
                  "checkpoint": str(resolve(checkpoint))}
    if mask_augment is not None:
        items = augment_items(items, mask_augment, seed, backbone.resolution, mask_jitter)
    parallel.check_device(device)
    settings = {"checkpoint_sha256": files_sha256(weight_files), "seed": seed, "steps": steps,
                "guidance_scale": guidance_scale, "mask_guidance": mask_guidance, "eta": eta, "batch_size": batch_size, "batched_cfg": batched_cfg,
                "resolution": backbone.resolution, "stems": [item.stem for item in items]}
    if mask_augment is not None:  # only then: pools sampled without it keep their recorded settings
        settings["mask_augment"] = {"copies": mask_augment, "jitter": dataclasses.asdict(mask_jitter)}
    state = parallel.process_state()
    continuing = _check_pool_folder(out_dir, settings, overwrite, resume)
    folder.resume = continuing
    parallel.wait(state)  # every process has checked the folder before the main one locks and clears it
    # Under `accelerate launch` the main process holds the lock and prepares the folder (replaced pool
    # files moved aside, put back if sampling fails); each process takes whole batches.
    main = state.is_main_process
    with run_lock(out_dir, "synth sample") if main else contextlib.nullcontext(), \
            folder if main else contextlib.nullcontext():
        if main and not continuing:
            _write_json(out_dir / POOL_STATE, settings)
        if state.is_main_process:
            write_skipped(out_dir, skipped)
        parallel.wait(state)  # the main process has cleared out_dir before anyone writes
        device = parallel.inference_device(state, device)
        for module in (*backbone.modules.values(), *backbone.frozen_modules().values()):
            module.to(device)
        sampler = MaskConditionedSampler(backbone, steps, guidance_scale, eta, batched_cfg, mask_guidance)
        batches = parallel.my_share(parallel.batches_of(items, batch_size), state)
        _sample_batches(sampler, batches, out_dir, seed, device, progress and state.is_main_process)
        parallel.wait(state)  # every process has written its batches
        if not state.is_main_process:
            parallel.wait(state)  # returns once the main process has written the manifest
            return out_dir
        entries = [{"stem": item.stem, "seed": mask_seed(seed, item.stem), "source_mask": str(item.path)} for item in items]
        if mask_augment is not None:
            for entry, item in zip(entries, items):
                entry.update(source_stem=item.source, transform=item.transform.to_dict())
        manifest = {
            **origin,
            "checkpoint_sha256": settings["checkpoint_sha256"],
            "seed": seed,
            "seed_rule": "base seed + crc32(stem)",
            "guidance_scale": guidance_scale,
            "mask_guidance": mask_guidance,
            "guidance_rule": "eps(c,m) + (g-1)(eps(c,m) - eps(null,m)) + (s-1)(eps(c,m) - eps(c, no ControlNet))",
            "steps": steps,
            "eta": eta,
            "sampler": "DDIM",
            "batched_cfg": batched_cfg,
            "resolution": backbone.resolution,
            "count": len(entries),
            "source": str(masks) if isinstance(masks, (str, Path)) else type(masks).__name__,
            "split": split,
            "layout": "pairs",
            "skipped": sorted(skipped),
            "items": entries,
        }
        if mask_augment is not None:
            manifest["mask_augment"] = {
                **settings["mask_augment"],
                "stem_rule": "<source stem>_aug<copy>, copy = 0..copies-1",
                "seed_rule": "numpy default_rng([seed mod 2^32, crc32(source stem), copy]); image seed as above",
                "transform_rule": "p = R(rotation)·scale·F(q - c) + c + shift at the sampling resolution "
                                  "(F: left-right flip, c: centre, shift (dy, dx) px), nearest neighbour; "
                                  "attempt k has the amplitudes halved k times, attempt = tries is the flip alone",
                "sources": len({item.source for item in items}),
            }
        _write_json(out_dir / MANIFEST, manifest)
    parallel.wait(state)
    return out_dir


POOL_STATE = "pool_state.json"  # the settings of a pool being written (compared on resume)
POOL_FILES = ("images", "masks", MANIFEST, "skipped.json")


def _write_json(path: Path, record: dict) -> None:
    from laworder.outputs import write_json_atomic

    write_json_atomic(path, record)


def _check_pool_folder(out_dir: Path, settings: dict, overwrite: bool, resume: bool) -> bool:
    """Whether sampling continues a partial pool (``resume`` with matching settings); raises when
    ``out_dir`` holds files and neither ``overwrite`` nor a matching ``resume`` allows writing."""
    from laworder.runlock import LOCK_FILE, is_locked, read_holder

    if not out_dir.is_dir() or not [p for p in out_dir.iterdir() if p.name != LOCK_FILE]:
        return False
    if is_locked(out_dir):
        from laworder.errors import RunLockedError

        holder = read_holder(out_dir) or {}
        raise RunLockedError(f"{out_dir} is locked by pid {holder.get('pid')} on host {holder.get('host')}; "
                             "another process is writing this pool")
    if resume:
        try:
            previous = json.loads((out_dir / POOL_STATE).read_text())
        except (OSError, ValueError):
            previous = None
        if previous == settings:
            return True
        if not overwrite:
            reason = ("it has no readable " + POOL_STATE) if previous is None else "settings differ: " + ", ".join(
                sorted(k for k in settings if previous.get(k) != settings[k]))
            raise RunDirError(f"cannot resume the pool in {out_dir}: {reason}; pass --overwrite to replace it")
        return False
    if not overwrite:
        raise RunDirError(f"{out_dir} is not empty; pass --resume to continue a killed pool or --overwrite to replace it")
    return False


def _sample_batches(sampler: MaskConditionedSampler, batches: list[list[MaskItem]], out_dir: Path, seed: int,
                    device: torch.device, progress: bool) -> None:
    """Sample the batches whose files are not all on disk yet (batches fixed by position, so a
    resumed pool groups masks exactly as an uninterrupted one)."""
    from laworder.data.io import write_image, write_mask
    from laworder.outputs import atomic_path

    size = sampler.backbone.resolution
    if progress:  # a bar on a terminal, a few plain lines in a log
        from laworder.progress import progress as progress_bar

        batches = progress_bar(batches, desc="sample", unit="batch")
    for batch in batches:
        if all((out_dir / sub / f"{item.stem}.png").is_file() for item in batch for sub in ("images", "masks")):
            continue  # written before an interruption
        mask_batch = torch.stack([_conditioning_mask(item, size) for item in batch]).to(device)
        images = sampler.sample(mask_batch, [mask_seed(seed, item.stem) for item in batch])
        pixels = ((images.float().cpu() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for item, pixel, mask in zip(batch, pixels, mask_batch.cpu()):
            # each file under a temporary name first: a kill leaves whole files or none
            for sub, write, value in (("images", write_image, np.round(pixel * 255).astype(np.uint8)),
                                      ("masks", write_mask, mask[0].numpy() > 0.5)):
                with atomic_path(out_dir / sub / f"{item.stem}.png") as tmp:
                    write(tmp, value)

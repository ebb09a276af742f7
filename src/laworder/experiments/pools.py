"""Synthetic pools for experiments: an existing pool folder, or one trained and sampled here.

In a config, ``pools`` maps a row label to either a folder::

    pools:
      LAW: runs/pools/law            # written by `laworder synth sample` (has manifest.json)

or a recipe that trains a diffusion model on the experiment's real data and samples a pool::

    synth: {backbone_kwargs: {preset: tiny}, loop: {max_steps: 200}}   # shared by every recipe
    sample: {split: train, steps: 50, guidance_scale: 10.0}            # shared sampling settings
    pools:
      LAW: {synth: {objective: law}}
      ControlNet: {synth: {objective: uniform}, sample: {seed: 1}}

Recipes train into ``<run_dir>/synth/<label>/`` and sample into ``<run_dir>/pools/<label>/``;
with ``--resume`` finished ones are reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from laworder.config import deep_merge, from_dict
from laworder.errors import ConfigError
from laworder.experiments.base import RunContext, slug
from laworder.experiments.mask_recovery import MANIFEST, read_manifest


@dataclass
class SampleSettings:
    """How a recipe samples its pool (``laworder.synth.sampler.sample_pool``; paper §4.1.2 defaults).

    ``split``: the masks to condition on, ``train`` (one image per training mask: augmentation,
    Tables 4-5) or ``test`` (held-out masks: mask recovery, Table 3).
    """

    split: str = "train"
    steps: int = 50
    guidance_scale: float = 10.0
    mask_guidance: float = 1.0  # guidance on the mask (1 = off; ``MaskConditionedSampler``)
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 8
    limit: int | None = None


@dataclass
class PoolSpec:
    """One pool: ``path`` to an existing pool, or ``synth``/``sample`` overrides of a recipe."""

    path: str = ""
    synth: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pool:
    label: str
    path: Path
    manifest: dict[str, Any]
    synth_run: str = ""  # the diffusion run folder when the pool was made here


def pool_spec(label: str, value: Any) -> PoolSpec:
    """A config entry (folder string or mapping) -> :class:`PoolSpec`."""
    if isinstance(value, (str, Path)):
        return PoolSpec(path=str(value))
    spec = from_dict(PoolSpec, value, where=f"pools.{label}")
    if bool(spec.path) == bool(spec.synth):
        raise ConfigError(f"pools.{label}: give either a pool folder (path) or a synth recipe (synth), not both/neither")
    return spec


def validate_pools(pools: dict[str, Any], synth_defaults: dict[str, Any], sample_defaults: SampleSettings | None = None) -> None:
    """Before any training: pool folders hold a manifest; recipes name known objectives and
    backbones with valid keyword arguments and sampling settings (steps, CFG and mask guidance
    ≥ 0, η: ``check_sampling_args``, on ``sample_defaults`` merged with the recipe's)."""
    from laworder.config import check_seed
    from laworder.synth.ddim import check_sampling_args

    if not isinstance(pools, dict):
        raise ConfigError(f"pools must map row labels to pool folders or recipes, got {pools!r}")
    for label, value in pools.items():
        if isinstance(value, list):
            for path in value:
                if not isinstance(path, (str, Path)):
                    raise ConfigError(f"pools.{label}: a list must hold pool folders (one per sampling run), got {path!r}")
                read_manifest(path)
            continue
        spec = pool_spec(label, value)
        if spec.path:
            read_manifest(spec.path)
        if spec.synth:
            synth_config(deep_merge(synth_defaults, spec.synth), "procedural", Path("."))  # names checked there
        base = asdict(sample_defaults) if sample_defaults is not None else {}
        sample = from_dict(SampleSettings, deep_merge(base, spec.sample), where=f"pools.{label}.sample")
        check_seed(f"pools.{label}.sample.seed", sample.seed)
        if spec.synth:
            check_sampling_args(sample.steps, sample.guidance_scale, sample.eta, mask_guidance=sample.mask_guidance)


def synth_config(overrides: dict[str, Any], data: str, output_dir: Path):
    """A ``SynthConfig`` = dataclass defaults <- ``{"data": data}`` <- ``overrides``; names checked."""
    from laworder.config import load_config
    from laworder.synth.backbones import BACKBONES
    from laworder.synth.config import SynthConfig
    from laworder.synth.weighting import create_objective

    config = load_config(SynthConfig, None, deep_merge({"data": data}, overrides))
    BACKBONES.get(config.backbone)  # ConfigError listing the known backbones
    try:  # unknown objective names (the error lists the known ones) and bad keyword arguments
        create_objective(config.objective, channels=3, **config.objective_kwargs)
    except TypeError as exc:
        raise ConfigError(f"objective {config.objective!r}: bad objective_kwargs {config.objective_kwargs} ({exc})") from exc
    config.loop.output_dir = str(output_dir)
    return config


def train_pool_model(context: RunContext, label: str, synth: dict[str, Any], data: str) -> Path:
    """Train (or, with ``resume``, reuse) the diffusion model of a recipe; returns its run folder.

    Raises:
        NonFiniteLossError: the diffusion training diverged (callers may record it as unstable).
    """
    from laworder.synth.task import train_synth

    run_dir = context.path("synth", slug(label))
    config = synth_config(synth, data, run_dir)
    config.loop.progress = config.loop.progress and context.progress
    if not (context.resume and (run_dir / "model" / "last").is_dir()):
        config.loop.resume = context.resume
        config.loop.overwrite = context.overwrite and not context.resume
        train_synth(config)
    return run_dir


def sample_recipe_pool(context: RunContext, label: str, run_dir: Path, sample: SampleSettings, data: str,
                       folder: str = "") -> Pool:
    """Sample one pool from a trained recipe into ``<run_dir>/pools/<folder or label>/``."""
    from laworder.synth.sampler import sample_pool

    pool_dir = context.path("pools", folder or slug(label))
    if not (context.resume and (pool_dir / MANIFEST).is_file()):
        sample_pool(run_dir, data, pool_dir, steps=sample.steps, guidance_scale=sample.guidance_scale, eta=sample.eta,
                    seed=sample.seed, batch_size=sample.batch_size, split=sample.split, limit=sample.limit,
                    overwrite=True, resume=context.resume, progress=context.progress, mask_guidance=sample.mask_guidance)
    return Pool(label, pool_dir, read_manifest(pool_dir), str(run_dir))


def resolve_pools(context: RunContext, pools: dict[str, Any], synth_defaults: dict[str, Any],
                  sample_defaults: SampleSettings, data: str, sampling_seeds: list[int] | None = None) -> list[Pool]:
    """Every configured pool as a folder on disk (recipes trained and sampled now).

    ``sampling_seeds`` (mask recovery): sample each recipe once per seed from the same trained
    model (pools ``<label>_seed<k>``), to report the spread over sampling runs; a folder entry may
    then be a list of folders (one per sampling run). Without it, one pool per label.
    """
    resolved = []
    for label, value in pools.items():
        if isinstance(value, list):
            if sampling_seeds is None:
                raise ConfigError(f"pools.{label}: one pool folder or recipe per row here, got a list")
            resolved += [Pool(label, Path(path), read_manifest(path)) for path in value]
            continue
        spec = pool_spec(label, value)
        if spec.path:
            resolved.append(Pool(label, Path(spec.path), read_manifest(spec.path)))
            continue
        sample = from_dict(SampleSettings, deep_merge(asdict(sample_defaults), spec.sample), where=f"pools.{label}.sample")
        run_dir = train_pool_model(context, label, deep_merge(synth_defaults, spec.synth), data)
        if not sampling_seeds or len(sampling_seeds) == 1:
            sample.seed = sampling_seeds[0] if sampling_seeds else sample.seed
            resolved.append(sample_recipe_pool(context, label, run_dir, sample, data))
            continue
        for seed in sampling_seeds:
            sample.seed = seed
            resolved.append(sample_recipe_pool(context, label, run_dir, sample, data, f"{slug(label)}_seed{seed}"))
    return resolved


def pool_summary(pool: Pool) -> dict[str, Any]:
    """What a report says about a pool: where it is and how it was made."""
    manifest = pool.manifest
    keys = ("method", "objective_kwargs", "backbone", "checkpoint", "checkpoint_sha256", "seed", "steps",
            "guidance_scale", "mask_guidance", "eta", "split", "count", "filter", "subsample")
    return {"label": pool.label, "path": str(pool.path), "synth_run": pool.synth_run,
            **{k: manifest[k] for k in keys if k in manifest}}


__all__ = ["Pool", "PoolSpec", "SampleSettings", "pool_spec", "pool_summary",
           "resolve_pools", "sample_recipe_pool", "synth_config", "train_pool_model", "validate_pools"]

"""``laworder exp run CONFIG.yaml``: one YAML per paper table, one run folder per experiment.

The YAML's ``kind:`` picks the experiment from ``EXPERIMENTS`` (``laworder exp list``); the other
keys fill that kind's config dataclass (paper defaults; nested ``seg:`` / ``sample:`` sections
merge with their defaults, other keys replace them). The run folder receives::

    experiment.yaml   the resolved config, kind included
    results.json      {kind, title, command, config_file, config, environment, started, seconds, results}
    report.md         tables in the paper's layout + figures/ (``laworder report`` rebuilds both)
    rows/, pools/, synth/, segmenter/, doses/, ...   the sub-runs, each with its own config.yaml

Kinds: ``seg_compare`` (Tables 7, 8, 10), ``runtime`` (Table 9), ``mask_recovery`` (Table 3),
``augmentation`` (Table 4), ``dose_response`` (Table 5), ``law_ablation`` (Table 6).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from laworder.config import deep_merge, from_dict, load_yaml, to_dict
from laworder.errors import ConfigError, RunDirError
from laworder.experiments.base import CONFIG, RESULTS, Experiment, RunContext
from laworder.experiments.kinds import EXPERIMENTS
from laworder.experiments.report import write_report


def list_experiments() -> dict[str, str]:
    """kind -> first docstring line."""
    return EXPERIMENTS.describe()


def _merge_with_defaults(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Dataclass defaults <- ``raw``: nested dataclass sections merge key by key, other values replace."""
    defaults = to_dict(cls())
    hints = typing.get_type_hints(cls)
    merged = dict(defaults)
    for key, value in raw.items():
        nested = dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict)
        merged[key] = deep_merge(defaults[key], value) if nested and key in defaults else value
    return merged


def load_experiment(source: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None
                    ) -> tuple[str, Experiment, Any]:
    """``(kind, experiment, config)`` from a YAML file or mapping plus nested ``overrides``.

    Raises:
        ConfigError: no ``kind:``, an unknown kind (the known ones are listed), unknown keys,
            or a value of the wrong type.
    """
    where = "experiment config" if isinstance(source, dict) else str(source)
    raw = dict(source) if isinstance(source, dict) else load_yaml(source)
    raw = deep_merge(raw, overrides or {})
    kind = raw.pop("kind", None)
    if not kind:
        raise ConfigError(f"{where}: missing 'kind:'; known kinds: {', '.join(EXPERIMENTS.names())}")
    experiment = EXPERIMENTS.create(str(kind))
    config = from_dict(experiment.config_class, _merge_with_defaults(experiment.config_class, raw), where=where)
    return str(kind), experiment, config


def check_sections(config: Any, where: str = "") -> None:
    """The loop and data of every nested training section (``seg``, ``synth``, ...), checked
    before the run folder is written (an experiment's ``validate`` checks its own keys)."""
    from laworder.seg.validate import check_data_source
    from laworder.training.config import LoopConfig
    from laworder.training.validate import check_loop_config

    from laworder.config import check_seed

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{where}{field.name}"
        if field.name == "seed" or field.name.endswith("_seed"):  # every seed in the range the RNGs take
            check_seed(key, value, optional=True)
        elif (field.name == "seeds" or field.name.endswith("_seeds")) and isinstance(value, (list, tuple)):
            for index, seed in enumerate(value):
                check_seed(f"{key}[{index}]", seed)
        if isinstance(value, LoopConfig):
            check_loop_config(value, key)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            if isinstance(getattr(value, "data", None), str):
                check_data_source(value.data, f"{key}.data")
            check_sections(value, f"{key}.")


def config_class_of(source: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None) -> type | None:
    """The config dataclass of the experiment ``source`` describes (None when its kind is unknown)."""
    raw = dict(source) if isinstance(source, dict) else load_yaml(source)
    kind = (overrides or {}).get("kind", raw.get("kind"))
    if not isinstance(kind, str) or kind not in EXPERIMENTS.names():
        return None
    return EXPERIMENTS.create(kind).config_class


def _environment() -> dict[str, Any]:
    import torch

    from laworder import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"laworder": __version__, "git_commit": commit, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def run_experiment(source: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None,
                   output_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, command: str | None = None) -> Path:
    """Run the experiment a config describes; returns its run folder (``report.md`` inside).

    Args:
        source: a YAML file (``configs/exp/*.yaml``) or the same mapping.
        overrides: nested values merged over the file (``laworder exp run --set``).
        output_dir: replaces the config's ``output_dir``.
        resume: reuse finished sub-runs (segmentation seeds, diffusion runs, pools) of an earlier attempt.
        overwrite: replace a finished experiment and its sub-runs.
        command: the command line recorded in the results (default: this Python call).

    Raises:
        ConfigError / DataError: bad config values, checked before anything is trained.
        RunDirError: the folder holds a finished experiment (without ``resume`` / ``overwrite``).
    """
    kind, experiment, config = load_experiment(source, overrides)
    if output_dir is not None:
        config.output_dir = str(output_dir)
    run_dir = Path(config.output_dir)
    if (run_dir / RESULTS).is_file() and not (resume or overwrite):
        raise RunDirError(f"{run_dir} already holds a finished experiment ({RESULTS}); "
                          "pass --resume to reuse its sub-runs or --overwrite to replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output {run_dir} is a file, not a folder; choose a folder path")
    experiment.validate(config)
    check_sections(config)

    from laworder.runlock import run_lock

    with run_lock(run_dir, "exp run"):  # one writer; sub-runs inside take their own locks
        resolved = {"kind": kind, **to_dict(config)}
        (run_dir / CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))
        started = time.time()
        context = RunContext(run_dir, resume=resume, overwrite=overwrite, progress=progress)
        results = experiment.run(config, context)
        record = {
            "kind": kind,
            "title": experiment.title,
            "command": command or f"laworder.experiments.runner.run_experiment({str(source)!r})",
            "config_file": None if isinstance(source, dict) else str(source),
            "overrides": overrides or {},
            "config": resolved,
            "environment": _environment(),
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.time() - started,
            "results": results,
        }
        tmp = run_dir / (RESULTS + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, run_dir / RESULTS)
        write_report(run_dir)
    return run_dir

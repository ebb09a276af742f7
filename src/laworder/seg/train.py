"""``laworder seg train``: data check -> seeded split -> model -> the shared training core."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import ConcatDataset

from laworder.data.check import ensure_valid
from laworder.data.dataset import PairDataset
from laworder.data.layouts import load_dataset
from laworder.data.records import PairRecord
from laworder.data.splits import save_split, train_val_split
from laworder.data.labels import is_multiclass, parse_labels
from laworder.errors import ConfigError, DataError
from laworder.seg.config import SegTrainConfig
from laworder.seg.task import SegTask
from laworder.seg.validate import build_checked_model, check_seg_config
from laworder.training import FitResult, fit
from laworder.training.loop import check_run_dir, run_inputs

logger = logging.getLogger(__name__)


@dataclass
class SegRun:
    """A finished (or resumed-to-completion) segmentation run."""

    run_dir: Path
    fit: FitResult
    num_train: int
    num_val: int
    num_extra: int
    model: nn.Module  # the trained network (last step, unwrapped, on the training device)


def run_labels(config: SegTrainConfig, declared: list[str] | None) -> list[str]:
    """The run's class names: ``config.labels`` if set (it must match a dataset declaration),
    else the dataset's (``[]`` for an undeclared binary dataset)."""
    if config.labels and declared and list(config.labels) != list(declared):
        raise ConfigError(f"labels {config.labels} differ from the classes {declared} that {config.data} declares")
    if config.labels:
        parse_labels({name: value for value, name in enumerate(config.labels)}, "labels")
    return list(config.labels or declared or [])


def _extra_records(config: SegTrainConfig) -> list[PairRecord]:
    extra: list[PairRecord] = []
    for folder in config.extra_train:
        if config.check_data:
            ensure_valid(folder, "auto")
        pool = load_dataset(folder, "auto")
        if is_multiclass(config.labels) and pool.labels != config.labels:
            raise DataError(f"extra_train {folder} declares classes {pool.labels}, the run has {config.labels}")
        extra.extend(pool.train)
    if config.extra_limit is not None:
        if config.extra_limit > len(extra):
            raise DataError(f"extra_limit={config.extra_limit} is larger than the extra pool ({len(extra)} pairs in {config.extra_train})")
        extra = extra[: config.extra_limit]
    return extra


def train_segmenter(config: SegTrainConfig) -> SegRun:
    """Train one segmenter; returns where its weights, logs and split went.

    Refuses a broken dataset with the full ``laworder data check`` report, and a run folder
    that already holds another run unless ``loop.resume`` or ``loop.overwrite`` is set.
    """
    loop = config.loop
    check_seg_config(config)  # every value, the model and its image size: before any file is written
    check_run_dir(Path(loop.output_dir), loop.resume, loop.overwrite, inputs=run_inputs(config.data, config.extra_train))
    if config.check_data:
        ensure_valid(config.data, config.layout)
    collection = load_dataset(config.data, config.layout)
    config = replace(config, labels=run_labels(config, collection.labels))
    num_classes = len(config.labels) if is_multiclass(config.labels) else 2
    split_seed = loop.seed if config.split_seed is None else config.split_seed
    train_records, val_records = train_val_split(collection.train, config.val_fraction, split_seed)
    extra = _extra_records(config)
    if config.cache:  # the resized uint8 pairs stay in memory: refuse a cache that cannot fit, before reading
        from laworder.resources import check_fits

        count = len(train_records) + len(val_records) + len(extra)
        check_fits(f"cache: {count} pairs at {config.image_size}×{config.image_size}",
                   count * (config.channels + 1) * config.image_size ** 2, "Set cache=false or lower image_size")

    set_seed(loop.seed)  # model initialisation depends on it
    model = build_checked_model(config)
    task = SegTask(model, config.augment, config.bce_weight, config.dice_weight, config.threshold, config.labels)

    train_set = PairDataset(train_records, config.image_size, config.channels, cache=config.cache, num_classes=num_classes)
    if extra:
        train_set = ConcatDataset([train_set, PairDataset(extra, config.image_size, config.channels, cache=config.cache,
                                                          num_classes=num_classes)])
    val_set = (PairDataset(val_records, config.image_size, config.channels, cache=config.cache, num_classes=num_classes)
               if val_records else None)

    result = fit(task, train_set, loop, val_dataset=val_set, run_config=config)
    run_dir = Path(loop.output_dir)
    if result.run_dir and task.accelerator.is_main_process:
        save_split(run_dir / "split.json", train_records, val_records,
                   {"seed": split_seed, "val_fraction": config.val_fraction, "data": config.data,
                    "extra": [r.stem for r in extra]})
        (run_dir / "data.json").write_text(json.dumps({
            "dataset": collection.name, "layout": collection.layout,
            "num_train": len(train_records), "num_val": len(val_records), "num_extra": len(extra),
            "test_subsets": {k: len(v) for k, v in collection.test.items()}}, indent=2))
    return SegRun(run_dir, result, len(train_records), len(val_records), len(extra), task.unwrapped("model"))

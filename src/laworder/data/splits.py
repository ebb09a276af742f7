"""Group-aware train/val splits, saved as JSON lists of stems beside a run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from laworder.data.records import PairRecord
from laworder.errors import DataError

SPLIT_VERSION = 1


def _group_key(index: int, record: PairRecord) -> str:
    # An empty group means "a group of its own"; the NUL prefix cannot clash with a real name.
    return record.group or f"\0{record.stem}\0{index}"


def train_val_split(records: Sequence[PairRecord], val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[list[PairRecord], list[PairRecord]]:
    """Split records into ``(train, val)`` without cutting a group (``PairRecord.group``).

    Groups are shuffled with ``seed`` (from their sorted names, so the input order does not
    matter) and moved to val until val holds at least ``round(val_fraction * len(records))``
    records (at least 1); the last group may overshoot the target. Both lists keep the input
    order.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1).
        DataError: fewer than 2 records or a single group, so that no split leaves both sides
            non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    records = list(records)
    members: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        members.setdefault(_group_key(index, record), []).append(index)
    if len(members) < 2:
        raise DataError(f"cannot split {len(records)} record(s) in {len(members)} group(s) into train and val; "
                        "need at least 2 groups")
    order = np.random.default_rng(seed).permutation(len(members))
    names = sorted(members)
    target = max(1, round(val_fraction * len(records)))
    val_indices: set[int] = set()
    for position in order:
        if len(val_indices) >= target:
            break
        group = members[names[position]]
        if len(val_indices) + len(group) >= len(records):
            continue  # never move the last training records to val
        val_indices.update(group)
    train = [r for i, r in enumerate(records) if i not in val_indices]
    val = [r for i, r in enumerate(records) if i in val_indices]
    return train, val


def save_split(path: str | os.PathLike, train: Sequence[PairRecord], val: Sequence[PairRecord],
               meta: dict[str, Any] | None = None) -> None:
    """Write ``{"version", "meta", "train": [stems], "val": [stems]}`` as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": SPLIT_VERSION, "meta": meta or {}, "train": [r.stem for r in train],
               "val": [r.stem for r in val]}
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(scratch, path)


def load_split(path: str | os.PathLike, records: Sequence[PairRecord]) -> tuple[list[PairRecord], list[PairRecord]]:
    """Map a saved split back onto ``records`` (matched by stem), in the saved order.

    Raises:
        DataError: unreadable file, duplicate stems in ``records``, or stems the records lack.
    """
    path = Path(path)
    from laworder.config import read_json_file

    payload = read_json_file(path, "split file")
    try:
        train_stems, val_stems = list(payload["train"]), list(payload["val"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable split file ({exc})") from exc
    by_stem = {r.stem: r for r in records}
    if len(by_stem) != len(records):
        raise DataError(f"{path}: the records hold duplicate stems, so a split of stems is ambiguous")
    missing = [s for s in train_stems + val_stems if s not in by_stem]
    if missing:
        raise DataError(f"{path}: {len(missing)} stem(s) of the split are not in the dataset: {missing[:10]}")
    return [by_stem[s] for s in train_stems], [by_stem[s] for s in val_stems]

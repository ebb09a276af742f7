"""What a loaded dataset is: image/mask pair records grouped into a train list and test subsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PairRecord:
    """One image and its mask.

    Attributes:
        stem: file name without extension, shared by image and mask (unique within a list).
        image, mask: the two files.
        subset: the part the pair came from: ``"train"`` or the test-subset name (``"Kvasir"``).
        group: the unit that must stay on one side of a train/val split (a CVC-ClinicDB video
            sequence, a KiTS19 case). ``""`` means the record is a group of its own.
    """

    stem: str
    image: Path
    mask: Path
    subset: str = ""
    group: str = ""


@dataclass
class DatasetCollection:
    """A dataset as loaded by ``laworder.data.load_dataset``.

    Attributes:
        name: a short name for reports (the folder name, or the procedural spec).
        layout: the layout that read it (``pairs``, ``pranet``, ``brisc``, ``kits19``, ``procedural``).
        train: the training pairs (split further into train/val with ``train_val_split``).
        test: test subsets by name, in the layout's canonical order; may be empty.
        labels: declared class names, index = label value (``laworder.data.labels``); ``None``
            for an undeclared (binary) dataset.
    """

    name: str
    layout: str
    train: list[PairRecord]
    test: dict[str, list[PairRecord]] = field(default_factory=dict)
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.train) + sum(len(records) for records in self.test.values())

    def counts(self) -> dict[str, int]:
        """Pairs per part: ``{"train": n, "<subset>": n, ...}``."""
        return {"train": len(self.train), **{name: len(records) for name, records in self.test.items()}}

"""Match the files of an ``images/`` and a ``masks/`` folder by stem.

One scanner serves both the loaders (which raise on the first inconsistent folder) and
``laworder.data.check`` (which reports every problem): neither reads pixels here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from laworder.data.io import list_image_files


def natural_key(text: str) -> tuple:
    """Sort key that orders ``"2"`` before ``"10"`` (frame numbers) and is total on any strings."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in parts)


@dataclass
class FolderScan:
    """Result of matching ``images_dir`` against ``masks_dir``.

    Attributes:
        pairs: ``(stem, image, mask)`` in natural stem order, duplicates excluded.
        images_only / masks_only: files whose stem has no partner in the other folder.
        duplicates: stems with more than one file in one folder (``a.png`` and ``a.jpg``).
        ignored: files skipped because their extension is not an image extension.
        missing_dirs: the folders among the two that do not exist.
    """

    images_dir: Path
    masks_dir: Path
    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    images_only: list[Path] = field(default_factory=list)
    masks_only: list[Path] = field(default_factory=list)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)
    missing_dirs: list[Path] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (self.images_only or self.masks_only or self.duplicates or self.missing_dirs)


def _files_by_stem(folder: Path, scan: FolderScan) -> dict[str, Path]:
    by_stem: dict[str, list[Path]] = {}
    if not folder.is_dir():
        scan.missing_dirs.append(folder)
        return {}
    for path in list_image_files(folder, scan.ignored):
        by_stem.setdefault(path.stem, []).append(path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            scan.duplicates.setdefault(stem, []).extend(paths)
    return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}


def scan_pair_folder(images_dir: Path, masks_dir: Path) -> FolderScan:
    """Match image and mask files by stem (hidden files and sub-folders are skipped)."""
    scan = FolderScan(Path(images_dir), Path(masks_dir))
    images = _files_by_stem(scan.images_dir, scan)
    masks = _files_by_stem(scan.masks_dir, scan)
    duplicated = set(scan.duplicates)
    for stem in sorted(set(images) | set(masks), key=natural_key):
        if stem in duplicated:
            continue
        if stem in images and stem in masks:
            scan.pairs.append((stem, images[stem], masks[stem]))
        elif stem in images:
            scan.images_only.append(images[stem])
        else:
            scan.masks_only.append(masks[stem])
    return scan

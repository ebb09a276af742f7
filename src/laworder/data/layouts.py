"""Dataset layouts: how a folder (or a procedural spec) becomes a :class:`DatasetCollection`.

Layouts (``LAYOUTS``; ``detect_layout`` tries them in this order):

``procedural``
    Not a folder but a spec string ``procedural[:N[:SIZE[:SEED[:TEST[:CLASSES]]]]]`` (defaults
    200, 128, 0, N // 4, 2; CLASSES > 2 makes label maps with CLASSES - 1 lesion kinds). The images are generated once into ``<cache>/procedural/<params>/`` and reused:
    train = images 0..N-1, test subset ``procedural`` = images N..N+TEST-1 (disjoint by
    construction). ``<cache>`` is ``cache_dir``, else ``$LAWORDER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/laworder``, else ``~/.cache/laworder``.
``pranet``
    ``TrainDataset/{image,mask}`` and ``TestDataset/<subset>/{images,masks}`` (either folder
    may be absent; ``image``/``images`` and ``mask``/``masks`` both accepted). CVC-ClinicDB
    frames (numeric stems in ``TrainDataset`` and ``TestDataset/CVC-ClinicDB``) get the group
    ``clinicdb_seq_<k>`` of their video sequence; other training stems are their own group.
``brisc``
    ``{train,test}/{images,masks}``, also under ``segmentation_task/``; test subset ``BRISC``.
``kits19``
    Raw KiTS19 volumes (``case_*/imaging.nii.gz``). Loading converts them once with
    ``prepare_kits19`` (default window) into ``<cache>/kits19/<folder>-<hash>/`` and reads that;
    to choose the window or the output folder, run ``prepare_kits19`` (CLI:
    ``laworder data prepare-kits19``) yourself and load its output (a ``pairs`` folder).
``pairs``
    ``images/`` + ``masks/`` matched by stem; optional ``groups.json`` ``{stem: group}``.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from laworder.data.kits19 import find_kits19_cases, prepare_kits19
from laworder.data.labels import find_labels
from laworder.data.procedural import GENERATOR_VERSION, check_procedural_args, generate_procedural
from laworder.data.records import DatasetCollection, PairRecord
from laworder.data.scan import FolderScan, scan_pair_folder
from laworder.errors import ConfigError, DataError
from laworder.paths import resolve
from laworder.registry import Registry

PRANET_TEST_SUBSETS = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300")
# First frame of each CVC-ClinicDB video sequence 1..29 (inclusive ranges, shared/data/README.md).
CLINICDB_SEQUENCE_STARTS = (1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298, 318,
                            343, 364, 384, 409, 429, 448, 467, 479, 504, 529, 547, 572, 592)
CLINICDB_LAST_FRAME = 612
_PROCEDURAL_SPEC = re.compile(r"^procedural(:\d+){0,5}$")


def clinicdb_group(stem: str) -> str:
    """``clinicdb_seq_<k>`` for a CVC-ClinicDB frame number 1..612, else the stem itself."""
    if not stem.isdigit() or not 1 <= int(stem) <= CLINICDB_LAST_FRAME:
        return stem
    return f"clinicdb_seq_{bisect.bisect_right(CLINICDB_SEQUENCE_STARTS, int(stem))}"


def _no_group(stem: str) -> str:
    return ""


@dataclass
class Part:
    """One ``images/`` + ``masks/`` folder pair of a dataset: the train part or a test subset."""

    subset: str
    images: Path
    masks: Path
    is_test: bool = False
    group_of: Callable[[str], str] = field(default=_no_group)


class Layout:
    """A dataset layout: recognises a source and lists its parts. Subclass + ``@LAYOUTS.register``."""

    detect_priority = 100  # lower is tried first by ``detect_layout``

    def detect(self, source: str) -> bool:
        raise NotImplementedError

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        raise NotImplementedError


LAYOUTS: Registry[Layout] = Registry("dataset layout")


def default_cache_dir() -> Path:
    """``$LAWORDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/laworder``, else ``~/.cache/laworder``."""
    if os.environ.get("LAWORDER_CACHE_DIR"):
        return Path(os.environ["LAWORDER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "laworder"


def _build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Build ``target`` in a temporary sibling and rename it into place (safe for parallel runs)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build(scratch)
        os.rename(scratch, target)
    except OSError:
        if not target.is_dir():  # a concurrent build may have won the rename
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _first_dir(parent: Path, names: tuple[str, ...]) -> Path:
    """The first existing child among ``names`` (else the first name, reported missing later)."""
    return next((parent / n for n in names if (parent / n).is_dir()), parent / names[0])


def _pair_part(root: Path, subset: str, is_test: bool = False, group_of=_no_group) -> Part:
    return Part(subset, _first_dir(root, ("images", "image")), _first_dir(root, ("masks", "mask")), is_test, group_of)


@LAYOUTS.register("procedural")
class ProceduralLayout(Layout):
    """Built-in seeded lesions: 'procedural[:N[:SIZE[:SEED[:TEST]]]]', generated into the cache."""

    detect_priority = 0

    def detect(self, source: str) -> bool:
        return bool(_PROCEDURAL_SPEC.match(source)) and not Path(source).exists()

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        if not _PROCEDURAL_SPEC.match(source):
            raise DataError(f"bad procedural spec {source!r}; expected procedural[:N[:SIZE[:SEED[:TEST[:CLASSES]]]]]")
        values = [int(v) for v in source.split(":")[1:]]
        num_images, size, seed = (values + [200, 128, 0][len(values):])[:3]
        num_test = values[3] if len(values) > 3 else max(num_images // 4, 1)
        classes = values[4] if len(values) > 4 else 2
        if num_images < 1 or num_test < 1:
            raise DataError(f"procedural spec {source!r}: N and TEST must be >= 1")
        if classes < 2:
            raise DataError(f"procedural spec {source!r}: CLASSES (background included) must be >= 2")
        try:  # before the cache folder is made
            check_procedural_args(num_images + num_test, size, seed, classes)
        except ConfigError as exc:
            raise DataError(f"procedural spec {source!r}: {str(exc).removeprefix('procedural: ')}") from None
        name = f"v{GENERATOR_VERSION}_n{num_images}_s{size}_seed{seed}_t{num_test}" + (f"_c{classes}" if classes > 2 else "")

        def build(folder: Path) -> None:
            generate_procedural(folder / "train", num_images, size, seed, num_classes=classes)
            generate_procedural(folder / "test", num_test, size, seed, start_index=num_images, num_classes=classes)

        root = _build_once(Path(cache_dir or default_cache_dir()) / "procedural" / name, build)
        return [_pair_part(root / "train", "train"), _pair_part(root / "test", "procedural", is_test=True)]


@LAYOUTS.register("pranet")
class PraNetLayout(Layout):
    """Polyps as PraNet ships them: TrainDataset/{image,mask}, TestDataset/<subset>/{images,masks}."""

    detect_priority = 10

    def detect(self, source: str) -> bool:
        return (Path(source) / "TrainDataset").is_dir() or (Path(source) / "TestDataset").is_dir()

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        root = Path(source)
        parts = []
        if (root / "TrainDataset").is_dir():
            parts.append(_pair_part(root / "TrainDataset", "train", group_of=clinicdb_group))
        test_root = root / "TestDataset"
        if test_root.is_dir():
            found = [p.name for p in test_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
            known = [name for name in PRANET_TEST_SUBSETS if name in found]
            for name in known + sorted(set(found) - set(known)):
                group_of = clinicdb_group if name == "CVC-ClinicDB" else _no_group
                parts.append(_pair_part(test_root / name, name, is_test=True, group_of=group_of))
        if not parts:
            raise DataError(f"{root}: neither TrainDataset/ nor TestDataset/ found (PraNet layout)")
        return parts


@LAYOUTS.register("brisc")
class BriscLayout(Layout):
    """BRISC 2025: [segmentation_task/]{train,test}/{images,masks}; test subset 'BRISC'."""

    detect_priority = 20

    @staticmethod
    def _root(source: str) -> Path:
        root = Path(source)
        return root / "segmentation_task" if (root / "segmentation_task").is_dir() else root

    def detect(self, source: str) -> bool:
        root = self._root(source)
        return (root / "train" / "images").is_dir() or (root / "test" / "images").is_dir()

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        root = self._root(source)
        parts = [_pair_part(root / "train", "train")] if (root / "train").is_dir() else []
        if (root / "test").is_dir():
            parts.append(_pair_part(root / "test", "BRISC", is_test=True))
        if not parts:
            raise DataError(f"{root}: neither train/ nor test/ found (BRISC layout)")
        return parts


@LAYOUTS.register("kits19")
class Kits19Layout(Layout):
    """KiTS19 volumes (case_*/imaging.nii.gz): tumour slices, prepared once into the cache."""

    detect_priority = 30

    def detect(self, source: str) -> bool:
        return Path(source).is_dir() and bool(find_kits19_cases(source))

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        src = resolve(source)
        digest = hashlib.sha1(str(src).encode()).hexdigest()[:8]
        target = Path(cache_dir or default_cache_dir()) / "kits19" / f"{src.name}-{digest}"
        if target.is_dir():
            try:  # returns at once when the cached preparation matches the current cases
                prepare_kits19(src, target)
            except DataError as exc:
                raise DataError(f"{exc}\nThe KiTS19 cache {target} is stale: delete it to convert again.") from exc
        root = _build_once(target, lambda folder: prepare_kits19(src, folder))
        return PairsLayout().parts(str(root))


@LAYOUTS.register("pairs")
class PairsLayout(Layout):
    """Generic pair folder: images/ + masks/ matched by stem; optional groups.json {stem: group}."""

    detect_priority = 90

    def detect(self, source: str) -> bool:
        root = Path(source)
        return (root / "images").is_dir() or (root / "masks").is_dir()

    def parts(self, source: str, cache_dir: Path | None = None) -> list[Part]:
        root = Path(source)
        groups = self._groups(root / "groups.json")
        return [_pair_part(root, "train", group_of=lambda stem: groups.get(stem, ""))]

    @staticmethod
    def _groups(path: Path) -> dict[str, str]:
        if not path.is_file():
            return {}
        from laworder.config import read_json_file

        groups = read_json_file(path, "groups file")
        if not isinstance(groups, dict) or not all(isinstance(v, str) for v in groups.values()):
            raise DataError(f"{path}: groups.json must map each stem to a group name (string)")
        return groups


def detect_layout(path: str | os.PathLike) -> str:
    """Name of the first layout (by priority) that recognises ``path``.

    Raises:
        DataError: ``path`` is missing or matches no layout (the message lists what was found).
    """
    source = str(path)
    for name in sorted(LAYOUTS.names(), key=lambda n: LAYOUTS.create(n).detect_priority):
        if LAYOUTS.create(name).detect(source):
            return name
    if not Path(source).exists():
        raise DataError(f"dataset not found: {source} (not a folder, not a procedural spec)")
    entries = sorted(p.name for p in Path(source).iterdir())[:20] if Path(source).is_dir() else []
    raise DataError(
        f"{source}: no known dataset layout; found {entries}. Expected images/+masks/ (pairs), "
        "TrainDataset/ or TestDataset/ (pranet), [segmentation_task/]train/images (brisc), "
        "case_*/imaging.nii.gz (kits19), or a 'procedural[:N[:SIZE[:SEED[:TEST]]]]' spec"
    )


def resolve_parts(path: str | os.PathLike, layout: str = "auto", cache_dir: str | os.PathLike | None = None
                  ) -> tuple[str, list[Part]]:
    """``(layout name, parts)`` of a dataset, without reading any file list."""
    source = str(path)
    name = detect_layout(source) if layout == "auto" else layout
    handler = LAYOUTS.create(name)
    if name != "procedural" and not Path(source).is_dir():
        raise DataError(f"dataset folder not found: {source}")
    return name, handler.parts(source, Path(cache_dir) if cache_dir else None)


def _listing(paths, limit: int = 10) -> str:
    names = [str(p) for p in paths]
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def scan_messages(scan: FolderScan) -> list[str]:
    """One line per kind of inconsistency in ``scan`` (the loader's error text)."""
    messages = [f"folder missing: {folder}" for folder in scan.missing_dirs]
    if scan.images_only:
        messages.append(f"{len(scan.images_only)} image(s) without a mask in {scan.masks_dir}: "
                        f"{_listing(scan.images_only)}")
    if scan.masks_only:
        messages.append(f"{len(scan.masks_only)} mask(s) without an image in {scan.images_dir}: "
                        f"{_listing(scan.masks_only)}")
    for stem, paths in scan.duplicates.items():
        messages.append(f"stem {stem!r} has several files: {_listing(paths)}")
    if not scan.missing_dirs and not scan.pairs:
        messages.append(f"no image/mask pairs in {scan.images_dir} and {scan.masks_dir}")
    return messages


def load_dataset(path: str | os.PathLike, layout: str = "auto", cache_dir: str | os.PathLike | None = None
                 ) -> DatasetCollection:
    """Read a dataset's file lists (no pixels) into a :class:`DatasetCollection`.

    Args:
        path: a dataset folder, or a ``procedural[:N[:SIZE[:SEED[:TEST]]]]`` spec.
        layout: a name in ``LAYOUTS`` or ``"auto"`` (``detect_layout``).
        cache_dir: where generated / converted data go (procedural, kits19); see the module doc.

    Raises:
        DataError: missing folders, unmatched stems (listed), duplicate stems, or an empty part.
            ``laworder.data.check_dataset`` reports every problem, pixels included.
    """
    name, parts = resolve_parts(path, layout, cache_dir)
    train: list[PairRecord] = []
    test: dict[str, list[PairRecord]] = {}
    problems: list[str] = []
    for part in parts:
        scan = scan_pair_folder(part.images, part.masks)
        problems += scan_messages(scan)
        records = [PairRecord(stem, image, mask, part.subset, part.group_of(stem)) for stem, image, mask in scan.pairs]
        if part.is_test:
            test[part.subset] = records
        else:
            train.extend(records)
    if problems:
        details = "\n".join(f"  - {line}" for line in problems)
        raise DataError(f"{path} ({name} layout) is inconsistent:\n{details}\n"
                        f"Run `laworder data check {path}` for a full report.")
    label = str(path) if name == "procedural" else resolve(path).name
    declared = find_labels(label_folders(path, parts))
    return DatasetCollection(name=label, layout=name, train=train, test=test,
                             labels=declared[0] if declared else None)


def label_folders(path: str | os.PathLike, parts: list[Part]) -> list[Path]:
    """Where a dataset may declare its classes: its root, then each part's folder."""
    folders = [Path(path)] if Path(path).is_dir() else []
    for part in parts:
        if part.masks.parent not in folders:
            folders.append(part.masks.parent)
    return folders

"""Write a real (+ synthetic) dataset as an nnU-Net v2 raw dataset, and check it as nnU-Net does.

Layout written (nnU-Net v2 ``documentation/dataset_format.md``; natural 2D images follow its
``Dataset120_RoadSegmentation`` example: one RGB PNG per case as channel ``0000`` with
``channel_names`` ``{"0": "R", "1": "G", "2": "B"}``)::

    <out_root>/Dataset501_Polyps/
      dataset.json                 channel_names, labels {background: 0, lesion: 1} (or the dataset's
                                   declared classes, laworder.data.labels), numTraining, file_ending
      imagesTr/<case>_0000.png     RGB (or grayscale with channels=1), no alpha
      labelsTr/<case>.png          8-bit grayscale, values 0/1 (0..K-1 for K declared classes)
      imagesTs/, labelsTs/         the dataset's test subsets (<subset>_<stem>), unused by nnU-Net training
      laworder_splits_final.json   5 folds whose validation cases are real only (see below)

Synthetic cases (``extra`` pools) are named ``syn_<stem>`` (``syn_<k>_<stem>`` with several
pools). nnU-Net's default 5-fold cross-validation would also validate on synthetic cases; the
paper's protocol validates on real images only, so ``laworder_splits_final.json`` holds folds
whose ``val`` lists are real cases (groups such as CVC-ClinicDB sequences kept together) and
whose ``train`` lists add every synthetic case. Copy it to
``$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` after ``nnUNetv2_plan_and_preprocess``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laworder.data.dataset import load_pair
from laworder.data.io import open_image, write_image
from laworder.data.labels import is_multiclass
from laworder.data.layouts import load_dataset
from laworder.data.records import PairRecord
from laworder.errors import ConfigError, DataError, RunDirError

FILE_ENDING = ".png"
# what an export writes into Dataset{id}_{name} (an earlier export's entries are replaced, nothing else)
DATASET_ENTRIES = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json", "laworder_splits_final.json",
                   "skipped.json")
LABELS = {"background": 0, "lesion": 1}
CHANNEL_NAMES = {3: {"0": "R", "1": "G", "2": "B"}, 1: {"0": "gray"}}
SYNTHETIC_PREFIX = "syn_"
REQUIRED_KEYS = ("labels", "channel_names", "numTraining", "file_ending")
LOSSLESS_ENDINGS = (".png", ".bmp", ".tif")  # nnU-Net's NaturalImage2DIO endings
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Case:
    case_id: str
    record: PairRecord
    source: str  # "real", a pool folder, or "test:<subset>"


def _case_id(prefix: str, stem: str) -> str:
    return prefix + _UNSAFE.sub("_", stem)


def _unique_cases(cases: list[Case], where: str) -> list[Case]:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise DataError(f"{where}: {case.record.image} and {seen[case.case_id].record.image} both map to "
                            f"nnU-Net case {case.case_id!r}; rename one of them")
        seen[case.case_id] = case
    return cases


def _pool_cases(extra: list[str], extra_limit: int | None) -> list[Case]:
    cases = []
    for index, pool in enumerate(extra, start=1):
        prefix = SYNTHETIC_PREFIX if len(extra) == 1 else f"{SYNTHETIC_PREFIX}{index}_"
        cases += [Case(_case_id(prefix, r.stem), r, str(pool)) for r in load_dataset(pool, "auto").train]
    if extra_limit is not None:
        if extra_limit > len(cases):
            raise DataError(f"extra_limit={extra_limit} is larger than the extra pool ({len(cases)} pairs in {extra})")
        cases = cases[:extra_limit]
    return cases


def _write_case(case: Case, images_dir: Path, labels_dir: Path, channels: int, image_size: int | None,
                num_classes: int = 2) -> None:
    image, mask = load_pair(case.record, image_size, channels, num_classes)
    write_image(images_dir / f"{case.case_id}_0000{FILE_ENDING}", image)  # H×W×3 RGB or H×W grey, no alpha
    write_image(labels_dir / f"{case.case_id}{FILE_ENDING}", mask.astype(np.uint8))  # values 0/1, or 0..K-1


def real_only_folds(real: list[Case], synthetic: list[Case], num_folds: int = 5, seed: int = 0) -> list[dict]:
    """nnU-Net ``splits_final.json`` folds: validation real only, groups kept together, synthetic always in train."""
    groups: dict[str, list[str]] = {}
    for case in real:
        groups.setdefault(case.record.group or case.case_id, []).append(case.case_id)
    order = np.random.default_rng(seed).permutation(sorted(groups))
    folds: list[list[str]] = [[] for _ in range(min(num_folds, max(len(groups), 1)))]
    for group in sorted(order, key=lambda g: -len(groups[g])):  # largest groups first, into the emptiest fold
        min(folds, key=len).extend(groups[group])
    synthetic_ids = [case.case_id for case in synthetic]
    return [{"train": sorted(c for other in folds if other is not fold for c in other) + synthetic_ids,
             "val": sorted(fold)} for fold in folds]


def export_nnunet_dataset(real: str, out_root: str | Path, dataset_id: int, name: str, extra: list[str] | tuple[str, ...] = (),
                          extra_limit: int | None = None, layout: str = "auto", channels: int = 3,
                          image_size: int | None = None, include_test: bool = True, overwrite: bool = False,
                          skip_unreadable: bool = False) -> Path:
    """Write ``real`` (+ ``extra`` synthetic pools) as ``<out_root>/Dataset{id:03d}_{name}``; returns that folder.

    Args:
        real: the real dataset (any ``laworder.data.load_dataset`` layout or a procedural spec).
            Its training pairs go to ``imagesTr``/``labelsTr``, its test subsets to
            ``imagesTs``/``labelsTs`` (unless ``include_test=False``).
        out_root: the ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id, 1..999 (custom datasets usually start at 500).
        name: dataset name (letters, digits, ``_`` and ``-``).
        extra: synthetic pool folders (pair folders, e.g. from ``laworder synth sample``), added to
            the training cases as ``syn_<stem>``.
        extra_limit: use only the first ``extra_limit`` synthetic pairs (over all pools).
        channels: 3 writes RGB PNGs (channel_names R, G, B), 1 grayscale (channel_names gray).
        image_size: resize images (bilinear) and labels (nearest) to a square size; ``None`` keeps sizes.
        overwrite: replace an existing dataset folder.
        skip_unreadable: leave out pairs whose image or mask cannot be read (listed in the dataset
            folder's ``skipped.json``) instead of stopping; every pair is read before anything is written.

    Raises:
        ConfigError: bad id, name or channels. RunDirError: the folder exists (without ``overwrite``).
        DataError: unreadable or inconsistent pairs, clashing case names, ``extra_limit`` above the
            pool size, or a written folder that fails :func:`verify_nnunet_dataset`.
    """
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConfigError(f"nnU-Net dataset ids are integers in 1..999, got {dataset_id!r}")
    if not _NAME.match(name or ""):
        raise ConfigError(f"dataset name must be letters, digits, '_' or '-' (no spaces), got {name!r}")
    if channels not in CHANNEL_NAMES:
        raise ConfigError(f"channels must be 3 (RGB) or 1 (grayscale), got {channels}")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
        raise ConfigError(f"image_size must be a positive integer (or None to keep sizes), got {image_size!r}")
    if image_size is not None:
        from laworder.resources import check_fits

        check_fits(f"image_size: one case at {image_size}×{image_size}", (channels + 1) * image_size ** 2,
                   "Lower --image-size")
    folder = Path(out_root) / f"Dataset{dataset_id:03d}_{name}"
    if Path(out_root).exists() and not Path(out_root).is_dir():
        raise RunDirError(f"nnUNet_raw folder {out_root} is a file; choose a folder path")
    from laworder.outputs import OutputFolder

    sources = {"the real dataset": [] if str(real).startswith("procedural") else [real], "--extra": list(extra)}
    output = OutputFolder(folder, DATASET_ENTRIES, overwrite, what="dataset", inputs=sources, kind="export nnunet",
                          hint="pass overwrite=True (--overwrite) to replace an earlier export")
    output.check()

    collection = load_dataset(real, layout)
    real_cases = [Case(_case_id("", r.stem), r, "real") for r in collection.train]
    synthetic = _pool_cases(list(extra), extra_limit)
    training = _unique_cases(real_cases + synthetic, str(real))
    if not training:
        raise DataError(f"{real}: no training pairs to export")
    test_cases = [Case(_case_id(f"{subset}_", r.stem), r, f"test:{subset}")
                  for subset, records in collection.test.items() for r in records] if include_test else []
    _unique_cases(test_cases, f"{real} test subsets")
    # every pair read before the folder is touched
    from laworder.data.io import read_image, read_mask
    from laworder.data.precheck import readable_inputs, write_skipped

    def read_pair(case: Case) -> None:
        read_image(case.record.image, channels)
        read_mask(case.record.mask)

    _, skipped = readable_inputs(training + test_cases, read_pair, skip_unreadable, what="pairs",
                                 key=lambda case: case.case_id)
    bad = set(skipped)
    training = [case for case in training if case.case_id not in bad]
    real_cases = [case for case in real_cases if case.case_id not in bad]
    synthetic = [case for case in synthetic if case.case_id not in bad]
    test_cases = [case for case in test_cases if case.case_id not in bad]
    output.inputs["pair"] = sorted({Path(p).parent for case in training + test_cases
                                    for p in (case.record.image, case.record.mask)})
    output.check()  # the pairs' own folders too (a dataset given by a file list or a layout elsewhere)
    # The dataset's declared classes (laworder.data.labels) become nnU-Net's labels; binary: background/lesion.
    names = collection.labels if is_multiclass(collection.labels) else list(LABELS)
    if is_multiclass(names):
        for pool in extra:
            if load_dataset(pool, "auto").labels != names:
                raise DataError(f"extra pool {pool} does not declare the classes {names} of {real}")
    from laworder.outputs import write_json_atomic

    with output:  # the folder's earlier export (its manifest) moved aside, put back if this one fails
        write_skipped(folder, skipped)
        for case in training:
            _write_case(case, folder / "imagesTr", folder / "labelsTr", channels, image_size, len(names))
        for case in test_cases:
            _write_case(case, folder / "imagesTs", folder / "labelsTs", channels, image_size, len(names))
        dataset_json = {
            "channel_names": CHANNEL_NAMES[channels],
            "labels": {name: value for value, name in enumerate(names)},
            "numTraining": len(training),
            "file_ending": FILE_ENDING,
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "name": name,
            "description": f"exported by laworder from {real}" + (f" + synthetic pools {list(extra)}" if extra else ""),
            "laworder": {
                "real": str(real), "extra": [str(p) for p in extra], "extra_limit": extra_limit,
                "num_real": len(real_cases), "num_synthetic": len(synthetic), "num_test": len(test_cases),
                "synthetic_prefix": SYNTHETIC_PREFIX, "image_size": image_size,
                "splits": "laworder_splits_final.json (validation real only)",
            },
        }
        write_json_atomic(folder / "dataset.json", dataset_json)
        write_json_atomic(folder / "laworder_splits_final.json", real_only_folds(real_cases, synthetic))
        problems = verify_nnunet_dataset(folder)
        if problems:
            raise DataError(f"{folder} fails nnU-Net's dataset checks:\n" + "\n".join(f"  - {p}" for p in problems))
    return folder


# --- checks ------------------------------------------------------------------------------------
def _read_channels(path: Path) -> tuple[np.ndarray, int]:
    """``(pixels H×W[×C], number of channels)`` the way nnU-Net's NaturalImage2DIO counts them."""
    pixels = np.asarray(open_image(path))
    if pixels.ndim == 3:
        return pixels, int(pixels.shape[2])
    return pixels, 1


def _check_case(case_id: str, image_files: list[Path], label_file: Path, num_channels: int,
                label_values: set[int]) -> list[str]:
    problems = []
    arrays = [_read_channels(f) for f in image_files]
    channels = sum(count for _, count in arrays)
    if channels != num_channels:
        problems.append(f"case {case_id}: {channels} image channels in {[f.name for f in image_files]}, "
                        f"dataset.json channel_names lists {num_channels}")
    if any(pixels.ndim == 3 and pixels.shape[2] not in (3, 4) for pixels, _ in arrays):
        problems.append(f"case {case_id}: a 3-D image must be RGB(A), got shapes {[p.shape for p, _ in arrays]}")
    label = np.asarray(open_image(label_file))
    if label.ndim != 2:
        problems.append(f"case {case_id}: label {label_file.name} must be a single-channel image, got shape {label.shape}")
        return problems
    shapes = {pixels.shape[:2] for pixels, _ in arrays}
    if shapes != {label.shape}:
        problems.append(f"case {case_id}: image shape(s) {sorted(shapes)} differ from label shape {label.shape}")
    unexpected = sorted(set(np.unique(label).tolist()) - label_values)
    if unexpected:
        problems.append(f"case {case_id}: label values {unexpected} not in dataset.json labels {sorted(label_values)}")
    return problems


def verify_nnunet_dataset(folder: str | Path) -> list[str]:
    """The checks of nnU-Net v2's ``verify_dataset_integrity`` on a raw dataset folder.

    Returns every problem found (empty = the folder passes): required ``dataset.json`` keys,
    ``imagesTr``/``labelsTr`` present, image names ``<case>_XXXX<file_ending>``, ``numTraining``
    equal to the number of cases, a label for every case and images for every label, consecutive
    labels starting at background 0, per case the channel count of ``channel_names`` (an RGB PNG
    counts 3), equal image/label shapes and label values within ``labels``.
    """
    folder = Path(folder)
    path = folder / "dataset.json"
    if not path.is_file():
        return [f"{path} is missing"]
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        return [f"{path}: not valid JSON ({exc})"]
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        return [f"{path}: required key(s) {missing} missing (required: {list(REQUIRED_KEYS)})"]
    problems = [f"{folder / sub} is missing" for sub in ("imagesTr", "labelsTr") if not (folder / sub).is_dir()]
    if problems:
        return problems
    ending = meta["file_ending"]
    if ending not in LOSSLESS_ENDINGS:
        problems.append(f"file_ending {ending!r}: nnU-Net needs lossless 2D files {list(LOSSLESS_ENDINGS)}")
    label_values = sorted(int(v) for v in meta["labels"].values())
    if not label_values or label_values[0] != 0 or np.any(np.diff(label_values) != 1):
        problems.append(f"labels must be consecutive integers starting at background 0, got {meta['labels']}")

    image_pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, list[Path]] = {}
    for file in sorted((folder / "imagesTr").iterdir()):
        if not file.name.endswith(ending):
            continue
        match = image_pattern.match(file.name)
        if not match:
            problems.append(f"imagesTr/{file.name}: image names must end in _XXXX{ending} (4-digit channel index)")
            continue
        cases.setdefault(match.group(1), []).append(file)
    labels = {f.name[: -len(ending)] for f in (folder / "labelsTr").iterdir() if f.name.endswith(ending)}
    if meta["numTraining"] != len(cases):
        problems.append(f"numTraining is {meta['numTraining']} but imagesTr holds {len(cases)} cases")
    if sorted(set(cases) - labels):
        problems.append(f"cases without a label in labelsTr: {sorted(set(cases) - labels)[:10]}")
    if sorted(labels - set(cases)):
        problems.append(f"labels without images in imagesTr: {sorted(labels - set(cases))[:10]}")
    num_channels = len(meta["channel_names"])
    for case_id, files in cases.items():
        if case_id in labels:
            problems += _check_case(case_id, files, folder / "labelsTr" / f"{case_id}{ending}", num_channels, set(label_values))
    return problems

"""KiTS19 NIfTI volumes -> a pair folder of axial tumour slices.

Input: the KiTS19 release (``case_00000/imaging.nii.gz`` + ``segmentation.nii.gz``, either
directly in the folder or under ``data/`` as in the kits19 repository). Labels: 0 background,
1 kidney, 2 tumour. Cases without a segmentation (the KiTS19 test cases 210-299) are skipped.

Output: ``images/case_00012_z045.png`` (8-bit grayscale), ``masks/...png`` (0/255 tumour; with
``keep_kidney`` label maps 0 background / 1 kidney / 2 tumour declared in ``labels.json``),
``groups.json`` (stem -> case id, so splits keep a case on one side) and ``prepared.json``.

Intensity: HU clipped to ``window`` and scaled linearly to 0..255. The default (-79, 304) is the
0.5 / 99.5 percentile HU range of the KiTS19 foreground that nnU-Net clips CT to for this dataset
(Isensee et al., KiTS19 challenge submission).

Orientation: the axial axis is the voxel axis the affine maps closest to superior-inferior
(``nibabel.aff2axcodes``; for KiTS19 that is axis 0). Slices are shown in radiological view:
anterior at the top, the patient's right on the image's left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from laworder.data.io import write_image, write_mask
from laworder.data.labels import write_labels
from laworder.errors import DataError

KITS19_WINDOW = (-79.0, 304.0)
TUMOUR_LABEL = 2
KITS19_LABELS = ("background", "kidney", "tumour")  # label values 0, 1, 2 with keep_kidney
PREPARE_VERSION = 1


def find_kits19_cases(src: str | os.PathLike) -> list[Path]:
    """Case folders (``case_*`` holding ``imaging.nii[.gz]``) in ``src`` or ``src/data``."""
    src = Path(src)
    for root in (src, src / "data"):
        cases = sorted(p for p in root.glob("case_*") if p.is_dir() and _volume_file(p, "imaging"))
        if cases:
            return cases
    return []


def _volume_file(case_dir: Path, name: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (case_dir / f"{name}{suffix}").is_file():
            return case_dir / f"{name}{suffix}"
    return None


def _load(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for a bad file
        raise DataError(f"{path}: unreadable NIfTI file ({exc})") from exc


def _view_axes(affine: np.ndarray, axis: int | None) -> tuple[int, int, int, bool, bool]:
    """(axial, row, column, flip_rows, flip_columns) voxel axes for radiological axial slices."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    if axis is None:
        axis = next(i for i, code in enumerate(codes) if code in ("S", "I"))
    in_plane = [i for i in range(3) if i != axis]
    row = next((i for i in in_plane if codes[i] in ("A", "P")), in_plane[0])
    column = next(i for i in in_plane if i != row)
    return axis, row, column, codes[row] == "A", codes[column] == "R"


def _axial_slice(volume: np.ndarray, z: int, axes: tuple[int, int, int, bool, bool]) -> np.ndarray:
    axial, row, column, flip_rows, flip_columns = axes
    plane = np.take(volume, z, axis=axial)
    # ``np.take`` keeps the remaining axes in order; transpose when the row axis came second.
    if row > column:
        plane = plane.T
    if flip_rows:
        plane = plane[::-1]
    if flip_columns:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane)


def window_to_uint8(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to ``window`` (HU) and map linearly to 0..255."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"window must be (low, high) with low < high, got {window}")
    scaled = (np.clip(hu.astype(np.float32), low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def _prepare_case(case_dir: Path, dst: Path, window, tumour_label: int, min_tumour_pixels: int,
                  axis: int | None, keep_kidney: bool = False) -> list[str]:
    imaging = _load(_volume_file(case_dir, "imaging"))
    segmentation = _load(_volume_file(case_dir, "segmentation"))
    if imaging.shape != segmentation.shape:
        raise DataError(f"{case_dir}: imaging shape {imaging.shape} != segmentation shape {segmentation.shape}")
    if len(imaging.shape) != 3:
        raise DataError(f"{case_dir}: expected 3-D volumes, got shape {imaging.shape}")
    axes = _view_axes(segmentation.affine, axis)
    labels = np.asanyarray(segmentation.dataobj)
    tumour = labels == tumour_label
    per_slice = tumour.sum(axis=tuple(i for i in range(3) if i != axes[0]))
    slices = np.flatnonzero(per_slice >= min_tumour_pixels)
    if slices.size == 0:
        return []
    # Read only the slab holding tumour: a whole KiTS19 volume can take over 1 GB as floats.
    slab = [slice(None)] * 3
    slab[axes[0]] = slice(int(slices[0]), int(slices[-1]) + 1)
    volume = np.asanyarray(imaging.dataobj[tuple(slab)])
    stems = []
    for z in slices:
        stem = f"{case_dir.name}_z{z:03d}"
        hu = _axial_slice(volume, int(z - slices[0]), axes)
        write_image(dst / "images" / f"{stem}.png", window_to_uint8(hu, window))
        if keep_kidney:  # 0 background, 1 kidney, 2 tumour (KITS19_LABELS); other values -> background
            label_map = _axial_slice(labels, z, axes)
            kidney = (label_map > 0) & (label_map != tumour_label)
            write_image(dst / "masks" / f"{stem}.png",
                        np.where(label_map == tumour_label, 2, np.where(kidney, 1, 0)).astype(np.uint8))
        else:
            write_mask(dst / "masks" / f"{stem}.png", _axial_slice(tumour, z, axes))
        stems.append(stem)
    return stems


def prepare_kits19(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    window: tuple[float, float] = KITS19_WINDOW,
    tumour_label: int = TUMOUR_LABEL,
    min_tumour_pixels: int = 1,
    cases: list[str] | None = None,
    axis: int | None = None,
    keep_kidney: bool = False,
) -> Path:
    """Convert KiTS19 volumes in ``src`` into a pair folder ``dst`` of tumour slices.

    Args:
        src: the KiTS19 folder (``case_*/`` directly or under ``data/``).
        dst: output folder; must be absent or empty. If it already holds a preparation with the
            same parameters (``prepared.json``), it is returned unchanged.
        window: HU clipping range mapped to 0..255 (default: nnU-Net's KiTS19 CT range).
        tumour_label: label value that is the lesion (KiTS19: 2).
        min_tumour_pixels: keep an axial slice when it has at least this many tumour pixels.
        cases: case folder names to convert (default: all with a segmentation).
        axis: voxel axis to slice along (default: from the affine, see the module docstring).
        keep_kidney: write label maps (0 background, 1 kidney, 2 tumour) and their
            ``labels.json`` instead of binary tumour masks; slices are still those with tumour.

    Returns:
        ``dst``, loadable with ``load_dataset(dst)`` (the ``pairs`` layout, grouped by case).

    Raises:
        DataError: no cases, unreadable volumes, shape mismatch, or a non-empty ``dst``.
    """
    src, dst = Path(src), Path(dst)
    found = find_kits19_cases(src)
    if not found:
        raise DataError(f"{src}: no KiTS19 cases (case_*/imaging.nii.gz) found here or under data/")
    if cases is not None:
        missing = sorted(set(cases) - {p.name for p in found})
        if missing:
            raise DataError(f"{src}: cases not found: {missing}")
        found = [p for p in found if p.name in set(cases)]
    meta = {"prepare_version": PREPARE_VERSION, "source": str(src.resolve()), "window": list(map(float, window)),
            "tumour_label": tumour_label, "min_tumour_pixels": min_tumour_pixels,
            "cases": [p.name for p in found], "axis": axis}
    if keep_kidney:  # only then, so binary preparations cached before this option stay valid
        meta["keep_kidney"] = True
    meta_path = dst / "prepared.json"
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text())
        if {k: previous.get(k) for k in meta} == meta and previous.get("keep_kidney", False) == keep_kidney:
            return dst
    if dst.exists() and any(dst.iterdir()):
        raise DataError(f"{dst}: output folder is not empty; choose a new folder for prepare_kits19")

    groups: dict[str, str] = {}
    skipped = []
    for case_dir in found:
        if _volume_file(case_dir, "segmentation") is None:
            skipped.append(case_dir.name)
            continue
        for stem in _prepare_case(case_dir, dst, window, tumour_label, min_tumour_pixels, axis, keep_kidney):
            groups[stem] = case_dir.name
    if not groups:
        raise DataError(f"{src}: no axial slice with tumour label {tumour_label} in {len(found)} case(s)")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "groups.json").write_text(json.dumps(groups, indent=1) + "\n")
    if keep_kidney:
        write_labels(dst, list(KITS19_LABELS))
    meta.update(slices=len(groups), skipped_without_segmentation=skipped)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return dst

"""nnU-Net-style dataset check: find every problem at once, before training starts.

Errors (``ensure_valid`` refuses the dataset): ``missing_folder``, ``unmatched_image``,
``unmatched_mask``, ``duplicate_stem``, ``unreadable``, ``size_mismatch``, ``not_binary``,
``empty_dataset``, ``layout``, ``non_finite`` (a float image or mask with NaN / inf pixels), ``undeclared_label`` (a multi-class mask holding a value that
``labels.json`` / ``dataset.json`` does not declare; see ``laworder.data.labels``).
Warnings (reported, allowed): ``empty_mask`` (allowed for training), ``low_mask_values`` (a mask
whose maximum lies in 2..127, e.g. a label map: all of it reads as background), ``ignored_file``,
``exif_orientation`` (the file carries an EXIF rotation; it is read rotated, as a viewer shows it,
and sizes are compared after it).

Cost: every mask and every image is decoded fully (so truncated JPEG/PNG files are found), on a
few threads (Pillow releases the GIL while decoding). ``decode_images=False`` reads only the
image headers (size) and is about twice as fast on the polyp set.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from laworder.data.io import NonFinitePixelsError, mask_levels, open_image, orientation, oriented_size
from laworder.data.labels import find_labels, is_multiclass, read_label_map
from laworder.data.layouts import label_folders, resolve_parts
from laworder.data.scan import scan_pair_folder
from laworder.errors import DataError

# A mask is "not binary" when more than this fraction of its pixels lies strictly between the
# two bands below. Measured on the shared data, fraction in (10, 245): real masks at most 8 %
# (CVC-ClinicDB, anti-aliased rims; Kvasir-SEG JPEG masks and BRISC 0 %), real images at least
# 24 % (dark BRISC MRI slices; polyp frames >= 54 %). 15 % sits between the two.
NOT_BINARY_FRACTION = 0.15
BINARY_BANDS = (10, 245)
WARNING_KINDS = frozenset({"empty_mask", "low_mask_values", "ignored_file", "exif_orientation"})
ORIENTATION_NAMES = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "mirrored and rotated 90°",
                     6: "rotated 90°", 7: "mirrored and rotated 270°", 8: "rotated 270°"}


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` (see the module doc), the file or folder, and what is wrong."""

    kind: str
    path: str
    message: str

    @property
    def level(self) -> str:
        return "warning" if self.kind in WARNING_KINDS else "error"


@dataclass
class CheckReport:
    """All problems of a dataset plus a summary (pair counts, sizes, lesion-area statistics)."""

    source: str
    layout: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """Human-readable report: verdict, every problem grouped by kind, then the summary."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [f"dataset check {verdict}: {self.source} ({self.layout} layout): "
                 f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        for kind in sorted({p.kind for p in self.problems}, key=lambda k: (k in WARNING_KINDS, k)):
            found = [p for p in self.problems if p.kind == kind]
            lines.append(f"{found[0].level} {kind} ({len(found)}):")
            lines += [f"  {p.path}: {p.message}" for p in found]
        for part, stats in self.summary.get("parts", {}).items():
            area = stats.get("lesion_area")
            area_text = (f", lesion area mean {area['mean']:.2%} (min {area['min']:.2%}, median {area['median']:.2%}, "
                         f"max {area['max']:.2%}, {area['below_10_percent']:.0%} below 10 %)") if area else ""
            lines.append(f"  {part}: {stats['pairs']} pairs, {stats['empty_masks']} empty masks{area_text}")
        if "seconds" in self.summary:
            lines.append(f"  checked in {self.summary['seconds']:.1f} s")
        return "\n".join(lines)


def _check_label_map(mask_path: Path, labels: list[str], declared_in: Path, info: dict) -> list[Problem]:
    """A multi-class mask: every value must be a declared class (0..K-1)."""
    try:
        values = read_label_map(mask_path)
    except DataError as exc:
        return [Problem("unreadable", str(mask_path), str(exc).removeprefix(f"{mask_path}: "))]
    problems = []
    mask_size = (values.shape[1], values.shape[0])
    if "image_size" in info and info["image_size"] != mask_size:
        problems.append(Problem("size_mismatch", str(mask_path),
                                f"mask is {mask_size[0]}×{mask_size[1]} but the image is "
                                f"{info['image_size'][0]}×{info['image_size'][1]} (W×H)"))
    present = np.unique(values)
    undeclared = [int(v) for v in present if v >= len(labels)]
    if undeclared:
        problems.append(Problem("undeclared_label", str(mask_path),
                                f"label value(s) {undeclared} not declared in {declared_in} "
                                f"(declared: {', '.join(f'{i}={n}' for i, n in enumerate(labels))})"))
    info["lesion_area"] = float(np.mean(values > 0))
    if info["lesion_area"] == 0.0:
        problems.append(Problem("empty_mask", str(mask_path), "no lesion pixel (allowed for training)"))
    return problems


def _check_pair(image_path: Path, mask_path: Path, decode_images: bool,
                labels: tuple[list[str], Path] | None = None) -> tuple[list[Problem], dict]:
    problems: list[Problem] = []
    info: dict = {}
    try:
        with open_image(image_path, decode=False) as image:
            if decode_images:
                image.load()  # truncation shows here; a PNG's EXIF block may follow its pixels
                if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
                    bad = int(np.count_nonzero(~np.isfinite(np.asarray(image))))
                    problems.append(Problem("non_finite", str(image_path), f"{bad} NaN/infinite pixel(s) in a float "
                                            "image; training refuses it (replace them and save again)"))
            turn = orientation(image)
            info["image_size"] = oriented_size(image)  # (W, H) as read: after an EXIF rotation
        if turn != 1:
            problems.append(Problem("exif_orientation", str(image_path), f"EXIF orientation {turn} "
                                    f"({ORIENTATION_NAMES[turn]}): read as shown, {info['image_size'][0]}×"
                                    f"{info['image_size'][1]} (W×H)"))
    except (DataError, OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc).removeprefix(f"{image_path}: ")
        if not isinstance(exc, DataError):
            message = f"unreadable or truncated image file ({exc})"
        problems.append(Problem("unreadable", str(image_path), message))
    if labels is not None and is_multiclass(labels[0]):
        return problems + _check_label_map(mask_path, labels[0], labels[1], info), info
    try:
        with open_image(mask_path, decode=False) as mask_image:
            turn = orientation(mask_image)
        if turn != 1:
            problems.append(Problem("exif_orientation", str(mask_path), f"EXIF orientation {turn} "
                                    f"({ORIENTATION_NAMES[turn]}): read as shown, like its image"))
        levels = mask_levels(mask_path)
    except NonFinitePixelsError as exc:
        problems.append(Problem("non_finite", str(mask_path), str(exc).removeprefix(f"{mask_path}: ")))
        return problems, info
    except DataError as exc:
        problems.append(Problem("unreadable", str(mask_path), str(exc).removeprefix(f"{mask_path}: ")))
        return problems, info
    mask_size = (levels.shape[1], levels.shape[0])
    if "image_size" in info and info["image_size"] != mask_size:
        problems.append(Problem("size_mismatch", str(mask_path),
                                f"mask is {mask_size[0]}×{mask_size[1]} but image {image_path.name} is "
                                f"{info['image_size'][0]}×{info['image_size'][1]} (W×H)"))
    between = float(np.mean((levels > BINARY_BANDS[0]) & (levels < BINARY_BANDS[1])))
    if between > NOT_BINARY_FRACTION:
        problems.append(Problem("not_binary", str(mask_path),
                                f"{between:.0%} of pixels lie strictly between {BINARY_BANDS[0]} and "
                                f"{BINARY_BANDS[1]}: looks like a photo, not a mask"))
        return problems, info
    peak = int(levels.max())
    area = float(np.mean(levels >= 128))
    info["lesion_area"] = area
    if 1 < peak < 128:
        problems.append(Problem("low_mask_values", str(mask_path),
                                f"maximum value {peak} < 128, so the whole mask reads as background; "
                                "is it a label map? Then declare its classes in labels.json"))
    elif area == 0.0:
        problems.append(Problem("empty_mask", str(mask_path), "no lesion pixel (allowed for training)"))
    return problems, info


def _area_stats(areas: list[float]) -> dict | None:
    if not areas:
        return None
    values = np.asarray(areas)
    return {"min": float(values.min()), "mean": float(values.mean()), "median": float(np.median(values)),
            "max": float(values.max()), "below_10_percent": float(np.mean(values < 0.10))}


def check_dataset(path: str | os.PathLike, layout: str = "auto", cache_dir: str | os.PathLike | None = None,
                  decode_images: bool = True, workers: int | None = None) -> CheckReport:
    """Check a dataset and report every problem at once (see the module doc for the kinds).

    Args:
        path: a dataset folder or a procedural spec, as for ``load_dataset``.
        layout: a layout name or ``"auto"``.
        cache_dir: as for ``load_dataset``.
        decode_images: decode images fully (finds truncated files) or read only their headers.
        workers: decoding threads (default: up to 4, at most the CPU count).

    Returns:
        A :class:`CheckReport`; it never raises for a broken dataset (``ensure_valid`` does).
    """
    start = time.perf_counter()
    try:
        layout_name, parts = resolve_parts(path, layout, cache_dir)
        labels = find_labels(label_folders(path, parts))
    except DataError as exc:
        return CheckReport(str(path), layout, [Problem("layout", str(path), str(exc))])
    report = CheckReport(str(path), layout_name)
    if labels is not None:
        report.summary["labels"] = labels[0]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    sizes: Counter = Counter()
    report.summary["parts"] = {}
    for part in parts:
        scan = scan_pair_folder(part.images, part.masks)
        report.problems += [Problem("missing_folder", str(p), "folder not found") for p in scan.missing_dirs]
        report.problems += [Problem("unmatched_image", str(p), f"no mask with stem {p.stem!r} in {scan.masks_dir}")
                            for p in scan.images_only]
        report.problems += [Problem("unmatched_mask", str(p), f"no image with stem {p.stem!r} in {scan.images_dir}")
                            for p in scan.masks_only]
        for stem, paths in scan.duplicates.items():
            report.problems += [Problem("duplicate_stem", str(p), f"stem {stem!r} has {len(paths)} files: "
                                        + ", ".join(q.name for q in paths)) for p in paths]
        report.problems += [Problem("ignored_file", str(p), "not an image extension; skipped") for p in scan.ignored]
        if not scan.missing_dirs and not scan.pairs:
            report.problems.append(Problem("empty_dataset", str(part.images),
                                           f"part {part.subset!r} has no image/mask pairs"))
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda pair: _check_pair(pair[1], pair[2], decode_images, labels), scan.pairs))
        areas = []
        for problems, info in results:
            report.problems += problems
            if "lesion_area" in info:
                areas.append(info["lesion_area"])
            if "image_size" in info:
                sizes[info["image_size"]] += 1
        report.summary["parts"][part.subset] = {
            "pairs": len(scan.pairs), "images": len(scan.pairs) + len(scan.images_only),
            "masks": len(scan.pairs) + len(scan.masks_only), "empty_masks": sum(a == 0.0 for a in areas),
            "lesion_area": _area_stats(areas)}
    report.summary["pairs"] = sum(p["pairs"] for p in report.summary["parts"].values())
    report.summary["distinct_image_sizes"] = len(sizes)
    report.summary["common_image_sizes"] = [[w, h, n] for (w, h), n in sizes.most_common(3)]
    report.summary["seconds"] = time.perf_counter() - start
    return report


def ensure_valid(path: str | os.PathLike, layout: str = "auto", cache_dir: str | os.PathLike | None = None
                 ) -> CheckReport:
    """``check_dataset``, raising :class:`DataError` with the formatted report on any error.

    Training calls this before it starts; warnings (empty masks) do not stop it.
    """
    report = check_dataset(path, layout, cache_dir)
    if not report.ok:
        raise DataError(report.format())
    return report

"""``laworder gallery``: one self-contained HTML page to look at a pool or a set of predictions.

Two kinds of source:

* a synthesis pool (``laworder synth sample``: ``images/``, ``masks/``, ``manifest.json``): one row
  per pair, conditioning mask | generated image | recovered mask | Dice. The recovered masks are a
  ``seg predict`` output over the pool's images (``predictions``); the Dice comes from a mask-
  recovery JSON (``laworder exp mask-recovery --out``, the Table 3 number at the segmenter's grid)
  when given, else it is computed here between the recovered and the conditioning mask. Rows are
  grouped ("subset") by the conditioning mask's lesion size (``laworder.metrics.boundary.size_bin``).
* a ``seg predict`` output folder (``masks/``, ``overlays/``, ``predict.json``): image | truth
  (when known) | prediction | overlay | Dice / HD95 / NSD. The truth is the ``masks/`` folder beside
  the predicted ``images/`` (a pair folder), or ``truth``; scores are computed at each image's own
  size (``laworder.metrics``), or taken from a ``seg evaluate`` ``eval.json`` (``scores``: per image
  by stem, at the model's grid).

Every picture is embedded as a base64 thumbnail (PNG for masks, JPEG for photographs), so the page
needs no network, no server and no other file; a few lines of vanilla JavaScript sort the table by
any score column and filter it by subset. Rows start worst first (lowest Dice, then highest HD95).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laworder.errors import ConfigError, DataError
from laworder.seg.predict import PREDICT_RECORD  # written by ``seg predict`` beside masks/

DEFAULT_THUMB = 192  # px, longer side of every embedded picture

# score column -> (header, worse is lower?, format)
SCORE_COLUMNS: dict[str, tuple[str, bool, str]] = {
    "dice": ("Dice", True, "{:.3f}"),
    "iou": ("IoU", True, "{:.3f}"),
    "hd95": ("HD95 (px)", False, "{:.1f}"),
    "nsd": ("NSD", True, "{:.3f}"),
}


@dataclass
class GalleryRow:
    """One image's pictures (column -> ``H×W`` or ``H×W×3`` uint8 array, or None) and scores."""

    stem: str
    subset: str
    pictures: dict[str, np.ndarray | None]
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Gallery:
    title: str
    picture_columns: list[str]
    score_columns: list[str]  # keys of SCORE_COLUMNS present on the rows
    rows: list[GalleryRow]
    notes: list[str] = field(default_factory=list)
    subset_label: str = "subset"


# --- reading sources ----------------------------------------------------------------------------


def _files_by_stem(folder: Path) -> dict[str, Path]:
    from laworder.data.io import is_image_file

    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.iterdir()) if path.is_file() and is_image_file(path)}


def _read_rgb(path: Path) -> np.ndarray:
    from laworder.data.io import read_image

    return read_image(path, 3)


def _read_binary(path: Path) -> np.ndarray:
    from laworder.data.io import read_mask

    return read_mask(path)


def _mask_picture(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    from PIL import Image

    picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(picture) > 127


def mask_scores(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> dict[str, float]:
    """Dice, IoU, HD95 (px) and NSD of one ``H×W`` boolean prediction against the truth (the
    empty-mask rules of ``laworder.metrics``); a prediction of another size is resized nearest."""
    import torch

    from laworder.metrics.boundary import hd95_nsd_per_image
    from laworder.metrics.overlap import dice_iou_per_image

    pred = _resize_nearest(pred, truth.shape)
    pred_t = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    truth_t = torch.from_numpy(np.ascontiguousarray(truth))[None, None]
    dice, iou = dice_iou_per_image(pred_t, truth_t)
    hd95, nsd = hd95_nsd_per_image(pred_t, truth_t, tolerance)
    return {"dice": float(dice), "iou": float(iou), "hd95": float(hd95), "nsd": float(nsd)}


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no such {what} file")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: not a {what} (expected a JSON object)")
    return record


def _per_image_scores(path: Path) -> dict[str, dict[str, Any]]:
    """``stem -> {subset?, dice, ...}`` from an ``eval.json`` (``seg evaluate``) or a mask-recovery JSON."""
    record = _read_json(path, "scores")
    per_image = record.get("per_image")
    rows: list[tuple[str | None, dict]] = []
    if isinstance(per_image, dict):  # eval.json: subset -> [rows]
        rows = [(subset, row) for subset, items in per_image.items() for row in items]
    elif isinstance(per_image, list):  # mask recovery: [rows]
        rows = [(None, row) for row in per_image]
    else:
        raise DataError(f"{path}: no per_image scores (expected a `seg evaluate` eval.json or an "
                        "`exp mask-recovery --out` JSON)")
    scores: dict[str, dict[str, Any]] = {}
    for subset, row in rows:
        if not isinstance(row, dict) or "stem" not in row:
            raise DataError(f"{path}: a per_image entry without a stem: {str(row)[:80]}")
        entry = {k: float(v) for k, v in row.items() if k in SCORE_COLUMNS and isinstance(v, (int, float))}
        if subset is not None:
            entry["subset"] = subset
        scores[str(row["stem"])] = entry
    return scores


def pool_gallery(pool_dir: str | os.PathLike, predictions: str | os.PathLike | None = None,
                 scores: str | os.PathLike | None = None, tolerance: float = 2.0) -> Gallery:
    """A pool's gallery (see the module doc). ``predictions``: a ``seg predict`` output over the
    pool's images; ``scores``: an ``exp mask-recovery --out`` JSON for the pool.

    Raises:
        DataError: not a pool folder (no manifest), a pair without its image, unreadable files.
    """
    from laworder.experiments.mask_recovery import read_manifest
    from laworder.metrics.boundary import size_bin

    pool = Path(pool_dir)
    manifest = read_manifest(pool)
    images, masks = _files_by_stem(pool / "images"), _files_by_stem(pool / "masks")
    stems = [str(item["stem"]) for item in manifest.get("items", []) if isinstance(item, dict) and "stem" in item]
    stems = [stem for stem in stems if stem in masks] or sorted(masks)
    if not stems:
        raise DataError(f"{pool}: the pool holds no masks")
    recovered = _files_by_stem(Path(predictions) / "masks") if predictions else {}
    if predictions and not recovered:
        raise DataError(f"{predictions}: no predicted masks in {Path(predictions) / 'masks'} (a `seg predict` output)")
    given = _per_image_scores(Path(scores)) if scores else {}
    rows = []
    for stem in stems:
        if stem not in images:
            raise DataError(f"{pool}: mask {masks[stem].name} has no generated image in images/")
        mask = _read_binary(masks[stem])
        row_scores: dict[str, float | None] = {}
        recovered_mask = _read_binary(recovered[stem]) if stem in recovered else None
        if given:
            row_scores["dice"] = given.get(stem, {}).get("dice")
        elif recovered_mask is not None:
            row_scores["dice"] = mask_scores(recovered_mask, mask, tolerance)["dice"]
        pictures = {"conditioning mask": _mask_picture(mask), "generated image": _read_rgb(images[stem])}
        if recovered:
            pictures["recovered mask"] = _mask_picture(recovered_mask) if recovered_mask is not None else None
        rows.append(GalleryRow(stem, size_bin(float(mask.mean())), pictures, row_scores))
    source = ("mask-recovery scores " + Path(scores).name if scores
              else "Dice of the recovered vs the conditioning mask, computed here" if recovered else "no scores")
    notes = [f"pool {pool} — method {manifest.get('method', '?')}, {len(rows)} pairs; {source}",
             "subset = lesion size of the conditioning mask: small (< 5 % of the image), medium (5–15 %), large (> 15 %)"]
    columns = ["conditioning mask", "generated image"] + (["recovered mask"] if recovered else [])
    return _sorted(Gallery(f"Pool gallery: {pool.name}", columns, ["dice"] if (given or recovered) else [],
                           rows, notes, subset_label="lesion size"))


def _predict_sources(pred_dir: Path, images: str | os.PathLike | None) -> dict[str, Path]:
    if images:
        from laworder.seg.predict import list_images

        return {path.stem: path for path in list_images(images)}
    record_path = pred_dir / PREDICT_RECORD
    if not record_path.is_file():
        raise ConfigError(f"{pred_dir} has no {PREDICT_RECORD} (written by `seg predict` from this version on); "
                          "give the predicted images with --images")
    record = _read_json(record_path, "predict record")
    return {Path(path).stem: Path(path) for path in record.get("images", [])}


def _truth_for(image: Path, truth_dir: Path | None) -> Path | None:
    folder = truth_dir if truth_dir is not None else (image.parent.parent / "masks" if image.parent.name == "images" else None)
    return _files_by_stem(folder).get(image.stem) if folder is not None else None


def predict_gallery(pred_dir: str | os.PathLike, images: str | os.PathLike | None = None,
                    truth: str | os.PathLike | None = None, scores: str | os.PathLike | None = None,
                    tolerance: float = 2.0) -> Gallery:
    """A ``seg predict`` output's gallery (see the module doc). ``images``: the predicted images
    (default: as recorded in ``predict.json``); ``truth``: a folder of reference masks (default:
    ``masks/`` beside a pair folder's ``images/``); ``scores``: a ``seg evaluate`` ``eval.json``.

    Raises:
        DataError / ConfigError: no predictions, unknown images, unreadable files.
    """
    from laworder.seg.predict import overlay

    pred_dir = Path(pred_dir)
    predicted = _files_by_stem(pred_dir / "masks")
    if not predicted:
        raise DataError(f"{pred_dir}: no predicted masks in {pred_dir / 'masks'} (a `seg predict` output folder)")
    if (pred_dir / "labels.json").is_file():
        raise ConfigError(f"{pred_dir} holds multi-class label maps; the gallery shows binary predictions only")
    sources = _predict_sources(pred_dir, images)
    overlays = _files_by_stem(pred_dir / "overlays")
    truth_dir = Path(truth) if truth else None
    if truth_dir is not None and not truth_dir.is_dir():
        raise DataError(f"--truth {truth_dir}: no such folder")
    given = _per_image_scores(Path(scores)) if scores else {}
    rows, with_truth = [], 0
    for stem, mask_path in predicted.items():
        if stem not in sources:
            raise DataError(f"{pred_dir}: prediction {mask_path.name} has no source image (give --images)")
        image = _read_rgb(sources[stem])
        pred = _read_binary(mask_path)
        truth_path = _truth_for(sources[stem], truth_dir)
        truth_mask = _read_binary(truth_path) if truth_path is not None else None
        with_truth += truth_mask is not None
        if stem in given:
            row_scores = {k: v for k, v in given[stem].items() if k != "subset"}
        elif truth_mask is not None:
            row_scores = mask_scores(pred, truth_mask, tolerance)
        else:
            row_scores = {}
        picture = _read_rgb(overlays[stem]) if stem in overlays else overlay(image, _resize_nearest(pred, image.shape[:2]))
        source = sources[stem]  # a pair folder's name, else the image folder's
        folder = source.parent.parent.name if source.parent.name == "images" else source.parent.name
        subset = given.get(stem, {}).get("subset") or folder
        rows.append(GalleryRow(stem, str(subset), {
            "image": image, "truth": _mask_picture(truth_mask) if truth_mask is not None else None,
            "prediction": _mask_picture(pred), "overlay": picture}, row_scores))
    present = [key for key in SCORE_COLUMNS if key != "iou" and any(row.scores.get(key) is not None for row in rows)]
    source = (f"scores from {Path(scores).name} (seg evaluate, at the model's grid)" if scores else
              f"scores computed here at each image's own size; NSD at {tolerance:g} px" if with_truth else
              "no reference masks: no scores")
    notes = [f"predictions {pred_dir}: {len(rows)} images, {with_truth} with a reference mask; {source}"]
    columns = ["image"] + (["truth"] if with_truth else []) + ["prediction", "overlay"]
    return _sorted(Gallery(f"Predictions: {pred_dir.name}", columns, present, rows, notes))


def load_gallery(source: str | os.PathLike, **kwargs: Any) -> Gallery:
    """The gallery of ``source``: a pool (``manifest.json``) or a ``seg predict`` output (``masks/``)."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: no such folder (give a pool or a `seg predict` output folder)")
    if (source / "manifest.json").is_file():
        unknown = {k for k, v in kwargs.items() if v is not None} & {"images", "truth"}
        if unknown:
            raise ConfigError(f"{source} is a pool: {' and '.join('--' + k for k in sorted(unknown))} "
                              f"appl{'ies' if len(unknown) == 1 else 'y'} to `seg predict` output folders")
        kwargs.pop("images", None), kwargs.pop("truth", None)
        return pool_gallery(source, **kwargs)
    if (source / "masks").is_dir():
        if kwargs.pop("predictions", None):
            raise ConfigError(f"{source} is a `seg predict` output: --predictions applies to pools")
        return predict_gallery(source, **kwargs)
    raise DataError(f"{source} is neither a pool (manifest.json) nor a `seg predict` output (masks/)")


def _sorted(gallery: Gallery) -> Gallery:
    """Worst first: lowest Dice (rows without one last), then the highest HD95."""
    def key(row: GalleryRow):
        dice, hd95 = row.scores.get("dice"), row.scores.get("hd95")
        return (dice is None, dice if dice is not None else 0.0, -(hd95 if hd95 is not None else 0.0), row.stem)

    gallery.rows.sort(key=key)
    return gallery


# --- writing the page ---------------------------------------------------------------------------


def _data_uri(picture: np.ndarray, thumb: int) -> str:
    from PIL import Image

    image = Image.fromarray(picture)
    image.thumbnail((thumb, thumb), Image.Resampling.NEAREST if picture.ndim == 2 else Image.Resampling.LANCZOS)
    factor = thumb // max(image.size)
    if factor >= 2:  # tiny pictures (a 32² pool) scaled up by whole pixels, so they can be seen
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    if picture.ndim == 2:  # masks: lossless, a few hundred bytes
        image.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=88)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;text-align:center;vertical-align:middle}
th[data-key]{cursor:pointer;background:#eef}th[data-key]:after{content:" \\2195";color:#888}
th[data-dir=asc]:after{content:" \\2191"}th[data-dir=desc]:after{content:" \\2193"}
img{display:block;image-rendering:pixelated;max-width:none;outline:1px solid #999}td.name{font-family:monospace;text-align:left}
.notes{color:#555}.missing{color:#aaa}
"""

SCRIPT = """
const body = document.querySelector('#gallery tbody');
document.querySelectorAll('#gallery th[data-key]').forEach(th => th.addEventListener('click', () => {
  const key = th.dataset.key, dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  document.querySelectorAll('#gallery th[data-key]').forEach(o => delete o.dataset.dir);
  th.dataset.dir = dir;
  const value = r => { const v = parseFloat(r.dataset[key]); return isNaN(v) ? null : v; };
  [...body.rows].sort((a, b) => {
    const x = value(a), y = value(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return dir === 'asc' ? x - y : y - x;
  }).forEach(r => body.appendChild(r));
}));
const filter = document.getElementById('subset');
filter.addEventListener('change', () => {
  let shown = 0;
  [...body.rows].forEach(r => { r.hidden = filter.value !== '' && r.dataset.subset !== filter.value; shown += !r.hidden; });
  document.getElementById('shown').textContent = shown;
});
"""


def _summary(gallery: Gallery) -> str:
    if not gallery.score_columns:
        return ""
    subsets = sorted({row.subset for row in gallery.rows})
    head = "".join(f"<th>{html.escape(SCORE_COLUMNS[k][0])} (mean)</th>" for k in gallery.score_columns)
    lines = [f"<table class='summary'><tr><th>{html.escape(gallery.subset_label)}</th><th>n</th>{head}</tr>"]
    for name in subsets + ["all"]:
        rows = [r for r in gallery.rows if name == "all" or r.subset == name]
        cells = []
        for key in gallery.score_columns:
            values = [r.scores[key] for r in rows if r.scores.get(key) is not None]
            cells.append(f"<td>{SCORE_COLUMNS[key][2].format(float(np.mean(values)))}</td>" if values else "<td>–</td>")
        lines.append(f"<tr><td>{html.escape(name)}</td><td>{len(rows)}</td>{''.join(cells)}</tr>")
    return "\n".join(lines) + "</table>"


def render_html(gallery: Gallery, thumb: int = DEFAULT_THUMB) -> str:
    """The page as one string (pictures embedded; no external reference)."""
    if thumb < 16:
        raise ConfigError(f"thumbnail size must be >= 16 px, got {thumb}")
    subsets = sorted({row.subset for row in gallery.rows})
    options = "".join(f"<option value='{html.escape(s, quote=True)}'>{html.escape(s)}</option>" for s in subsets)
    head = "<th>#</th><th>name</th>" + f"<th>{html.escape(gallery.subset_label)}</th>"
    head += "".join(f"<th>{html.escape(c)}</th>" for c in gallery.picture_columns)
    head += "".join(f"<th data-key='{k}'>{html.escape(SCORE_COLUMNS[k][0])}</th>" for k in gallery.score_columns)
    body = []
    for index, row in enumerate(gallery.rows, 1):
        data = " ".join(f"data-{k}='{'' if row.scores.get(k) is None else repr(float(row.scores[k]))}'"
                        for k in gallery.score_columns)
        cells = [f"<td>{index}</td>", f"<td class='name'>{html.escape(row.stem)}</td>", f"<td>{html.escape(row.subset)}</td>"]
        for column in gallery.picture_columns:
            picture = row.pictures.get(column)
            cells.append(f"<td><img alt='{html.escape(column, quote=True)} {html.escape(row.stem, quote=True)}' "
                         f"src='{_data_uri(picture, thumb)}'></td>" if picture is not None else "<td class='missing'>–</td>")
        for key in gallery.score_columns:
            value = row.scores.get(key)
            cells.append(f"<td>{SCORE_COLUMNS[key][2].format(value)}</td>" if value is not None and math.isfinite(value)
                         else "<td class='missing'>–</td>")
        body.append(f"<tr data-subset='{html.escape(row.subset, quote=True)}' {data}>{''.join(cells)}</tr>")
    notes = "".join(f"<p class='notes'>{html.escape(n)}</p>" for n in gallery.notes)
    sortable = " Click a score header to sort." if gallery.score_columns else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(gallery.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(gallery.title)}</h1>{notes}
{_summary(gallery)}
<p><label>{html.escape(gallery.subset_label)}: <select id="subset"><option value="">all</option>{options}</select></label>
 showing <span id="shown">{len(gallery.rows)}</span> of {len(gallery.rows)}, worst first.{sortable}</p>
<table id="gallery"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def write_gallery(gallery: Gallery, out: str | os.PathLike, thumb: int = DEFAULT_THUMB, overwrite: bool = False) -> Path:
    """Write the page to ``out`` (atomically); an existing file is replaced only with ``overwrite``.

    Raises:
        RunDirError: ``out`` is a folder, or exists without ``overwrite``.
    """
    from laworder.errors import RunDirError

    out = Path(out)
    if out.is_dir():
        raise RunDirError(f"{out} is a folder; give the path of the .html file to write")
    if out.exists() and not overwrite:
        raise RunDirError(f"{out} exists; pass --overwrite to replace it")
    page = render_html(gallery, thumb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out

"""``laworder seg evaluate``: per-image Dice/IoU (and, when asked, HD95 / normalised surface Dice),
mean per subset and over subsets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from laworder.data.dataset import PairDataset
from laworder.data.labels import is_multiclass
from laworder.data.layouts import load_dataset
from laworder.data.records import PairRecord
from laworder.errors import DataError
from laworder.metrics.boundary import HD_PERCENTILE, hd95_nsd_per_image
from laworder.metrics.overlap import dice_iou_per_image
from laworder.seg.classes import per_class_scores, predict_labels, score_rows
from laworder.seg.runtime import inference_model


@dataclass
class EvalResult:
    """Per-image scores and their summaries (Dice/IoU as fractions in [0, 1])."""

    per_image: dict[str, list[dict]] = field(default_factory=dict)  # subset -> [{stem, dice, iou}]
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)  # subset -> {dice, iou, n}
    mean: dict[str, float] = field(default_factory=dict)  # mean over subsets (each subset weighs 1)
    # how hd95/nsd were measured, when they were: {"nsd_tolerance_px", "hd_percentile", "grid_px",
    # "one_empty_hd95"}; empty when only Dice/IoU were computed
    boundary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``B×C×H×W`` in [0,1] -> foreground probability ``B×1×H×W``."""
    return torch.sigmoid(model(images))


@torch.no_grad()
def evaluate_records(model: nn.Module, subsets: dict[str, list[PairRecord]], image_size: int,
                     channels: int = 3, threshold: float = 0.5, batch_size: int = 16,
                     device: str | torch.device = "cpu", progress: bool = False,
                     labels: list[str] | None = None, compile: bool = False,
                     nsd_tolerance: float | None = None) -> EvalResult:
    """Score ``model`` on each named subset of records at ``image_size``² (masks resized nearest).

    ``progress`` shows a tqdm bar per subset (batches). ``labels`` with K > 2 class names scores
    a multi-class model (``laworder.seg.classes``): each row and summary also holds
    ``dice_<class>``/``iou_<class>``, and ``dice``/``iou`` are the means over the classes.
    ``model`` is not modified: an inference copy (``laworder.seg.runtime``) is scored, compiled
    with ``compile=True`` (eager fallback on a compile error).

    ``nsd_tolerance`` (px) adds the boundary metrics ``hd95`` (px) and ``nsd`` to every row and
    summary (``laworder.metrics.boundary``: measured on the ``image_size``² grid, empty-mask rule
    there; multi-class: per class and their mean); ``None`` computes Dice/IoU only."""
    if not subsets or not any(subsets.values()):
        raise DataError("nothing to evaluate: the dataset has no test subsets (give --subset or a pair folder)")
    multiclass = is_multiclass(labels)
    # BN folded into the convs and, for the MK-UNet family, channels_last: ~3× faster batch
    # inference on CPU with the fused attention (bench/results/train_speed.md); same outputs
    model = inference_model(model, device, compile)
    result = EvalResult()
    for subset, records in subsets.items():
        if not records:
            continue
        dataset = PairDataset(records, image_size, channels, num_classes=len(labels) if multiclass else 2)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        rows = []
        if progress:  # a bar on a terminal, a few plain lines in a log
            from laworder.progress import progress as progress_bar

            loader = progress_bar(loader, desc=f"evaluate {subset}", unit="batch")
        for batch in loader:
            if multiclass:
                pred = predict_labels(model(batch["image"].to(device)))
                scores = score_rows(per_class_scores(pred, batch["mask"], labels, nsd_tolerance))
                rows += [{"stem": records[index].stem, **row} for index, row in zip(batch["index"].tolist(), scores)]
                continue
            pred = predict_probabilities(model, batch["image"].to(device)) >= threshold
            target = batch["mask"].to(device) > 0.5
            scores = dict(zip(("dice", "iou"), dice_iou_per_image(pred, target)))
            if nsd_tolerance is not None:
                scores.update(zip(("hd95", "nsd"), hd95_nsd_per_image(pred, target, nsd_tolerance)))
            for position, index in enumerate(batch["index"].tolist()):
                rows.append({"stem": records[index].stem, **{k: float(v[position]) for k, v in scores.items()}})
        result.per_image[subset] = rows
        keys = [k for k in rows[0] if k != "stem"]
        result.subsets[subset] = {**{k: sum(r[k] for r in rows) / len(rows) for k in keys}, "n": len(rows)}
    keys = [k for k in next(iter(result.subsets.values())) if k != "n"]
    result.mean = {k: sum(s[k] for s in result.subsets.values()) / len(result.subsets) for k in keys}
    if nsd_tolerance is not None:
        result.boundary = {"nsd_tolerance_px": float(nsd_tolerance), "hd_percentile": HD_PERCENTILE,
                           "grid_px": [image_size, image_size], "one_empty_hd95": "image diagonal"}
    return result


def evaluation_subsets(data: str, layout: str = "auto", subsets: Iterable[str] | None = None) -> dict[str, list[PairRecord]]:
    """The test subsets of a dataset; a plain pair folder is one subset named after it."""
    collection = load_dataset(data, layout)
    chosen = collection.test if collection.test else {collection.name: collection.train}
    if subsets:
        missing = sorted(set(subsets) - set(chosen))
        if missing:
            raise DataError(f"unknown test subset(s) {missing}; this dataset has {sorted(chosen)}")
        chosen = {k: chosen[k] for k in subsets}
    return chosen


def format_markdown(result: EvalResult, title: str = "") -> str:
    """Table in the paper's layout (Table 8): Dice/IoU per subset, then the mean, in percent."""
    names = list(result.subsets)
    head = ["Model"] + [f"{n} {m}" for n in names for m in ("Dice", "IoU")] + ["Mean Dice", "Mean IoU"]
    row = [title or "model"] + [f"{100 * result.subsets[n][m]:.1f}" for n in names for m in ("dice", "iou")]
    row += [f"{100 * result.mean['dice']:.1f}", f"{100 * result.mean['iou']:.1f}"]
    table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(row) + " |\n"
    classes = [k.removeprefix("dice_") for k in result.mean if k.startswith("dice_")]
    if classes:  # multi-class: Dice/IoU of each class per subset, in percent
        table += "\n| Subset | " + " | ".join(f"{c} Dice | {c} IoU" for c in classes) + " |\n|" + "---|" * (1 + 2 * len(classes)) + "\n"
        for name, scores in [*result.subsets.items(), ("mean", result.mean)]:
            table += f"| {name} | " + " | ".join(f"{100 * scores[f'dice_{c}']:.1f} | {100 * scores[f'iou_{c}']:.1f}"
                                                 for c in classes) + " |\n"
    if result.boundary:
        table += "\n" + format_boundary_markdown(result)
    return table


def format_boundary_markdown(result: EvalResult) -> str:
    """HD95 (px, lower is better) and NSD (%, higher is better) per subset and over subsets."""
    info = result.boundary
    grid = "×".join(str(v) for v in info.get("grid_px", [])) or "?"
    lines = [f"Boundary metrics on the {grid} px grid: HD95 in px (lower is better; one empty mask scores the "
             f"image diagonal), NSD at {info['nsd_tolerance_px']:g} px tolerance in % (higher is better).", "",
             "| Subset | n | HD95 (px) | NSD (%) |", "|---|---|---|---|"]
    for name, scores in result.subsets.items():
        lines.append(f"| {name} | {scores['n']} | {scores['hd95']:.2f} | {100 * scores['nsd']:.1f} |")
    lines.append(f"| mean over subsets | | {result.mean['hd95']:.2f} | {100 * result.mean['nsd']:.1f} |")
    return "\n".join(lines) + "\n"


EVAL_FILES = ("eval.json", "eval.md")


def eval_output(out_dir: str | Path, overwrite: bool = False, run: str | Path | None = None,
                data: str | Path | None = None):
    """The ``OutputFolder`` ``seg evaluate`` writes ``eval.json`` / ``eval.md`` to; ``check()`` it
    before scoring: an earlier evaluation there needs ``overwrite`` (and is replaced only where
    laworder wrote it), the folder may not hold the data, and may lie inside the run only."""
    from laworder.outputs import OutputFolder

    inputs = {"RUN": run, "--data": None if data is None or str(data).startswith("procedural") else data}
    return OutputFolder(out_dir, EVAL_FILES, overwrite, what="evaluation", inputs=inputs, containers=("RUN",),
                        kind="seg evaluate",
                        hint="choose another --out or pass --overwrite to replace the earlier evaluation")


def write_eval(result: EvalResult, out_dir: str | Path, title: str = "", output=None) -> Path:
    """``eval.json`` + ``eval.md`` in ``out_dir`` (each through a temp file); ``output`` (from
    :func:`eval_output`) replaces an earlier evaluation only as that folder allows."""
    import contextlib

    from laworder.outputs import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    with output if output is not None else contextlib.nullcontext():
        write_json_atomic(out_dir / "eval.json", result.to_json())
        write_text_atomic(out_dir / "eval.md", format_markdown(result, title))
    return out_dir

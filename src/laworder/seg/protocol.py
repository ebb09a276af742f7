"""``laworder seg protocol``: the paper's 5-seed protocol (§4.2.2).

For each seed: a fresh 90/10 train/val split of the training pool, training with
best-validation checkpointing, then evaluation of the best weights on every test subset;
reported as mean ± std (sample std, ddof=1) over seeds of the mean-over-subsets scores.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from laworder.errors import ConfigError
from laworder.metrics.overlap import mean_std
from laworder.seg.config import SegTrainConfig
from laworder.seg.evaluate import EvalResult, evaluate_records, evaluation_subsets, write_eval
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter


@dataclass
class ProtocolResult:
    model: str
    seeds: list[int]
    per_seed: list[dict] = field(default_factory=list)  # {seed, subsets, mean}
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> {mean, std}

    def to_json(self) -> dict:
        return {"model": self.model, "seeds": self.seeds, "per_seed": self.per_seed, "summary": self.summary}


SUMMARY_METRICS = ("dice", "iou", "hd95", "nsd")


def summarise(model: str, seeds: list[int], evals: list[EvalResult]) -> ProtocolResult:
    result = ProtocolResult(model, seeds)
    for seed, ev in zip(seeds, evals):
        result.per_seed.append({"seed": seed, "subsets": ev.subsets, "mean": ev.mean})
    # hd95/nsd only when every seed was scored with them (evaluate_records(nsd_tolerance=...))
    metrics = [m for m in SUMMARY_METRICS if evals and all(m in ev.mean for ev in evals)]
    keys = {f"{subset}/{metric}" for ev in evals for subset in ev.subsets for metric in metrics}
    for key in sorted(keys):
        subset, metric = key.split("/")
        values = [ev.subsets[subset][metric] for ev in evals if subset in ev.subsets]
        m, s = mean_std(values)
        result.summary[key] = {"mean": m, "std": s}
    for metric in metrics:
        m, s = mean_std([ev.mean[metric] for ev in evals])
        result.summary[f"mean/{metric}"] = {"mean": m, "std": s}
    return result


def run_protocol(config: SegTrainConfig, seeds: list[int] | tuple[int, ...] = (0, 1, 2, 3, 4),
                 test_data: str | None = None, subsets: list[str] | None = None,
                 nsd_tolerance: float | None = 2.0) -> ProtocolResult:
    """Train/evaluate one model over ``seeds``; each seed's run lives in ``<output_dir>/seed<k>``.

    ``nsd_tolerance`` (px; None to skip) adds HD95 and normalised surface Dice to every seed's
    evaluation and to the table's means.

    Runs already finished are reused when ``loop.resume`` is set, so a killed protocol
    continues where it stopped.
    """
    from laworder.config import check_seed
    from laworder.runlock import run_lock
    from laworder.seg.validate import check_seg_config
    from laworder.training.loop import check_run_dir

    root = Path(config.loop.output_dir)
    check_seg_config(config)
    if nsd_tolerance is not None and not (nsd_tolerance >= 0 and math.isfinite(nsd_tolerance)):
        raise ConfigError(f"nsd_tolerance must be a finite number of pixels >= 0, got {nsd_tolerance}")
    if not seeds:
        raise ConfigError("seeds is empty; give at least one seed (--seeds 0 1 2)")
    for index, seed in enumerate(seeds):
        check_seed(f"seeds[{index}]", seed)
    for seed in seeds:  # a folder holding another run is refused before the first seed trains
        check_run_dir(root / f"seed{seed}", config.loop.resume, config.loop.overwrite)
    test_sets = evaluation_subsets(test_data or config.data, "auto" if test_data else config.layout, subsets)
    with run_lock(root, "seg protocol"):
        return _run_seeds(config, root, list(seeds), test_sets, nsd_tolerance)


def _run_seeds(config: SegTrainConfig, root: Path, seeds: list[int], test_sets,
               nsd_tolerance: float | None = None) -> ProtocolResult:
    evals = []
    for seed in seeds:
        seed_config = copy.deepcopy(config)
        seed_config.loop.seed = seed
        seed_config.split_seed = seed
        seed_config.loop.output_dir = str(root / f"seed{seed}")
        run_json = Path(seed_config.loop.output_dir) / "run.json"
        if not (config.loop.resume and run_finished(run_json)):
            train_segmenter(seed_config)
        model, run_config = load_segmenter(seed_config.loop.output_dir, "best")
        ev = evaluate_records(model, test_sets, config.image_size, config.channels, config.threshold,
                              labels=run_config.labels, nsd_tolerance=nsd_tolerance)
        write_eval(ev, seed_config.loop.output_dir, f"{config.model} seed {seed}")
        evals.append(ev)
    result = summarise(config.model, list(seeds), evals)
    root.mkdir(parents=True, exist_ok=True)
    (root / "protocol.json").write_text(json.dumps(result.to_json(), indent=2))
    (root / "protocol.md").write_text(format_protocol([result]))
    return result


def run_finished(run_json: Path) -> bool:
    """Whether the training run that wrote ``run.json`` reached its last step (False when absent)."""
    if not run_json.is_file():
        return False
    state = json.loads(run_json.read_text())
    return state.get("global_step", 0) >= state.get("total_steps", 1)


def format_protocol(results: list[ProtocolResult]) -> str:
    """Paper Table 8 layout: per-subset Dice/IoU and the mean over subsets, mean ± std in %."""
    subsets = sorted({k.split("/")[0] for r in results for k in r.summary if not k.startswith("mean/")})
    boundary = any("mean/hd95" in r.summary for r in results)
    head = ["Method"] + [f"{s} {m}" for s in subsets for m in ("Dice", "IoU")] + ["Mean Dice", "Mean IoU"]
    keys = [f"{s}/{m}" for s in subsets for m in ("dice", "iou")] + ["mean/dice", "mean/iou"]
    if boundary:  # HD95 in pixels (lower is better), NSD in % like Dice
        head += ["Mean HD95 (px)", "Mean NSD"]
        keys += ["mean/hd95", "mean/nsd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.model]
        for key in keys:
            v = r.summary.get(key)
            scale = 1 if key.endswith("hd95") else 100
            if not v:
                cells.append("–")
            elif math.isnan(v["std"]):  # one seed: no spread to show
                cells.append(f"{scale * v['mean']:.1f}")
            else:
                cells.append(f"{scale * v['mean']:.1f} ± {scale * v['std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

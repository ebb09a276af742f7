"""Turn a finished segmentation run into shipped weights: safetensors + meta.json + model card.

``ship_run(run_dir, dest_root, dataset="polyps", kind=..., command=...)`` copies the run's best
weights to ``<dest_root>/<model>-<dataset>/`` and writes ``meta.json`` (everything
:mod:`laworder.models.pretrained` needs to rebuild and describe the model) and ``card.md``. The
test scores come from the run's ``eval.json`` (``laworder seg evaluate`` / the protocol bench);
when it is absent the best weights are scored on the run's test subsets first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from laworder.config import to_dict
from laworder.data.terms import DATA_TERMS  # what the data's owners allow; weights trained on it inherit it
from laworder.errors import MissingWeightsError
from laworder.models.pretrained import CARD_FILE, META_FILE, WEIGHTS_FILE, PretrainedWeights, list_pretrained
from laworder.seg.classes import model_class_kwargs


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ship_run(run_dir: str | Path, dest_root: str | Path, dataset: str, kind: str, description: str,
             command: str, which: str = "best", terms: str | None = None,
             source_name: str | None = None) -> PretrainedWeights:
    """Package ``run_dir``'s ``which`` weights as ``<dest_root>/<model>-<dataset>/`` and return the entry.

    Args:
        dataset: short dataset name users type (``order/<dataset>``).
        kind: ``"protocol"`` for a Table 12 protocol run, anything else says what it is instead
            (e.g. ``"short-cpu"``); shown by ``laworder seg list`` and on the card.
        description: one paragraph on how the weights were trained (goes on the card).
        command: the exact command that produced the run.
        terms: the data's terms; default: :data:`DATA_TERMS` for ``dataset``.
        source_name: how the card names the run folder (default: ``run_dir`` as given).

    Raises:
        MissingWeightsError: the run has no such weights.
    """
    from laworder.seg.evaluate import evaluate_records, evaluation_subsets, write_eval
    from laworder.seg.loading import load_segmenter

    run_dir = Path(run_dir)
    model, config = load_segmenter(run_dir, which)
    source = run_dir / "model" / which / "model.safetensors"
    if not source.is_file():
        source = run_dir / "model" / "last" / "model.safetensors"
    if not source.is_file():
        raise MissingWeightsError(f"no weights to ship in {run_dir}/model")
    evaluation = _read_json(run_dir / "eval.json")
    if evaluation is None:
        result = evaluate_records(model, evaluation_subsets(config.data, config.layout), config.image_size,
                                  config.channels, config.threshold, labels=config.labels)
        write_eval(result, run_dir, config.model)
        evaluation = result.to_json()
    run = _read_json(run_dir / "run.json") or {}
    split = _read_json(run_dir / "split.json") or {}
    data = _read_json(run_dir / "data.json") or {}
    provenance = _read_json(run_dir / "provenance.json") or {}

    folder = Path(dest_root) / f"{config.model}-{dataset}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / WEIGHTS_FILE)
    if split:
        shutil.copyfile(run_dir / "split.json", folder / "split.json")
    meta = {
        "model": config.model, "dataset": dataset, "kind": kind, "description": description,
        "model_kwargs": config.model_kwargs, "in_channels": config.channels,
        "num_classes": int({**model_class_kwargs(config.labels), **config.model_kwargs}.get("num_classes", 1)),
        "labels": list(config.labels),
        "image_size": config.image_size, "threshold": config.threshold,
        "test": {"subsets": {k: {m: v[m] for m in ("dice", "iou", "n")} for k, v in evaluation["subsets"].items()},
                 "mean": evaluation["mean"]},
        "run": {k: run.get(k) for k in ("global_step", "total_steps", "best_step", "best_metric", "seconds", "device")},
        "split": {**split.get("meta", {}), "num_train": len(split.get("train", [])), "num_val": len(split.get("val", [])),
                  "file": "split.json" if split else None},
        "data": data, "training": to_dict(config), "command": command,
        "code_commits": [s.get("commit") for s in provenance.get("sessions", [])],
        "terms": terms or DATA_TERMS.get(dataset, "See the dataset's own terms of use."),
        "weights": {"file": WEIGHTS_FILE, "which": which, "source_run": source_name or str(run_dir)},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (folder / CARD_FILE).write_text(format_card(meta))
    return next(w for w in list_pretrained(dest_root) if w.folder.resolve() == folder.resolve())


def format_card(meta: dict[str, Any]) -> str:
    """The model card (markdown) for one ``meta.json``."""
    name = f"{meta['model']}/{meta['dataset']}"
    loop = meta["training"]["loop"]
    aug = meta["training"]["augment"]
    subsets = meta["test"]["subsets"]
    rows = "\n".join(f"| {k} | {v['n']} | {100 * v['dice']:.1f} | {100 * v['iou']:.1f} |" for k, v in subsets.items())
    mean = meta["test"]["mean"]
    run = meta["run"]
    hours = f"{run['seconds'] / 3600:.2f} h" if run.get("seconds") else "unknown time"
    epochs_done = (f"{run['global_step']} of {run['total_steps']} steps"
                   if run.get("global_step") is not None else "unknown steps")
    protocol_note = ("This is a run of the paper's Table 12 protocol recipe (at the resolution above)."
                     if meta["kind"] == "protocol" else
                     f"**Not the paper's protocol** (kind: `{meta['kind']}`): see How it was made.")
    return f"""# {name}: {meta['model']} segmenter trained on {meta['dataset']}

```python
from laworder.models import create_model
model = create_model("{meta['model']}", pretrained="{meta['dataset']}")   # eval mode, B×{meta['in_channels']}×H×W in [0, 1] -> logits
```
```
laworder seg predict --pretrained {name} images/ out/
```

{protocol_note}

## Test scores (best-validation weights; images resized to {meta['image_size']}², threshold {meta['threshold']})

| Test subset | Images | Dice % | IoU % |
|---|---|---|---|
{rows}
| **mean over subsets** | | **{100 * mean['dice']:.1f}** | **{100 * mean['iou']:.1f}** |

## How it was made

{meta['description']}

- Model: `{meta['model']}` {json.dumps(meta['model_kwargs'])}, {meta['in_channels']} input channels, {meta['num_classes']} class(es); inputs are resized to {meta['image_size']}×{meta['image_size']} (`seg predict` does this and resizes the mask back).
- Recipe: {loop['optimizer']} lr {loop['lr']:g}, weight decay {loop['weight_decay']:g}, {loop['scheduler']} to {loop['min_lr']:g}, {loop['epochs']} epochs{f" (max_steps {loop['max_steps']})" if loop.get('max_steps') else ''}, batch {loop['batch_size']}, BCE×{meta['training']['bce_weight']:g} + Dice×{meta['training']['dice_weight']:g}, flips h={aug['hflip']} v={aug['vflip']}, rotation ±{aug['rotate_degrees']:g}°, seed {loop['seed']}; best validation Dice at step {run.get('best_step')} ({epochs_done}, {hours} on {run.get('device') or 'cpu'}).
- Split: {meta['split'].get('num_train')} train / {meta['split'].get('num_val')} validation pairs of the training pool (seed {meta['split'].get('seed')}, val fraction {meta['split'].get('val_fraction')}; the stems are in `split.json`); the test subsets above were never used for training or model selection.
- Command: `{meta['command']}`
- laworder commit(s): {', '.join(c for c in meta['code_commits'] if c) or 'not recorded'}

## Data and terms

{meta['terms']}
"""

"""Load a trained segmenter back from its run folder (config.yaml + safetensors)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from laworder.config import from_dict, load_yaml
from laworder.errors import MissingWeightsError
from laworder.models import create_model
from laworder.seg.classes import model_class_kwargs
from laworder.seg.config import SegTrainConfig
from laworder.training.checkpoint import load_weights


def load_run_config(run_dir: str | Path) -> SegTrainConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingWeightsError(f"{run_dir} is not a segmentation run folder: {path} is missing")
    return from_dict(SegTrainConfig, load_yaml(path), where=str(path))


def load_segmenter(run_dir: str | Path, which: str = "best") -> tuple[nn.Module, SegTrainConfig]:
    """Model in eval mode with the ``best`` (falls back to ``last``) or ``last`` weights."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    candidates = [which] + (["last"] if which == "best" else [])
    for name in candidates:
        weights = run_dir / "model" / name / "model.safetensors"
        if weights.is_file():
            model = create_model(config.model, in_channels=config.channels, **model_class_kwargs(config.labels),
                                 **config.model_kwargs)
            load_weights(model, weights)
            return model.eval(), config
    raise MissingWeightsError(f"no weights in {run_dir}/model/{{{','.join(candidates)}}}/model.safetensors; did training finish?")


def load_pretrained_segmenter(name: str, directory: str | Path | None = None) -> tuple[nn.Module, SegTrainConfig]:
    """Shipped weights ``name`` (``"order/polyps"``, see ``laworder seg list``) as a model in eval
    mode plus the settings predict/evaluate need (resolution, channels, threshold)."""
    from laworder.models.pretrained import create_pretrained, find_pretrained

    weights = find_pretrained(name, directory=directory)
    model = create_pretrained(weights.model, weights.name, directory)
    config = SegTrainConfig(model=weights.model, model_kwargs=weights.model_kwargs, image_size=weights.image_size,
                            channels=weights.in_channels, threshold=weights.threshold,
                            labels=list(weights.meta.get("labels", [])),
                            data=str(weights.meta.get("training", {}).get("data", "")))
    return model, config

"""Load a trained segmenter back from its run folder (config.yaml + safetensors)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from laworder.config import from_dict, load_yaml
from laworder.errors import ConfigError, MissingWeightsError
from laworder.seg.config import SegTrainConfig
from laworder.training.checkpoint import load_weights


def load_run_config(run_dir: str | Path) -> SegTrainConfig:
    """A run's ``config.yaml``, with the values inference uses checked (a hand-edited
    ``image_size: 50`` failed deep inside the model with "unexpected RuntimeError").

    Raises:
        MissingWeightsError: no ``config.yaml``. ConfigError: a bad value, named with the file.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MissingWeightsError(f"{run_dir} is not a segmentation run folder: {path} is missing")
    config = from_dict(SegTrainConfig, load_yaml(path), where=str(path))
    try:
        check_inference_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def check_inference_config(config: SegTrainConfig) -> None:
    """What predict / evaluate / export read from a run config: model name, channels, threshold,
    and an image size in range and within memory (the divisor is checked with the model built)."""
    from laworder.models.registry import MODELS
    from laworder.resources import check_batch
    from laworder.training.validate import at_least, between, one_of

    MODELS.get(config.model)
    one_of("channels", config.channels, (1, 3))
    between("threshold", config.threshold, 0, 1, "()")
    at_least("image_size", config.image_size, 1)
    check_batch("image_size", 1, config.image_size, config.channels)


def load_segmenter(run_dir: str | Path, which: str = "best") -> tuple[nn.Module, SegTrainConfig]:
    """Model in eval mode with the ``best`` (falls back to ``last``) or ``last`` weights."""
    from laworder.seg.validate import build_checked_model, check_image_size

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    candidates = [which] + (["last"] if which == "best" else [])
    for name in candidates:
        weights = run_dir / "model" / name / "model.safetensors"
        if weights.is_file():
            try:
                model = build_checked_model(config)
                check_image_size(model, config.image_size, config.model)
            except ConfigError as exc:
                raise ConfigError(f"{run_dir / 'config.yaml'}: {exc}") from None
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

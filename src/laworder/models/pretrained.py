"""Segmenter weights shipped inside the package: ``create_model("order", pretrained="polyps")``.

Each set of weights is one folder ``<weights dir>/<model>-<dataset>/`` holding

    model.safetensors   the state dict (a few hundred KB for ORDER / MK-UNet)
    meta.json           how it was made: model and kwargs, input channels, classes, training
                        resolution, threshold, protocol, split, test Dice/IoU per subset, the
                        data's terms of use and the exact command
    card.md             the same for people (the model card)

The weights dir is ``laworder/pretrained/`` inside the installed package (package data, so
nothing is ever downloaded), or the folder named by ``$LAWORDER_PRETRAINED_DIR`` / the
``directory`` argument (tests, your own weights). A name is ``<model>/<dataset>``; with the model
already given (``create_model("order", pretrained="polyps")``) the dataset alone is enough.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from laworder.errors import ConfigError, MissingWeightsError
from laworder.models.registry import MODELS

ENV_DIR = "LAWORDER_PRETRAINED_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "pretrained"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
CARD_FILE = "card.md"


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped set of weights and what its ``meta.json`` says about it."""

    model: str
    dataset: str
    folder: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}"

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def in_channels(self) -> int:
        return int(self.meta.get("in_channels", 3))

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes", 1))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.meta.get("model_kwargs", {}))

    @property
    def test_dice(self) -> float | None:
        """Mean test Dice over the dataset's test subsets (fraction), if recorded."""
        value = self.meta.get("test", {}).get("mean", {}).get("dice")
        return None if value is None else float(value)

    @property
    def kind(self) -> str:
        """``protocol`` (a Table 12 protocol run) or what the card says it is instead."""
        return str(self.meta.get("kind", "unknown"))


def weights_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where weights are looked up: ``directory``, else ``$LAWORDER_PRETRAINED_DIR``, else the package's."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else PACKAGE_DIR


def list_pretrained(directory: str | os.PathLike | None = None) -> list[PretrainedWeights]:
    """Every set of weights in the weights dir (folders with a ``meta.json``), sorted by name.

    Raises:
        ConfigError: a ``meta.json`` that is not valid JSON or lacks ``model``/``dataset``/``image_size``.
    """
    root = weights_dir(directory)
    if not root.is_dir():
        return []
    found = []
    for meta_path in sorted(root.glob(f"*/{META_FILE}")):
        from laworder.config import read_json_file
        from laworder.errors import DataError

        try:
            meta = read_json_file(meta_path, "pretrained metadata")
        except (OSError, DataError) as err:
            raise ConfigError(f"unreadable pretrained metadata {meta_path}: {err}") from err
        missing = [k for k in ("model", "dataset", "image_size") if k not in meta]
        if missing:
            raise ConfigError(f"pretrained metadata {meta_path} lacks {missing}")
        found.append(PretrainedWeights(str(meta["model"]), str(meta["dataset"]), meta_path.parent, meta))
    return sorted(found, key=lambda w: w.name)


def find_pretrained(name: str, model: str | None = None, directory: str | os.PathLike | None = None) -> PretrainedWeights:
    """The weights called ``name`` (``"order/polyps"``, or ``"polyps"`` when ``model`` is given).

    Raises:
        ConfigError: no such weights (the message lists the ones that exist), or ``name`` names
            another model than ``model``.
    """
    available = list_pretrained(directory)
    if "/" in name:
        wanted_model, dataset = name.split("/", 1)
        if model is not None and wanted_model != model:
            raise ConfigError(f"pretrained weights {name!r} are for model {wanted_model!r}, not {model!r}")
    elif model is not None:
        wanted_model, dataset = model, name
    else:
        raise ConfigError(f"pretrained name {name!r} must be <model>/<dataset>, e.g. order/polyps; "
                          f"known: {', '.join(w.name for w in available) or '(none)'}")
    for weights in available:
        if weights.model == wanted_model and weights.dataset == dataset:
            return weights
    known = ", ".join(w.name for w in available) or "(none)"
    raise ConfigError(f"no pretrained weights {wanted_model}/{dataset} in {weights_dir(directory)}; known: {known}")


def create_pretrained(model: str, pretrained: str, directory: str | os.PathLike | None = None,
                      **kwargs: Any) -> nn.Module:
    """Build ``model`` with the architecture the weights were trained with and load them (eval mode).

    ``kwargs`` may repeat what the weights fix (``in_channels``, ``num_classes``, model kwargs);
    a different value is an error rather than a silent mismatch.

    Raises:
        ConfigError: unknown weights (lists the known ones), or ``kwargs`` asking for another
            channel count, class count or architecture than the weights have.
        MissingWeightsError: the weights file of a listed entry is absent.
    """
    weights = find_pretrained(pretrained, model, directory)
    fixed = {"in_channels": weights.in_channels, "num_classes": weights.num_classes, **weights.model_kwargs}
    for key, value in kwargs.items():
        if key in fixed and _normalise(value) != _normalise(fixed[key]):
            raise ConfigError(
                f"pretrained weights {weights.name} were trained with {key}={fixed[key]!r}, got {key}={value!r}; "
                f"drop {key} or train your own weights (laworder seg train)")
    network = MODELS.create(model, **{**fixed, **kwargs})
    return load_pretrained_weights(network, weights)


def load_pretrained_weights(network: nn.Module, weights: PretrainedWeights) -> nn.Module:
    """Load ``weights`` into ``network`` (strict), in eval mode, with the entry as ``network.pretrained``.

    Raises:
        MissingWeightsError: the safetensors file is absent.
        ConfigError: its tensors do not fit ``network`` (names the file and the first mismatches).
    """
    from safetensors.torch import load_file

    if not weights.weights.is_file():
        raise MissingWeightsError(f"pretrained weights {weights.name}: {weights.weights} is missing")
    state = load_file(str(weights.weights))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:3]
        raise ConfigError(f"pretrained weights {weights.weights} do not fit {type(network).__name__}: "
                          f"{' '.join(s.strip() for s in first)}") from err
    network.pretrained = weights  # type: ignore[attr-defined]  (predict reads image_size/threshold from it)
    return network.eval()


def _normalise(value: Any) -> Any:
    """Lists and tuples compare equal (YAML/JSON turns tuples into lists)."""
    return [_normalise(v) for v in value] if isinstance(value, (list, tuple)) else value

"""``laworder seg export``: ONNX export with an onnxruntime parity check, and the model's own
description of how it is used.

The exported file carries, in the ONNX ``metadata_props`` (keys prefixed ``laworder.``), what
``seg predict`` needs to run it without the run folder (nnU-Net's export loses exactly this,
MIC-DKFZ/nnUNet#2954): the training ``image_size`` and ``channels``, the ``resize`` mode the
network was trained with, the input ``normalisation``, the binary ``threshold`` or the class
``labels``, the ``model`` name, the laworder ``version`` and a ``weights_sha256`` fingerprint of
the weights (so ``seg predict RUN --onnx FILE`` can tell a file exported from another model).

Input: float32 ``B×C×H×W``, the image's uint8 values / 255 (in [0, 1]; no mean/std), RGB for 3
channels. Output: logits ``B×1×H×W`` (sigmoid ≥ threshold) or ``B×K×H×W`` (arg-max over K classes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from laworder.errors import ConfigError, DataError, LaworderError, MissingWeightsError

META_PREFIX = "laworder."
NORMALISATION = "divide_by_255"  # uint8 -> [0, 1]; the only input scaling laworder trains with
TRAIN_RESIZE = "squash"  # training resizes every image to image_size² (``laworder.data.dataset``)


@dataclass(frozen=True)
class OnnxUsage:
    """How an exported segmenter is fed and read (written to / read from ``metadata_props``)."""

    image_size: int
    channels: int
    threshold: float = 0.5
    labels: tuple[str, ...] = ()  # K > 2 class names (multi-class); empty for a binary model
    resize: str = TRAIN_RESIZE
    normalisation: str = NORMALISATION
    model: str = ""
    version: str = ""
    weights_sha256: str = ""

    def to_metadata(self) -> dict[str, str]:
        """``{"laworder.<field>": str}``; labels as a JSON list."""
        values = {"image_size": str(self.image_size), "channels": str(self.channels),
                  "threshold": repr(float(self.threshold)), "labels": json.dumps(list(self.labels)),
                  "resize": self.resize, "normalisation": self.normalisation, "model": self.model,
                  "version": self.version, "weights_sha256": self.weights_sha256}
        return {META_PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str) -> "OnnxUsage | None":
        """The usage an export recorded, or None for a file without laworder metadata.

        Raises:
            DataError: the metadata is present but unreadable or describes an input laworder
                does not produce (another normalisation, resize mode or size).
        """
        ours = {key[len(META_PREFIX):]: value for key, value in metadata.items() if key.startswith(META_PREFIX)}
        if not ours:
            return None
        try:
            usage = cls(image_size=int(ours["image_size"]), channels=int(ours["channels"]),
                        threshold=float(ours.get("threshold", 0.5)),
                        labels=tuple(str(name) for name in json.loads(ours.get("labels", "[]"))),
                        resize=ours.get("resize", TRAIN_RESIZE), normalisation=ours.get("normalisation", NORMALISATION),
                        model=ours.get("model", ""), version=ours.get("version", ""),
                        weights_sha256=ours.get("weights_sha256", ""))
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{where}: unreadable laworder metadata in the ONNX model ({exc!r})") from None
        if usage.normalisation != NORMALISATION:
            raise DataError(f"{where}: input normalisation {usage.normalisation!r} is not one laworder applies "
                            f"({NORMALISATION!r})")
        if usage.image_size < 1 or usage.channels < 1 or not 0.0 < usage.threshold < 1.0:
            raise DataError(f"{where}: metadata image_size {usage.image_size}, channels {usage.channels}, "
                            f"threshold {usage.threshold} are not usable")
        return usage


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, values): equal weights, equal hex string."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def usage_of(model: nn.Module, config) -> OnnxUsage:
    """The :class:`OnnxUsage` of a loaded segmenter and its run (or shipped-weights) config."""
    from laworder import __version__
    from laworder.data.labels import is_multiclass

    labels = tuple(config.labels) if is_multiclass(config.labels) else ()
    return OnnxUsage(image_size=int(config.image_size), channels=int(config.channels), threshold=float(config.threshold),
                     labels=labels, model=str(config.model), version=__version__,
                     weights_sha256=weights_fingerprint(model))


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [prop for prop in proto.metadata_props if prop.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float  # over every checked size
    input_size: int
    opset: int
    checked_sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) pairs onnxruntime was compared at


def parity_sizes(input_size: int) -> list[tuple[int, int]]:
    """The (H, W) sizes the export is checked at: the training size, and a non-square one that
    is larger in both axes by different steps of 32 (the networks downsample five times; larger,
    because some need a minimum size, e.g. nnunet2d's instance norm)."""
    return [(input_size, input_size), (input_size + 32, input_size + 64)]


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 256, channels: int = 3,
                opset: int = 17, atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0,
                progress: bool = False, usage: OnnxUsage | None = None, overwrite: bool = False) -> ExportReport:
    """Export ``model`` (eval mode; batch, height and width dynamic) and check onnxruntime
    against eager PyTorch at two sizes (``parity_sizes``), so ``seg predict --resize pad`` and
    ``sliding`` can feed it any multiple of 32. ``usage`` (:func:`usage_of`) is written into the
    file's ``metadata_props`` (``seg predict --onnx FILE`` then needs no run folder).

    Raises ``LaworderError`` when any logit differs by more than ``atol + rtol·|logit|``
    (``numpy.allclose``'s rule; large networks reach logits of ±50, where float32 round-off
    alone exceeds a fixed 1e-4), at either size. Nothing is left behind in that case.

    The sidecar ``<path>.json`` (input size, opset, parity) is written beside the model: an
    existing model needs ``overwrite``, and an existing sidecar is replaced only when it is one
    (``overwrite`` never replaces an unrelated ``.json``); both go through temp files, so a failed
    export (a full disk) leaves neither.

    Raises:
        RunDirError: ``path`` is a folder, names the sidecar itself (``m.json``), or exists
            without ``overwrite``; the sidecar path holds another file. LaworderError: parity.
    """
    path = Path(path)
    sidecar = check_export_paths(path, overwrite)
    import onnxruntime as ort

    from laworder.outputs import atomic_path, write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    sizes = parity_sizes(input_size)
    examples = [torch.rand(2, channels, h, w, generator=generator) for h, w in sizes]
    steps = ["export"] + [f"check {h}x{w}" for h, w in sizes]
    bar = None
    if progress:  # a bar on a terminal, plain lines in a log
        from laworder.progress import progress as progress_bar

        bar = progress_bar(total=len(steps), desc="export", unit="step", lines=len(steps))
    with atomic_path(path) as tmp:
        diff = _export_and_check(model, tmp, examples, sizes, opset, atol, rtol, bar, ort, usage)
        write_json_atomic(sidecar, {"input_size": input_size, "channels": channels, "opset": opset,
                                    "dynamic_axes": ["batch", "height", "width"],
                                    "checked_sizes": [list(s) for s in sizes], "max_abs_diff": diff})
    if bar is not None:
        bar.close()
    return ExportReport(path, diff, input_size, opset, sizes)


SIDECAR_KEYS = {"input_size", "channels", "opset", "dynamic_axes"}


def check_export_paths(path: str | Path, overwrite: bool, run: str | Path | None = None) -> Path:
    """The sidecar path of an export to ``path``, after refusing what it must not replace (writes
    nothing): with ``run`` (the exported run folder) also any of the run's own files."""
    from laworder.errors import RunDirError
    from laworder.outputs import check_distinct, check_new_file, is_within

    path = Path(path)
    sidecar = path.with_suffix(".json")
    check_new_file(path, overwrite, what="ONNX file")
    if run is not None:
        for target in (path, sidecar):
            if is_within(run, target):
                raise RunDirError(f"{target} holds the run {run} being exported; choose another path")
            if (target.exists() or target.is_symlink()) and is_within(target, run) and target.suffix.lower() != ".onnx" \
                    and target == path:
                raise RunDirError(f"{target} is a file of the run {run}, not an ONNX export; choose another path")
    check_distinct({"the ONNX model": path, "its sidecar (the same name with .json)": sidecar})
    if sidecar.is_dir():
        raise RunDirError(f"the export's sidecar {sidecar} is a folder; choose another model name")
    if sidecar.exists() or sidecar.is_symlink():
        try:
            ours = SIDECAR_KEYS <= set(json.loads(sidecar.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise RunDirError(f"{sidecar} exists and is not an export sidecar: the export would replace it "
                              "(its metadata is written beside the model); choose another model name")
        if not overwrite:
            raise RunDirError(f"the export sidecar {sidecar} exists; pass --overwrite to replace it")
    return sidecar


def _export_and_check(model, tmp: Path, examples, sizes, opset, atol, rtol, bar, ort, usage) -> float:
    """Export to ``tmp`` and compare onnxruntime with eager PyTorch; the max abs logit difference."""
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (examples[0],), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False)
    if usage is not None:
        _write_metadata(tmp, usage.to_metadata())
    if bar is not None:
        bar.update(1)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    diff = 0.0
    for (height, width), example in zip(sizes, examples):
        with torch.no_grad():
            expected = model(example).numpy()
        try:
            got = session.run(None, {"image": example.numpy()})[0]
        except Exception as exc:  # onnxruntime raises its own types; a fixed-size graph fails here
            raise LaworderError(f"ONNX export does not run at {height}×{width}: {exc}") from exc
        size_diff = float(np.abs(expected - got).max()) if expected.shape == got.shape else float("inf")
        diff = max(diff, size_diff)
        if not (expected.shape == got.shape and np.allclose(got, expected, rtol=rtol, atol=atol)):
            raise LaworderError(f"ONNX parity check failed at {height}×{width}: max |torch - onnxruntime| = "
                                f"{size_diff:.3g} (allowed {atol} + {rtol}·|logit|)")
        if bar is not None:
            bar.update(1)
    return diff


class OnnxSegmenter:
    """Callable like a model: ``B×C×H×W`` float tensor -> logits tensor, run by onnxruntime.

    ``usage`` is what the export recorded (None for a file without laworder metadata);
    ``input_shape`` the declared ``[batch, channels, height, width]`` (an int per fixed axis, a
    name or None per dynamic one).

    Raises:
        MissingWeightsError: no file at ``path``;
        DataError: the file is not an ONNX model onnxruntime can load, or its graph does not take
            one ``B×C×H×W`` image.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingWeightsError(f"{path}: ONNX file not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # onnxruntime's own warnings would bypass our one-line errors
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path}: not an ONNX model onnxruntime can load ({detail})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs) or "none"
            raise DataError(f"{path}: expected one B×C×H×W image input, the model takes {shapes}")
        self.input_name = inputs[0].name
        self.input_shape = [dim if isinstance(dim, int) else None for dim in inputs[0].shape]
        outputs = self.session.get_outputs()
        self.output_shape = [dim if isinstance(dim, int) else None for dim in outputs[0].shape] if outputs else []
        self.usage = OnnxUsage.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))

    def check_fits(self, channels: int, image_size: int, resize: str, num_classes: int = 2) -> None:
        """Refuse (``DataError``) a model whose declared input/output cannot take what ``seg predict``
        feeds it: ``channels`` image channels, ``image_size``² inputs for ``squash``/``sliding``, any
        multiple of 32 for ``pad``; one logit channel (binary) or ``num_classes``."""
        batch, in_channels, height, width = self.input_shape
        if in_channels is not None and in_channels != channels:
            raise DataError(f"{self.path}: the model takes {in_channels}-channel images, but this model's settings "
                            f"give {channels}-channel ones")
        fixed = (height, width) if height is not None or width is not None else None
        if fixed is not None:
            if resize == "pad":
                raise DataError(f"{self.path}: the model takes a fixed {height}×{width} input; --resize pad feeds "
                                "varying sizes (use squash or sliding)")
            if any(side is not None and side != image_size for side in fixed):
                raise DataError(f"{self.path}: the model takes a fixed {height}×{width} input, not the "
                                f"{image_size}×{image_size} its settings say")
        if batch is not None and batch != 1:
            raise DataError(f"{self.path}: the model takes a fixed batch of {batch}; seg predict feeds one image")
        if batch == 1 and resize == "sliding":
            raise DataError(f"{self.path}: the model takes a fixed batch of 1; --resize sliding feeds several windows")
        out_channels = self.output_shape[1] if len(self.output_shape) == 4 else None
        expected = 1 if num_classes <= 2 else num_classes
        if out_channels is not None and out_channels != expected:
            raise DataError(f"{self.path}: the model returns {out_channels} logit channels, expected {expected} "
                            f"({'binary' if expected == 1 else f'{num_classes} classes'})")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: images.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OnnxSegmenter":
        return self

    def to(self, device) -> "OnnxSegmenter":
        return self


def onnx_predict_settings(onnx_model: OnnxSegmenter, model: nn.Module | None = None, config=None):
    """The settings ``seg predict --onnx`` runs with: the run's (or shipped weights') ``config``
    when one is given, else the file's own metadata. Returns a ``SegTrainConfig``.

    Raises:
        ConfigError: no config and the file carries no laworder metadata (an export from before
            the metadata, or from another tool);
        DataError: the file records other settings or other weights than ``model``/``config``
            (an ONNX file exported from a different model).
    """
    from laworder.seg.config import SegTrainConfig

    usage = onnx_model.usage
    if config is None:
        if usage is None:
            raise ConfigError(f"{onnx_model.path} carries no laworder metadata (image size, channels, threshold); "
                              "export it again with `laworder seg export`, or give the RUN folder it came from")
        return SegTrainConfig(model=usage.model or "onnx", image_size=usage.image_size, channels=usage.channels,
                              threshold=usage.threshold, labels=list(usage.labels))
    if usage is not None:
        from laworder.data.labels import is_multiclass

        mine = usage_of(model, config) if model is not None else None
        differ = [f"{name} {theirs!r} vs {ours!r}" for name, theirs, ours in (
            ("image_size", usage.image_size, int(config.image_size)), ("channels", usage.channels, int(config.channels)),
            ("labels", list(usage.labels), list(config.labels) if is_multiclass(config.labels) else []))
            if theirs != ours]
        if mine is not None and usage.weights_sha256 and usage.weights_sha256 != mine.weights_sha256:
            differ.append("weights (sha256 differs)")
        if differ:
            raise DataError(f"{onnx_model.path} was exported from another model than the one given "
                            f"({'; '.join(differ)}); give the ONNX file alone (--onnx FILE SOURCE OUT) or its own run")
    return config

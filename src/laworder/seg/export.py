"""``laworder seg export``: ONNX export with an onnxruntime parity check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from laworder.errors import LaworderError


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    input_size: int
    opset: int


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 256, channels: int = 3,
                opset: int = 17, atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0) -> ExportReport:
    """Export ``model`` (eval mode, dynamic batch) and check onnxruntime against eager PyTorch.

    Raises ``LaworderError`` when any logit differs by more than ``atol + rtol·|logit|``
    (``numpy.allclose``'s rule; large networks reach logits of ±50, where float32 round-off
    alone exceeds a fixed 1e-4). Nothing is left behind in that case.
    """
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.rand(2, channels, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run(None, {"image": example.numpy()})[0]
    diff = float(np.abs(expected - got).max())
    if not np.allclose(got, expected, rtol=rtol, atol=atol):
        tmp.unlink(missing_ok=True)
        raise LaworderError(f"ONNX parity check failed: max |torch - onnxruntime| = {diff:.3g} "
                            f"(allowed {atol} + {rtol}·|logit|)")
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"input_size": input_size, "channels": channels, "opset": opset,
                                                     "max_abs_diff": diff}, indent=2))
    return ExportReport(path, diff, input_size, opset)


class OnnxSegmenter:
    """Callable like a model: ``B×C×H×W`` float tensor -> logits tensor, run by onnxruntime."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": images.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OnnxSegmenter":
        return self

    def to(self, device) -> "OnnxSegmenter":
        return self

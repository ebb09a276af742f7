"""``laworder seg export``: ONNX export with an onnxruntime parity check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from laworder.errors import LaworderError


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
                progress: bool = False) -> ExportReport:
    """Export ``model`` (eval mode; batch, height and width dynamic) and check onnxruntime
    against eager PyTorch at two sizes (``parity_sizes``), so ``seg predict --resize pad`` and
    ``sliding`` can feed it any multiple of 32.

    Raises ``LaworderError`` when any logit differs by more than ``atol + rtol·|logit|``
    (``numpy.allclose``'s rule; large networks reach logits of ±50, where float32 round-off
    alone exceeds a fixed 1e-4), at either size. Nothing is left behind in that case.
    """
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    sizes = parity_sizes(input_size)
    examples = [torch.rand(2, channels, h, w, generator=generator) for h, w in sizes]
    steps = ["export"] + [f"check {h}x{w}" for h, w in sizes]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="export", unit="step", dynamic_ncols=True)
    tmp = path.with_suffix(".tmp.onnx")
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (examples[0],), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False)
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
            tmp.unlink(missing_ok=True)
            raise LaworderError(f"ONNX export does not run at {height}×{width}: {exc}") from exc
        size_diff = float(np.abs(expected - got).max()) if expected.shape == got.shape else float("inf")
        diff = max(diff, size_diff)
        if not (expected.shape == got.shape and np.allclose(got, expected, rtol=rtol, atol=atol)):
            tmp.unlink(missing_ok=True)
            raise LaworderError(f"ONNX parity check failed at {height}×{width}: max |torch - onnxruntime| = "
                                f"{size_diff:.3g} (allowed {atol} + {rtol}·|logit|)")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"input_size": input_size, "channels": channels, "opset": opset,
                                                     "dynamic_axes": ["batch", "height", "width"],
                                                     "checked_sizes": [list(s) for s in sizes],
                                                     "max_abs_diff": diff}, indent=2))
    return ExportReport(path, diff, input_size, opset, sizes)


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

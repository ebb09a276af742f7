"""``laworder seg profile``: Table 9 (params, FLOPs, latency, throughput, peak memory).

FLOPs come in two named conventions (see ``laworder.models.flops``):
``flops_conv_linear`` = 2 × MACs of Conv/Linear layers only, which is how the paper's
0.10 / 0.11 G arise, and ``flops_full`` from ``torch.utils.flop_counter`` (adds the
attention matmuls). Timings are medians over repeats and only meaningful side by side.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from laworder.models import create_model, list_models
from laworder.models.flops import conv_linear_flops, count_parameters, full_flops

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


@dataclass
class ProfileRow:
    model: str
    params: int
    flops_conv_linear: float
    flops_full: float
    ms_per_img: float  # batch 1 latency
    img_per_s: float  # at ``batch_size``
    peak_mb: float | None  # extra memory of one forward at ``batch_size``
    device: str
    batch_size: int
    onnx_ms_per_img: float | None = None


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra memory while ``fn`` runs: CUDA allocator stats, or on Linux CPU the resident
    set high-water mark reset through ``/proc/self/clear_refs`` (None where unavailable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return None
    base = _rss_kb("VmRSS")
    fn()
    peak = _rss_kb("VmHWM")
    return None if base is None or peak is None else max(0, peak - base) / 1024


def peak_forward_mb(model: torch.nn.Module, batch: torch.Tensor) -> float | None:
    """Peak extra memory of one inference forward of ``model`` on ``batch``."""

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    return peak_memory_mb(forward, batch.device)


def profile_model(name: str, image_size: int = 256, batch_size: int = 16, device: str = "cpu",
                  repeats: int = 20, warmup: int = 5, onnx: bool = False, model_kwargs: dict | None = None,
                  label: str | None = None) -> ProfileRow:
    from laworder.resources import check_batch

    check_batch("--batch-size, --image-size", batch_size, image_size, 3, 0)  # before the FLOP trace allocates
    dev = torch.device(device)
    model = create_model(name, **(model_kwargs or {})).eval().to(dev)
    shape = (1, 3, image_size, image_size)
    params = count_parameters(model)
    flops_cl = conv_linear_flops(model, shape)
    flops_all = full_flops(model, shape)
    single = torch.rand(*shape, device=dev)
    batch = torch.rand(batch_size, 3, image_size, image_size, device=dev)

    def run(x):
        def call():
            with torch.no_grad():
                model(x)
            _sync(dev)
        return call

    latency = median_seconds(run(single), repeats, warmup)
    batch_time = median_seconds(run(batch), max(3, repeats // 4), 2)
    peak = peak_forward_mb(model, batch)
    onnx_latency = None
    if onnx and dev.type == "cpu":
        from laworder.seg.export import OnnxSegmenter, export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            # Timing, not a parity gate: ``laworder seg export`` keeps the strict check.
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", input_size=image_size, atol=1e-2).path
            session = OnnxSegmenter(path)
            onnx_latency = median_seconds(lambda: session(single), repeats, warmup) * 1000
    return ProfileRow(label or name, params, float(flops_cl), float(flops_all), latency * 1000, batch_size / batch_time,
                      peak, str(dev), batch_size, onnx_latency)


# Sampling-based segmenters (UniSegDiff: 20 diffusion samples per image) are profiled only on
# request; they have no single-forward ONNX graph and dwarf the table's time budget.
SLOW_MODELS = ("unisegdiff",)


def profile_models(names: list[str] | None = None, **kwargs) -> list[ProfileRow]:
    """Profile ``names`` (default: every registered single-forward model) in this process."""
    torch.manual_seed(0)
    chosen = names or [n for n in list_models() if n not in SLOW_MODELS]
    return [profile_model(name, **kwargs) for name in chosen]


def format_table(rows: list[ProfileRow]) -> str:
    """Paper Table 9 layout, plus the full FLOP count and (optionally) ONNX latency."""
    head = "| Model | Params | GFLOPs (conv/linear, 2×MAC) | GFLOPs (full) | ms/img | img/s | Peak MB | ONNX ms/img |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "n/a"
        onnx = f"{r.onnx_ms_per_img:.3f}" if r.onnx_ms_per_img is not None else "–"
        lines.append(f"| {r.model} | {r.params:,} | {r.flops_conv_linear / 1e9:.3f} | {r.flops_full / 1e9:.3f} | "
                     f"{r.ms_per_img:.3f} | {r.img_per_s:.1f} | {peak} | {onnx} |")
    return "\n".join(lines) + "\n"


def rows_to_json(rows: list[ProfileRow]) -> list[dict]:
    return [asdict(r) for r in rows]

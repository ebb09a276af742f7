"""How a trained segmenter is run for inference: a fast eval copy, optionally ``torch.compile``d.

``inference_model`` is what ``evaluate_records`` and ``predict_folder`` (and so ``seg evaluate``
and ``seg predict``) call: BatchNorm folded into the convolutions and channels_last for the
MK-UNet family (``laworder.models.inference``), then, with ``compile=True``, the copy wrapped in
``CompiledInference``. ``bench/results/train_speed.md`` has what each step buys at 256² on CPU.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from laworder.models.inference import inference_copy
from laworder.training.fast import compile_failure_reason, is_compile_error

logger = logging.getLogger(__name__)


class CompiledInference(nn.Module):
    """Runs ``eager`` through ``torch.compile``; on a compile error, logs one line and stays eager.

    Compilation happens at the first call (and again for a new input shape), so a missing C++
    compiler or an inductor bug surfaces there: the call is repeated eagerly and every later
    call goes straight to the eager module. Errors that are not compile errors (wrong channel
    count, ...) propagate unchanged. ``B×C×H×W`` in, the model's output out.
    """

    def __init__(self, eager: nn.Module, compile_fn: Callable[[nn.Module], Callable] | None = None) -> None:
        super().__init__()
        self.eager = eager
        self.reason: str | None = None
        self._compiled: list[Callable] = []  # a list, so the compiled wrapper is not a registered submodule
        try:
            self._compiled.append((compile_fn or torch.compile)(eager))
        except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python)
            self._fall_back(exc)

    @property
    def active(self) -> bool:
        return bool(self._compiled)

    def _fall_back(self, exc: BaseException) -> None:
        self._compiled.clear()
        self.reason = compile_failure_reason(exc)
        logger.warning("torch.compile failed, inference continues eagerly (same outputs, slower): %s", self.reason)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled:
            try:
                return self._compiled[0](x)
            except Exception as exc:
                if not is_compile_error(exc):
                    raise
                self._fall_back(exc)
        return self.eager(x)


def inference_model(model: nn.Module, device: str | torch.device | None = None, compile: bool = False,
                    compile_fn: Callable[[nn.Module], Callable] | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` ready for inference on ``device``; ``model`` is not modified.

    ``compile=True`` adds ``torch.compile`` with an eager fallback (``CompiledInference``);
    ``compile_fn`` replaces ``torch.compile`` (tests).
    """
    prepared = inference_copy(model, device)
    return CompiledInference(prepared, compile_fn) if compile else prepared

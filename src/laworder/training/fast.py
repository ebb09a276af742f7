"""What the training loop does to run faster on the same numbers: channels_last and torch.compile.

* ``channels_last`` (NHWC memory) lets oneDNN run the convolutions, depthwise ones above all,
  without layout conversions; measured on this CPU it is the largest single gain for the
  MK-UNet family (``bench/results/train_profile_cpu.md``, ``bench/results/train_speed.md``).
  Parameters keep their values and ``state_dict`` keys, checkpoints are written contiguous.
* ``torch.compile`` is used for the training step only: validation, checkpoints, EMA and export
  keep reading the eager modules (same parameters), so a compiled run saves the same files and
  never recompiles for eval mode or another batch size. A compile failure at run time (no C++
  compiler, an unsupported op, an inductor bug) is caught at the step where it happens; the
  step is re-run eagerly from the same state and the run continues eagerly, with one log line.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

T = TypeVar("T")


def wants_channels_last(task, setting: bool | None) -> bool:
    """``setting`` if given, else the task's preference (``task.channels_last``, default False)."""
    return bool(getattr(task, "channels_last", False)) if setting is None else bool(setting)


def to_channels_last(modules: dict[str, nn.Module]) -> None:
    """Convert every module's 4-D parameters and buffers to channels_last memory, in place."""
    for module in modules.values():
        module.to(memory_format=torch.channels_last)


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) comes from dynamo / AOTAutograd / inductor."""
    seen = 0
    while exc is not None and seen < 8:
        for cls in type(exc).__mro__:
            if cls.__module__.startswith(("torch._dynamo", "torch._inductor", "torch._functorch")):
                return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def compile_failure_reason(exc: BaseException) -> str:
    """One line saying why compiling failed: the exception type and its first message line."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"[:300]


class CompiledStep:
    """Runs training steps through ``torch.compile``d modules, falling back to eager on failure.

    Args:
        task: a ``TrainTask``; ``task.modules`` stays the eager modules outside ``run``.
        enabled: compile at all (``LoopConfig.compile``).
        compile_fn: ``torch.compile`` (replaceable in tests).
    """

    def __init__(self, task, enabled: bool, compile_fn: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.task = task
        self.compiled: dict[str, nn.Module] | None = None
        self.reason: str | None = None
        if not enabled:
            return
        compile_fn = compile_fn or torch.compile
        try:
            self.compiled = {name: compile_fn(module) for name, module in task.modules.items()}
        except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python)
            self._fall_back(exc)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        self.reason = compile_failure_reason(exc)
        logger.warning("torch.compile failed, training continues eagerly (same numbers, slower): %s", self.reason)

    def run(self, step: Callable[[], T]) -> T:
        """``step()`` with the compiled modules in ``task.modules``; on a compile error, restore the
        buffers (BatchNorm statistics) the failed attempt may have moved and re-run it eagerly."""
        if self.compiled is None:
            return step()
        eager = self.task.modules
        buffers = [b for m in eager.values() for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]
        self.task.modules = self.compiled
        try:
            return step()
        except Exception as exc:
            if not is_compile_error(exc):
                raise
            self.task.modules = eager
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
            self._fall_back(exc)
            return step()
        finally:
            self.task.modules = eager

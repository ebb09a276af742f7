"""Range checks for resolved configs, run before anything is written (``fit`` and the commands
call them first). Each failure is a ``ConfigError`` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from laworder.config import check_seed
from laworder.errors import ConfigError
from laworder.resources import check_workers
from laworder.training.config import LoopConfig


def at_least(where: str, value: Any, low: float, optional: bool = False, strict: bool = False) -> None:
    """``value >= low`` (``> low`` with ``strict``); None passes when ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if strict else value >= low)
    if not ok:
        accepted = f"{'>' if strict else '>='} {low}" + (" or null" if optional else "")
        raise ConfigError(f"{where}={value!r} is out of range; accepted: {accepted}")


def between(where: str, value: Any, low: float, high: float, closed: str = "[]", optional: bool = False) -> None:
    """``low <= value <= high``; ``closed`` is two of ``[]()`` for each end."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if closed[0] == "[" else value > low) and (value <= high if closed[1] == "]" else value < high)
    if not ok:
        raise ConfigError(f"{where}={value!r} is out of range; accepted: {closed[0]}{low}, {high}{closed[1]}"
                          + (" or null" if optional else ""))


def one_of(where: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{where}={value!r} is not accepted; choose one of {', '.join(map(str, choices))}")


def check_loop_config(loop: LoopConfig, where: str = "loop") -> None:
    """Every ``LoopConfig`` value in range (names of optimizer / scheduler registered)."""
    if not str(loop.output_dir).strip():
        raise ConfigError(f"{where}.output_dir is empty; give a run folder (--output)")
    at_least(f"{where}.epochs", loop.epochs, 1)
    at_least(f"{where}.max_steps", loop.max_steps, 1, optional=True)
    at_least(f"{where}.batch_size", loop.batch_size, 1)
    at_least(f"{where}.lr", loop.lr, 0, strict=True)
    at_least(f"{where}.weight_decay", loop.weight_decay, 0)
    at_least(f"{where}.min_lr", loop.min_lr, 0)
    at_least(f"{where}.warmup_steps", loop.warmup_steps, 0)
    at_least(f"{where}.grad_clip", loop.grad_clip, 0, optional=True)
    at_least(f"{where}.checkpoint_every", loop.checkpoint_every, 0)
    at_least(f"{where}.keep_checkpoints", loop.keep_checkpoints, 1)
    at_least(f"{where}.log_every", loop.log_every, 1)
    at_least(f"{where}.snapshot_every", loop.snapshot_every, 0)
    at_least(f"{where}.val_every", loop.val_every, 1)
    at_least(f"{where}.num_workers", loop.num_workers, 0)
    check_seed(f"{where}.seed", loop.seed)
    check_workers(f"{where}.num_workers", loop.num_workers)
    between(f"{where}.ema_decay", loop.ema_decay, 0, 1, "()", optional=True)
    one_of(f"{where}.monitor_mode", loop.monitor_mode, ("max", "min"))
    one_of(f"{where}.mixed_precision", loop.mixed_precision, ("no", "fp16", "bf16"))
    from laworder.training.optim import OPTIMIZERS, SCHEDULERS  # torch: only once the plain values passed

    one_of(f"{where}.optimizer", loop.optimizer, OPTIMIZERS.names())
    one_of(f"{where}.scheduler", loop.scheduler, SCHEDULERS.names())

"""Inference across ``accelerate launch`` processes: split the inputs, gather one result.

``laworder synth sample``, ``seg predict`` and ``exp mask-recovery`` run unchanged in one
process; started as N processes by ``accelerate launch --multi_gpu --num_processes N`` (one
process per GPU; on a machine without CUDA the same command starts N CPU processes talking
over gloo: accelerate's ``--cpu`` alone starts one process unless MPI is set up) or by
``torchrun --nproc_per_node N``, each process takes every N-th *batch* of the inputs and they
write into one output folder, the main process writing the summary files.

Work is split by whole batches, so every batch holds the same items as in a one-process run:
with per-item seeds the outputs are identical, byte for byte, whatever the process count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class SingleProcess:
    """What ``process_state`` returns outside a multi-process launch."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True


def process_state():
    """accelerate's ``PartialState`` (torch.distributed initialised) when launched as several
    processes (``WORLD_SIZE`` > 1), else a :class:`SingleProcess`.

    A lone process does not create ``PartialState``: it is a process-wide singleton, and one made
    here would fix the device of every ``Accelerator(cpu=...)`` created later in the same process.
    """
    from laworder.environment import int_variable

    if (int_variable("WORLD_SIZE", 1) or 1) <= 1:
        return SingleProcess()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without cpu=True accelerate treats torchrun CPU processes as independent single processes.
    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    return PartialState(cpu=cpu)


def is_distributed(state) -> bool:
    return state.num_processes > 1


def inference_device(state, device: str | torch.device | None) -> torch.device:
    """``device`` if given; else the process's own device when launched as several processes
    (``cuda:<local rank>`` or CPU), else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if is_distributed(state):
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | torch.device | None, what: str = "device") -> torch.device | None:
    """``device`` parsed and present on this machine (``None`` stays ``None``), checked before any
    write: ``--device cuda`` on a CPU-only torch is refused here, not after the outputs are started.

    Raises:
        ConfigError: not a torch device, or not available here.
    """
    from laworder.errors import ConfigError

    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{what}={device!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{what}={device!r}: this torch sees no CUDA device (torch {torch.__version__}); use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"{what}={device!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}={device!r}: MPS is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what}={device!r}: laworder runs on cpu, cuda or mps")
    return parsed


def batches_of(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Consecutive batches of ``batch_size`` items (the last may be shorter)."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def my_share(batches: Sequence[T], state) -> list[T]:
    """The batches this process handles: every ``num_processes``-th, from its index."""
    return list(batches[state.process_index :: state.num_processes])


def gather(local: list[Any], state) -> list[Any]:
    """Every process's list, concatenated in process order (the local list when alone)."""
    if not is_distributed(state):
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(local))


def wait(state) -> None:
    """Barrier (a no-op in one process)."""
    if is_distributed(state):
        state.wait_for_everyone()

"""Bounds before allocation: batch sizes, image sizes and worker counts checked against the
machine before anything is allocated (``--batch-size 100000000`` padded the batch list and was
killed by the OOM killer after 24 GB; ``--image-size 1048576`` asked for terabytes).

The estimates are lower bounds (the input tensors alone, float32): a refused setting cannot fit,
an accepted one may still need several times more for a network's activations. Light: no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from laworder.errors import ConfigError

GIB = 1024 ** 3
FLOAT_BYTES = 4
WORKERS_PER_CPU = 4  # DataLoader workers beyond this many per CPU only add processes and memory


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable`` (Linux), lowered by a cgroup
    limit (containers); ``None`` where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit.isdigit() and used.isdigit():
            found.append(max(0, int(limit) - int(used)))
    except OSError:
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; terabytes stay readable (``"3.2e+03 TiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB" if count < 10_000 else f"{count:.2g} TiB"


def check_fits(what: str, need: int, advice: str = "", available: int | None = None) -> None:
    """Refuse ``what`` when its estimated ``need`` (bytes) exceeds the memory available now.

    Raises:
        ConfigError: with the estimate, what is available and ``advice``.
    """
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise ConfigError(f"{what} needs at least {format_bytes(need)} of memory (the input tensors alone), but "
                          f"{format_bytes(available)} is available; nothing was allocated"
                          + (f". {advice}" if advice else ""))


def image_batch_bytes(batch_size: int, height: int, width: int | None = None, channels: int = 3,
                      mask_channels: int = 1) -> int:
    """Bytes of one float32 batch of ``batch_size`` images (``channels``) plus masks (``mask_channels``)."""
    width = height if width is None else width
    return int(batch_size) * (int(channels) + int(mask_channels)) * int(height) * int(width) * FLOAT_BYTES


def check_batch(where: str, batch_size: int, image_size: int, channels: int = 3, mask_channels: int = 1,
                available: int | None = None) -> None:
    """A batch of ``batch_size`` ``image_size``² images (+ masks) fits in memory (see ``check_fits``)."""
    need = image_batch_bytes(batch_size, image_size, channels=channels, mask_channels=mask_channels)
    check_fits(f"{where}: a batch of {batch_size} at {image_size}×{image_size} ({channels}+{mask_channels} channels)",
               need, "Lower the batch size or the image size", available)


def check_workers(where: str, workers: int) -> None:
    """At most ``WORKERS_PER_CPU`` DataLoader workers per CPU (each is a process with its own copy of the dataset).

    Raises:
        ConfigError: naming the count, the CPUs and the bound.
    """
    cpus = os.cpu_count() or 1
    bound = WORKERS_PER_CPU * cpus
    if workers > bound:
        raise ConfigError(f"{where}={workers} worker processes on a machine with {cpus} CPU(s) is out of range; "
                          f"accepted: 0 .. {bound} ({WORKERS_PER_CPU} per CPU)")

"""Progress that fits where it goes.

* stderr is a terminal: tqdm bars (carriage returns redraw one line);
* stderr is a file or a pipe (``make demo > log``, CI): no bar, a plain line every tenth of the
  work (``lines``) and, in training, one line per epoch; a 300 KB log of redrawn bars says less;
* progress off (``--no-progress``): no bar and no progress lines, but what a run decides
  (validation scores, the best checkpoint) is still one line each (:func:`say`).

Warnings and log records are written through ``tqdm.write`` (:func:`route_warnings`), so they
land above a live bar instead of inside it. Scores are printed rounded (:func:`fmt`).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["fmt", "interactive", "progress", "route_warnings", "say"]


def interactive() -> bool:
    """Whether stderr is a terminal (bars redraw there; elsewhere they would pile up)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def say(message: str) -> None:
    """One line on stderr, written above any live bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def fmt(value: Any, digits: int = 4) -> str:
    """A score rounded for people: ``0.41234567`` -> ``0.4123``; ints and text unchanged."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.{digits}e}"


class LineProgress:
    """A tqdm-like object for a non-terminal stderr: a line at every ``1/lines`` of ``total``
    (and at the end) instead of redrawn bars. Wraps an iterable like tqdm, or counts ``update``."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, lines: int = 10):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.step = max(1, (total or 0) // max(1, lines)) if total else None
        self.postfix: dict[str, Any] = {}
        self.started = time.time()
        self._last_printed = initial

    def __iter__(self) -> Iterator:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.step is not None and (self.n - self._last_printed >= self.step or self.n == self.total):
            self._print()

    def _print(self) -> None:
        self._last_printed = self.n
        of = f"/{self.total}" if self.total else ""
        extra = "".join(f", {k} {fmt(v)}" for k, v in self.postfix.items())
        say(f"{self.desc}: {self.n}{of} {self.unit}{extra} ({time.time() - self.started:.0f} s)")

    def close(self) -> None:
        if self.n != self._last_printed and self.step is not None:
            self._print()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, initial: int = 0, lines: int = 10):
    """A progress object for ``iterable`` (or ``total`` counted with ``update``): a tqdm bar on a
    terminal, a :class:`LineProgress` elsewhere, ``None`` (or the bare iterable) when not ``enabled``."""
    if not enabled:
        return iterable
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, lines=lines)


class _TqdmLogHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record))
        except Exception:  # noqa: BLE001  (logging must never raise)
            self.handleError(record)


def route_warnings() -> None:
    """Send ``warnings`` and root-logger records through ``tqdm.write`` (above a live bar).

    Called once by the command line; library users keep their own handlers."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        say(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    warnings.showwarning = show
    root = logging.getLogger()
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:  # basicConfig's stderr handler
            replacement = _TqdmLogHandler()
            replacement.setFormatter(handler.formatter)
            replacement.setLevel(handler.level)
            root.removeHandler(handler)
            root.addHandler(replacement)

"""Inputs checked before outputs: read every input file first, refuse a foreign output folder.

Commands that turn a folder of files into another folder (``seg predict``, ``synth sample``,
``export nnunet``, ``exp mask-recovery``) call ``readable_inputs`` before they write anything, so
a truncated file stops the command with nothing written, or, with ``--skip-unreadable``, is
left out and listed in ``<out>/skipped.json``; ``check_output_dir`` refuses a folder holding
other files unless ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from laworder.errors import DataError, RunDirError

SKIPPED = "skipped.json"


def readable_inputs(paths: Sequence[Any], read: Callable[[Any], Any], skip_unreadable: bool = False,
                    what: str = "files", key: Callable[[Any], str] = str) -> tuple[list[Any], dict[str, str]]:
    """``(readable, skipped)``: ``read(path)`` each input; ``skipped`` maps ``key(path)`` to its error.

    Raises:
        DataError: some input is unreadable and ``skip_unreadable`` is off (names the first one
            and the count), or none is readable.
    """
    readable, skipped = [], {}
    for path in paths:
        try:
            read(path)
        except DataError as exc:
            skipped[key(path)] = str(exc)
        else:
            readable.append(path)
    if skipped and not skip_unreadable:
        raise DataError(f"{len(skipped)} of {len(paths)} {what} unreadable (first: {next(iter(skipped.values()))}); "
                        f"nothing written. Fix them, or pass --skip-unreadable to process the rest "
                        f"(the others listed in {SKIPPED})")
    if not readable:
        raise DataError(f"none of the {len(paths)} {what} is readable (first: {next(iter(skipped.values()), '')})")
    return readable, skipped


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool, what: str = "output") -> bool:
    """Whether ``out_dir`` holds files already; raises ``RunDirError`` when it does without
    ``overwrite``, or is a file. Writes nothing."""
    from laworder.runlock import LOCK_FILE

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"{what} {out_dir} is a file; choose a folder path")
    present = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE) if out_dir.is_dir() else []
    if present and not overwrite:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise RunDirError(f"{what} folder {out_dir} is not empty ({shown}); choose an empty folder or pass --overwrite")
    return bool(present)


def clear_owned(out_dir: str | os.PathLike, owned: Iterable[str]) -> None:
    """Delete the ``owned`` entries of ``out_dir`` (what an earlier run of the same command wrote)."""
    for name in owned:
        target = Path(out_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def write_skipped(out_dir: str | os.PathLike, skipped: dict[str, str]) -> Path | None:
    """``<out_dir>/skipped.json`` ({path: reason}) when something was skipped."""
    if not skipped:
        return None
    path = Path(out_dir) / SKIPPED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"count": len(skipped), "skipped": skipped}, indent=2) + "\n")
    return path

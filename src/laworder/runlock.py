"""One writer per run folder: an advisory ``fcntl`` lock held for the life of a run.

``with run_lock(folder):`` wraps training (new, ``--resume``, ``--overwrite``), ``synth sample``
and ``exp run``. The lock file ``.laworder.lock`` records the holder's pid, host and command; a
second process is refused with them (:class:`~laworder.errors.RunLockedError`). The kernel drops
an ``flock`` when its process dies (even by ``kill -9``), so a lock file left by a dead process is
simply taken over; when its recorded pid is gone on this host a warning says so. The file is
removed on release. Locks are re-entrant within a process (an experiment may train into a
folder it already holds).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from laworder.errors import RunLockedError
from laworder.paths import resolve

logger = logging.getLogger(__name__)

LOCK_FILE = ".laworder.lock"
_HELD: dict[Path, list] = {}  # resolved folder -> [fd, depth, created the folder]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(folder: str | os.PathLike) -> dict | None:
    """The holder record of ``folder``'s lock file (pid, host, command, since), or None."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None


def is_locked(folder: str | os.PathLike) -> bool:
    """True when a live process (this one included) holds ``folder``'s lock."""
    import fcntl

    key = resolve(folder)
    if key in _HELD:
        return True
    path = key / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')}: {holder.get('command', '?')})"


def acquire(folder: str | os.PathLike, what: str = "run") -> None:
    """Take ``folder``'s lock (creating the folder); raises ``RunLockedError`` naming the holder."""
    import fcntl

    key = resolve(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    created = not key.exists()
    key.mkdir(parents=True, exist_ok=True)
    path = key / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            if created:  # cannot happen (someone locked a folder we just made), but leave nothing behind
                _remove_if_empty(key)
            raise RunLockedError(f"{key} is locked by {_describe(read_holder(key))}; "
                                 f"wait for it to finish or stop it before another {what} writes there") from None
        # the previous holder may have removed the file between our open and our lock: retry on the new one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = read_holder(key)
    if stale and stale.get("pid") != os.getpid():
        if stale.get("host") == socket.gethostname() and not _pid_alive(int(stale.get("pid", 0))):
            logger.warning("taking over the lock of %s left by pid %s (no longer running)", key, stale.get("pid"))
            print(f"laworder: warning: taking over the lock of {key} left by pid {stale.get('pid')} "
                  "(no longer running)", file=sys.stderr)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _HELD[key] = [fd, 1, created]


def release(folder: str | os.PathLike) -> None:
    """Give the lock back (the outermost release removes the lock file)."""
    import fcntl

    key = resolve(folder)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        (key / LOCK_FILE).unlink()
    fcntl.flock(held[0], fcntl.LOCK_UN)
    os.close(held[0])
    if held[2]:
        _remove_if_empty(key)  # a run that failed before writing anything leaves no empty folder


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """``with run_lock(folder):`` hold ``folder``'s lock for the block (see the module docstring)."""
    acquire(folder, what)
    try:
        yield Path(folder)
    finally:
        release(folder)

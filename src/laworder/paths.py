"""Resolving paths without surprises: a symbolic link loop is one ``DataError`` naming it.

``Path.resolve()`` raises ``RuntimeError("Symlink loop from ...")`` on Python 3.11 (an
"unexpected RuntimeError" for ``-o loop`` where ``loop`` links to itself); every resolve in
laworder goes through ``resolve`` here.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from laworder.errors import DataError


def resolve(path: str | os.PathLike) -> Path:
    """``Path(path).expanduser().resolve()``; a symlink loop anywhere on the way raises ``DataError``."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from ..."
        raise DataError(f"{path}: a symbolic link loop ({exc})") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path}: a symbolic link loop") from None
        raise

"""``check_data_source``: the cheap first check of a ``data`` value, before anything heavy is imported.

The command line calls it while validating arguments, so a missing folder is answered without
torch; the layout and every file are checked later (``laworder.data.check``).
"""

from __future__ import annotations

from pathlib import Path

from laworder.errors import DataError


def check_data_source(data: str, key: str = "data") -> None:
    """``data`` is an existing folder or a ``procedural[...]`` spec (its layout is checked later).

    Raises:
        DataError: neither, naming ``key`` and the value.
    """
    if not str(data).startswith("procedural") and not Path(data).exists():
        raise DataError(f"{key}: dataset not found: {data} (a dataset folder or procedural[:N[:SIZE[:SEED]]])")

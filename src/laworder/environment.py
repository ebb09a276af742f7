"""Environment variables laworder reads, validated like the flags they stand for.

``check_environment()`` runs first in the command line (before anything is read or written), so a
bad value is one line naming the variable, not a later failure somewhere else:
``LAWORDER_MAX_IMAGE_PIXELS=abc`` was reported as every image being unreadable. Light: no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from laworder.errors import ConfigError

# name -> what it stands for (shown in messages)
VARIABLES = {
    "LAWORDER_MAX_IMAGE_PIXELS": "--max-image-pixels",
    "LAWORDER_CACHE_DIR": "the cache folder of generated / converted datasets",
    "LAWORDER_PRETRAINED_DIR": "the folder of shipped weights",
    "LAWORDER_FID_WEIGHTS": "the FID Inception weight file",
    "WORLD_SIZE": "the process count of a distributed launch",
    "RANK": "this process's rank in a distributed launch",
    "LOCAL_RANK": "this process's rank on its machine",
}


def int_variable(name: str, low: int, environ: Mapping[str, str] | None = None) -> int | None:
    """``$name`` as an integer ``>= low`` (None when unset or blank).

    Raises:
        ConfigError: naming the variable, its value and the accepted range.
    """
    raw = (os.environ if environ is None else environ).get(name, "")
    if not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer "
                          f"({VARIABLES.get(name, name)}; accepted: an integer >= {low}, or unset)") from None
    if value < low:
        raise ConfigError(f"environment variable {name}={raw!r} is out of range "
                          f"({VARIABLES.get(name, name)}; accepted: an integer >= {low}, or unset)")
    return value


def _folder_variable(name: str, environ: Mapping[str, str], must_exist: bool) -> None:
    raw = environ.get(name, "")
    if not raw.strip():
        return
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"environment variable {name}={raw} is a file, not a folder ({VARIABLES[name]})")
    if must_exist and not path.is_dir():
        raise ConfigError(f"environment variable {name}={raw}: no such folder ({VARIABLES[name]}; unset it "
                          "to use the default)")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Every variable of ``VARIABLES`` that is set holds a value its flag would accept.

    Raises:
        ConfigError: the first bad one, named with its value.
    """
    env = os.environ if environ is None else environ
    int_variable("LAWORDER_MAX_IMAGE_PIXELS", 1, env)
    _folder_variable("LAWORDER_CACHE_DIR", env, must_exist=False)
    _folder_variable("LAWORDER_PRETRAINED_DIR", env, must_exist=False)  # a missing one lists no weights
    fid = env.get("LAWORDER_FID_WEIGHTS", "").strip()
    if fid and not Path(fid).is_file():
        raise ConfigError(f"environment variable LAWORDER_FID_WEIGHTS={fid}: no such file ({VARIABLES['LAWORDER_FID_WEIGHTS']})")
    world = int_variable("WORLD_SIZE", 1, env)
    for name in ("RANK", "LOCAL_RANK"):
        rank = int_variable(name, 0, env)
        if rank is not None and world is not None and rank >= world:
            raise ConfigError(f"environment variable {name}={rank} is out of range for WORLD_SIZE={world} "
                              f"(accepted: 0 .. {world - 1})")

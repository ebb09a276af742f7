"""Atomic checkpoints: weights as safetensors, the rest loadable with ``weights_only=True``.

Layout of one checkpoint folder ``checkpoints/step_00001234/``::

    <module>.safetensors        trainable weights (unwrapped)
    <module>.ema.safetensors    EMA weights, when EMA is on
    optimizer.pt scheduler.pt   state dicts (tensors and plain Python values only)
    rng.pt                      torch / numpy / python RNG states
    trainer_state.json          epoch, batch within epoch, global step, best metric (written last)

A folder is written under a temporary name and renamed into place, so a killed run leaves
either a complete checkpoint or none; ``latest_checkpoint`` ignores incomplete folders. A write
that fails (disk full, unwritable folder) removes its temporary folder, keeps the previous
checkpoint and raises :class:`~laworder.errors.CheckpointWriteError`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from laworder.errors import CheckpointWriteError, DataError, MissingWeightsError, WeightsMismatchError

STATE_FILE = "trainer_state.json"
PREFIX = "step_"


def save_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """State dict -> safetensors (tensors copied to CPU and made contiguous)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    tmp = Path(str(path) + ".tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # never a partial weights file
        if isinstance(exc, OSError) or not isinstance(exc, Exception):
            raise
        raise _as_os_error(exc, path) from exc  # safetensors reports a full disk as its own error type


def _as_os_error(exc: BaseException, path: Path) -> OSError:
    """A library's write failure (torch's RuntimeError "file write failed", safetensors' I/O
    error) as the ``OSError`` it is, naming ``path``; a full disk keeps its ENOSPC."""
    import errno

    text = str(exc)
    code = errno.ENOSPC if "space" in text.lower() or "os error 28" in text.lower() else errno.EIO
    return OSError(code, f"{os.strerror(code)} ({type(exc).__name__}: {text.splitlines()[0] if text else ''})",
                   str(path))


def _torch_save(value: Any, path: Path) -> None:
    try:
        torch.save(value, path)
    except RuntimeError as exc:  # torch's stream writer: "file write failed" on a full disk
        raise _as_os_error(exc, path) from exc


def load_weights(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """safetensors -> module (in place); a clear error names the file when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for a corrupt header
        raise DataError(f"{path}: not a readable safetensors weights file ({exc})") from None
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise WeightsMismatchError(f"{path}: weights do not fit the {type(module).__name__} this run's config describes "
                        f"({' '.join(first)})") from None
    return module


def _write_failed(what: Path, tmp: Path, root: Path, exc: OSError) -> CheckpointWriteError:
    """Remove the half-written ``tmp`` and describe what was kept."""
    shutil.rmtree(tmp, ignore_errors=True)
    kept = latest_checkpoint(root) if root.is_dir() else None
    return CheckpointWriteError(
        f"could not write {what} ({exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}); "
        f"training stopped, last good checkpoint kept: {kept or 'none written yet'}. "
        "Free disk space or fix the folder's permissions, then rerun with --resume")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"]
    np.random.set_state((meta[0], state["numpy_keys"].numpy().astype(np.uint32), meta[1], meta[2], meta[3]))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def write_checkpoint(
    root: Path,
    step: int,
    weights: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``root/step_<step>`` atomically and prune older ones beyond ``keep``."""
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, module in weights.items():
            save_weights(module, tmp / f"{name}.safetensors")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(rng_state(), tmp / "rng.pt")
        with open(tmp / STATE_FILE, "w") as fh:
            json.dump(trainer_state, fh, indent=2)
        _swap_into_place(tmp, final)
    except OSError as exc:
        raise _write_failed(final, tmp, root, exc) from exc
    except BaseException:  # Ctrl-C mid-write: no half-written .tmp-step_* folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_checkpoint(
    folder: Path,
    weights: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore everything written by ``write_checkpoint``; returns the trainer state.

    ``trainer_state.json`` is read and checked first (a dict whose ``global_step`` is the folder's
    step), so a damaged checkpoint stops the resume before anything is loaded or written.

    Raises:
        DataError: a file of the checkpoint is unreadable or inconsistent (named in the message).
        MissingWeightsError / WeightsMismatchError: weights missing or of another model.
    """
    state = read_trainer_state(folder)
    for name, module in weights.items():
        load_weights(module, folder / f"{name}.safetensors")
    for target, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt"), (None, "rng.pt")):
        try:
            loaded = torch.load(folder / name, weights_only=True)
            set_rng_state(loaded) if target is None else target.load_state_dict(loaded)
        except FileNotFoundError:
            raise DataError(f"{folder / name}: missing from the checkpoint; resume from another one "
                            "(--resume PATH) or start again with --overwrite") from None
        except Exception as exc:  # torch raises RuntimeError / UnpicklingError / KeyError / ValueError for damage
            raise DataError(f"{folder / name}: unreadable or from another optimizer/scheduler "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); resume from "
                            "another checkpoint (--resume PATH) or start again with --overwrite") from None
    return state


STATE_KEYS = ("epoch", "batch_in_epoch", "global_step")


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """``folder/trainer_state.json``, checked: a JSON object with non-negative integer ``epoch``,
    ``batch_in_epoch`` and ``global_step``, the step equal to the folder's ``step_N``.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; the checkpoint is incomplete") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: not readable JSON ({exc}); resume from another checkpoint "
                        "(--resume PATH) or start again with --overwrite") from None
    bad = [key for key in STATE_KEYS if not isinstance(state, dict) or isinstance(state.get(key), bool)
           or not isinstance(state.get(key), int) or state[key] < 0] if isinstance(state, dict) else list(STATE_KEYS)
    if bad:
        raise DataError(f"{path}: {', '.join(bad)} missing or not a non-negative integer; resume from another "
                        "checkpoint (--resume PATH) or start again with --overwrite")
    if folder.name.startswith(PREFIX) and folder.name[len(PREFIX):].isdigit() \
            and int(folder.name[len(PREFIX):]) != state["global_step"]:
        raise DataError(f"{path}: global_step {state['global_step']} does not match the folder {folder.name}; "
                        "resume from another checkpoint (--resume PATH) or start again with --overwrite")
    return state


def write_weights_folder(folder: Path, weights: dict[str, nn.Module], meta: dict[str, Any]) -> Path:
    """Write a self-contained weights folder (``best/``, ``last/``) atomically."""
    tmp = folder.parent / f".tmp-{folder.name}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, module in weights.items():
            save_weights(module, tmp / f"{name}.safetensors")
        with open(tmp / "meta.json", "w") as fh:
            json.dump(meta, fh, indent=2)
        _swap_into_place(tmp, folder)
    except OSError as exc:
        raise _write_failed(folder, tmp, folder.parent.parent / "checkpoints", exc) from exc
    except BaseException:  # Ctrl-C mid-write
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete ``tmp`` folder to ``final``; an older ``final`` is moved aside first and
    deleted only once the new one is in place, so one complete copy exists at every moment."""
    old = final.parent / f".old-{final.name}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)

"""Where commands write: never over an input, never over what laworder did not write.

Every writer goes through this module:

- ``check_separate(output, inputs)``: real paths (symlinks resolved); refuses an input that lies
  inside the output (``--overwrite`` would delete it) and an output inside a data input (the next
  read of the input would pick the outputs up).
- ``OutputFolder``: a folder of outputs. It plans the entries it writes (``masks``,
  ``manifest.json``, ...), refuses before any write when the folder is not empty (without
  ``overwrite``), when it holds entries no earlier laworder command listed in its
  ``.laworder-manifest.json`` (with ``overwrite``: a folder is replaced only where laworder wrote
  it), or when a planned entry would land on such a foreign file. The manifest is written first,
  so a killed command leaves only owned files; on an error the command's new files are removed and
  the replaced ones put back.
- ``check_new_file`` / ``check_distinct``: single-file outputs (``--out x.json``, an ``.onnx`` and
  its sidecar) refuse an existing file without ``overwrite`` and outputs landing on one another.
- ``atomic_path`` / ``write_text_atomic`` / ``write_json_atomic``: write a temp file, rename; a
  failed write (a full disk) leaves no partial or 0-byte file and says which path failed.
- ``check_unique_names``: two inputs mapping to one output name are refused naming both.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from laworder.errors import DataError, RunDirError

MANIFEST = ".laworder-manifest.json"
BACKUP = ".laworder-previous"  # owned entries being replaced, put back if the command fails
_QUIET = {MANIFEST, BACKUP, ".laworder.lock"}  # the run lock file (laworder.runlock.LOCK_FILE)

PathLike = str | os.PathLike


def real(path: PathLike) -> Path:
    """``path`` with ``~`` expanded and every symlink resolved (need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def is_within(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (real paths)."""
    path, folder = real(path), real(folder)
    return path == folder or folder in path.parents


def check_separate(output: PathLike, inputs: Mapping[str, PathLike | Iterable[PathLike] | None],
                   what: str = "output", containers: Iterable[str] = ()) -> None:
    """Refuse (``RunDirError``, writing nothing) an input inside ``output`` or ``output`` inside an input.

    ``inputs`` maps a label (``"SOURCE"``, ``"--pool"``) to a path or several; ``containers`` names
    labels (a run folder) whose subfolders may hold outputs (``RUN/eval``), though never the input itself.
    """
    out = real(output)
    containers = set(containers)
    for label, paths in inputs.items():
        if paths is None:
            continue
        for path in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths)):
            source = real(path)
            if source == out or out in source.parents:
                raise RunDirError(f"{label} {path} lies inside the {what} {output}: writing there could replace it; "
                                  "choose a folder outside the inputs")
            if source in out.parents and label not in containers:
                raise RunDirError(f"the {what} {output} lies inside {label} {path}: its outputs would mix with the "
                                  "input; choose a folder outside it")


def check_unique_names(paths: Iterable[PathLike], name: Callable[[Path], str] = lambda p: p.stem,
                       what: str = "inputs", target: str = "output") -> None:
    """Refuse two inputs that would write the same output name (``a.png`` and ``a.jpg`` -> ``masks/a.png``)."""
    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        key = name(path)
        if key in seen:
            raise DataError(f"{what} {seen[key]} and {path} would both write the {target} {key!r}; "
                            "rename one of them (nothing written)")
        seen[key] = path


def check_distinct(outputs: Mapping[str, PathLike]) -> None:
    """Refuse two outputs of one command at the same real path (``seg export m.json``: model = sidecar)."""
    seen: dict[Path, str] = {}
    for label, path in outputs.items():
        key = real(path)
        if key in seen:
            raise RunDirError(f"{label} and {seen[key]} would both be written to {path}; choose another name")
        seen[key] = label


def check_new_file(path: PathLike, overwrite: bool, what: str = "output", flag: str = "--overwrite") -> None:
    """A single output file: refuse a folder, and an existing file without ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{what} {path} is a folder; give the path of the file to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise RunDirError(f"{what} {path} exists; choose another path or pass {flag} to replace it")


@contextlib.contextmanager
def restoring(*paths: PathLike | None) -> Iterator[None]:
    """``with restoring(a, b):`` if the block fails, each file is put back as it was before it (a
    new file removed, a replaced one restored): single-file outputs written before a later step."""
    saved = {}
    for path in paths:
        if path is not None:
            path = Path(path)
            saved[path] = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        for path, data in saved.items():
            with contextlib.suppress(OSError):
                if data is None:
                    path.unlink(missing_ok=True)
                elif not path.is_file() or path.read_bytes() != data:
                    write_bytes_atomic(path, data)
        raise


def _with_path(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (PIL, safetensors and friends often drop the file name)."""
    if exc.filename:
        return exc
    code = exc.errno or errno.EIO
    return OSError(code, exc.strerror or os.strerror(code), str(path))


def _tmp_name(final: Path) -> Path:
    # keep the suffix (writers pick the format from it); hidden, so loaders skip it
    return final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: PathLike) -> Iterator[Path]:
    """``with atomic_path(final) as tmp:`` write ``tmp``; it is renamed to ``final`` when the block
    succeeds and removed when it fails (no partial or 0-byte ``final``; an ``OSError`` names ``final``)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _with_path(exc, final) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, record: Any) -> Path:
    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def read_manifest(folder: PathLike) -> dict | None:
    """The ``.laworder-manifest.json`` of ``folder`` (``None`` when absent or unreadable)."""
    try:
        record = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("entries"), list) else None


def owned_entries(folder: PathLike, kind: str | None = None) -> list[str]:
    """The entries (relative paths) an earlier laworder command of ``kind`` wrote into ``folder``
    (another kind's outputs are not this command's to replace: predictions never replace a pool)."""
    record = read_manifest(folder)
    if not record or (kind is not None and record.get("kind") != kind):
        return []
    return [str(e) for e in record["entries"] if isinstance(e, str) and _safe_rel(e)]


def _safe_rel(entry: str) -> bool:
    parts = Path(entry).parts
    return bool(parts) and not Path(entry).is_absolute() and ".." not in parts and entry not in _QUIET


def _present(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in _QUIET) if folder.is_dir() else []


def _covered(path: str, owned: Iterable[str]) -> bool:
    parts = Path(path).parts
    return any(parts[: len(Path(o).parts)] == Path(o).parts for o in owned)


def _foreign(folder: Path, owned: list[str]) -> list[str]:
    """Files and folders of ``folder`` (relative) that no owned entry covers."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = str(rel_root / name)
            if rel_root == Path(".") and name in _QUIET:
                dirs.remove(name)
            elif _covered(rel, owned):
                dirs.remove(name)
        for name in sorted(files):
            rel = str(rel_root / name)
            if rel_root == Path(".") and name in _QUIET:
                continue
            if not _covered(rel, owned):
                found.append(rel)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class OutputFolder:
    """A folder a command fills with ``planned`` entries (relative paths, files or folders).

    ``check()`` validates and writes nothing; ``with folder:`` (re)checks, moves the owned entries
    it replaces aside, writes the manifest, and on leaving either commits (drops the old entries)
    or, on an exception, removes what the block created and puts the old entries back.
    ``resume=True`` keeps the owned entries (continuing a killed command's outputs);
    ``keep_on_interrupt`` leaves the outputs of a Ctrl-C'd block in place for such a resume.
    """

    def __init__(self, folder: PathLike, planned: Iterable[str], overwrite: bool = False, what: str = "output",
                 inputs: Mapping[str, Any] | None = None, containers: Iterable[str] = (), resume: bool = False,
                 command: str | None = None, hint: str = "choose an empty folder or pass --overwrite",
                 keep_on_interrupt: bool = False, kind: str | None = None):
        self.folder = Path(folder)
        self.planned = list(dict.fromkeys(str(Path(p)) for p in planned))
        self.overwrite, self.what, self.resume, self.hint = overwrite, what, resume, hint
        self.keep_on_interrupt = keep_on_interrupt
        self.kind = kind or what
        self.inputs, self.containers = dict(inputs or {}), tuple(containers)
        self.command = command if command is not None else " ".join(["laworder", *sys.argv[1:]])
        self._replaced: list[str] = []
        self._created_root: Path | None = None

    # -- checks (no writes) ---------------------------------------------------------------
    def check(self) -> None:
        """Raise ``RunDirError`` when writing here could touch a file laworder did not write."""
        folder = self.folder
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise RunDirError(f"{self.what} {folder} is a file; choose a folder path")
        if self.inputs:
            check_separate(folder, self.inputs, self.what, self.containers)
        present = _present(folder)
        if not present:
            return
        owned = owned_entries(folder, self.kind)
        if not (self.overwrite or self.resume):
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise RunDirError(f"{self.what} folder {folder} is not empty ({shown}); {self.hint}")
        record = read_manifest(folder)
        if record is None:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise RunDirError(f"{self.what} folder {folder} holds files laworder did not write there ({shown}; no "
                              f"{MANIFEST}); it replaces only its own outputs: choose another folder or remove them")
        if record.get("kind") != self.kind:
            raise RunDirError(f"{self.what} folder {folder} holds the outputs of `{record.get('kind')}`, not of "
                              f"`{self.kind}`; it replaces only its own kind of outputs: choose another folder")
        clashes = [entry for entry in self.planned
                   if (folder / entry).exists() and not _covered(entry, owned)]
        clashes += [rel for rel in _foreign(folder, owned) if _covered(rel, self.planned)]
        if clashes:
            shown = ", ".join(sorted(set(clashes))[:5])
            raise RunDirError(f"{self.what} folder {folder}: {shown} would be replaced but laworder did not write it "
                              f"(not in {MANIFEST}); move it away or choose another folder")

    # -- writing ---------------------------------------------------------------------------
    def __enter__(self) -> "OutputFolder":
        self.check()
        folder = self.folder
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        self._created_root = missing[-1] if missing else None  # the topmost folder this command creates
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if not self.resume:
                backup = folder / BACKUP
                if backup.exists():
                    shutil.rmtree(backup)  # left by a killed command whose manifest lists its entries again
                # renames only (no disk space needed): the old outputs and their manifest go aside
                for entry in [*owned_entries(folder, self.kind), MANIFEST]:
                    if (folder / entry).exists() or (folder / entry).is_symlink():
                        (backup / entry).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(folder / entry, backup / entry)
                        self._replaced.append(entry)
                self._write_manifest()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def add(self, *entries: str) -> None:
        """Plan more entries while writing (checked like the planned ones)."""
        new = [str(Path(e)) for e in entries if str(Path(e)) not in self.planned]
        for entry in new:
            if (self.folder / entry).exists() and not _covered(entry, self._replaced + self.planned):
                raise RunDirError(f"{self.what} folder {self.folder}: {entry} exists and laworder did not write it")
        if new:
            self.planned += new
            self._write_manifest()

    def path(self, entry: str) -> Path:
        """The path of a planned entry (its parent folder created)."""
        if not _covered(entry, self.planned):
            self.add(entry)
        target = self.folder / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _write_manifest(self) -> None:
        entries = self.planned if not self.resume else sorted(set(self.planned) | set(owned_entries(self.folder, self.kind)))
        write_json_atomic(self.folder / MANIFEST, {"tool": "laworder", "kind": self.kind, "command": self.command,
                                                   "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "entries": entries})

    def __exit__(self, kind, exc, tb) -> None:
        folder, backup = self.folder, self.folder / BACKUP
        if kind is None:
            if backup.exists():
                shutil.rmtree(backup, ignore_errors=True)
            return
        if self.resume or (self.keep_on_interrupt and issubclass(kind, KeyboardInterrupt)):
            return  # a continued or interrupted command's outputs stay, owned, for ``--resume``
        for entry in [*self.planned, MANIFEST]:
            with contextlib.suppress(OSError):
                _remove(folder / entry)
        for entry in self._replaced:  # renames back: works on a full disk too
            with contextlib.suppress(OSError):
                os.replace(backup / entry, folder / entry)
        with contextlib.suppress(OSError):
            if backup.exists():
                shutil.rmtree(backup)
        _prune_empty(folder, self.planned)
        if self._created_root is not None:  # folders this command created, now empty
            for path in [folder, *folder.parents]:
                with contextlib.suppress(OSError):
                    path.rmdir()
                if path == self._created_root:
                    break


def _prune_empty(folder: Path, entries: Iterable[str]) -> None:
    """Remove now-empty parent folders of ``entries`` below ``folder`` (deepest first)."""
    parents = sorted({p for e in entries for p in (folder / e).parents if folder in p.parents},
                     key=lambda p: -len(p.parts))
    for parent in parents:
        with contextlib.suppress(OSError):
            parent.rmdir()

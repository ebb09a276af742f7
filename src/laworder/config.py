"""Dataclass configs loaded from / saved to YAML (the paper's defaults live in the dataclasses)."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from laworder.errors import ConfigError

C = TypeVar("C")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: cannot interpret {value!r} as {annotation}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is float and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is float and isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number (e.g. 3e-4), got {value!r}") from None
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation is int and isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation in (int, float):
        raise ConfigError(f"{where}: expected {'an integer' if annotation is int else 'a number'}, got {value!r}")
    if annotation is bool and not isinstance(value, (bool, str)):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is str and isinstance(value, (dict, list, tuple)):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if annotation is str and not isinstance(value, str):
        return str(value)
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{key: value}}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error listing the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) ready for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of the YAML configs shipped inside the package (``laworder/configs/{seg,exp}``)."""
    return {path.stem: path for path in sorted(PACKAGED_CONFIGS.glob("*/*.yaml"))}


def resolve_config_path(source: str | os.PathLike) -> Path:
    """A config file path, a repo-style ``configs/seg/x.yaml`` path, or a packaged name (``polyps_paper``).

    An existing file wins; otherwise ``configs/<kind>/<name>.yaml`` and bare names are looked up in
    the package, so the paper configs work by name after ``pip install`` from any folder.
    """
    path = Path(source)
    if path.is_file():
        return path
    if "configs" in path.parts:
        last = len(path.parts) - 1 - path.parts[::-1].index("configs")
        inside = PACKAGED_CONFIGS.joinpath(*path.parts[last + 1:])
        if inside.is_file():
            return inside
    if len(path.parts) <= 2 and path.suffix in ("", ".yaml"):
        named = PACKAGED_CONFIGS / path.with_suffix(".yaml") if len(path.parts) == 2 else packaged_configs().get(path.stem)
        if named is not None and named.is_file():
            return named
    known = ", ".join(packaged_configs())
    raise ConfigError(f"config file not found: {path} (nor a packaged config name; packaged: {known})")


# Bounds on every YAML text laworder reads (config files, run configs, ``--set`` values): aliases
# are allowed, but a document whose aliases expand past MAX_YAML_NODES (a "billion laughs" bomb
# under model_kwargs hung ``seg config`` for over a minute at 4 GB) or that refers to itself is
# refused before anything is built from it.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 100_000  # nodes after alias expansion; the largest packaged config has < 300
MAX_YAML_DEPTH = 64  # nesting (through aliases too); packaged configs nest 4 deep


class _YamlBound(Exception):
    """A bound of ``safe_load_bounded`` was exceeded (turned into a ConfigError by the caller)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose composer refuses nesting deeper than ``MAX_YAML_DEPTH``
    (PyYAML composes recursively: 20 000 brackets ended in a RecursionError)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlBound(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int], depth: int = 0) -> int:
    """Nodes of ``node`` with every alias expanded (a shared node counts at each use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _YamlBound("an alias refers to the node that holds it (a recursive structure)")
    if depth > MAX_YAML_DEPTH:
        raise _YamlBound(f"nested more than {MAX_YAML_DEPTH} levels deep through aliases")
    active.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, active, depth + 1)
        if total > MAX_YAML_NODES:
            raise _YamlBound(f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)")
    active.discard(key)
    memo[key] = total
    return total


def safe_load_bounded(text: str | bytes, where: str) -> Any:
    """``yaml.safe_load`` with the bounds above: aliases may not expand past ``MAX_YAML_NODES``
    values nor refer to themselves, nesting stops at ``MAX_YAML_DEPTH``. Every YAML laworder reads
    goes through here.

    Raises:
        ConfigError: a bound exceeded, or not valid YAML (with line and column), naming ``where``.
    """
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here (ReaderError)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    except _YamlBound as exc:
        raise ConfigError(f"{where}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = MAX_YAML_BYTES) -> str:
    """A UTF-8 text file (a UTF-8 or UTF-16 byte-order mark is honoured), size-checked before it is read.

    Raises:
        ConfigError: larger than ``max_bytes`` or not UTF-8 text (with the offending byte and offset).
        OSError: the file cannot be read (a folder, a symlink loop, no permission).
    """
    path = Path(path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{path}: {size} bytes is too large for a {what} (at most {max_bytes}); refused unread")
    raw = path.read_bytes()
    encoding = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not {encoding.removesuffix('-sig').upper()} text (byte "
                          f"0x{raw[exc.start]:02x} at offset {exc.start}); save the {what} as UTF-8") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from a file, or from a packaged config given by name (``resolve_config_path``).

    The file must be UTF-8 text of at most ``MAX_YAML_BYTES``; aliases are bounded (``safe_load_bounded``).
    """
    path = resolve_config_path(path)
    data = safe_load_bounded(read_text_file(path, "config file"), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def read_json_file(path: str | os.PathLike, what: str, expect: type | tuple[type, ...] = dict) -> Any:
    """A JSON file laworder reads back (results, manifests, label declarations), checked enough that
    a malformed one is one ``DataError`` naming it: not UTF-8, not JSON, nested past Python's
    recursion limit, or not of type ``expect`` at the top.

    Raises:
        DataError: as above. OSError: the file cannot be read.
    """
    from laworder.errors import DataError

    path = Path(path)
    try:
        data = json.loads(read_text_file(path, what, max_bytes=None))
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    except ValueError as exc:
        raise DataError(f"{path}: malformed {what}, not JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed {what}: nested too deeply to read") from None
    if not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kinds = {"dict": "a JSON object", "list": "a JSON list"}
        raise DataError(f"{path}: malformed {what}: expected {kinds.get(names, names)} at the top, "
                        f"got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (nested mappings merge, rest replaces).

    An empty mapping replaces rather than merges, so ``--set pools={}`` clears a section.
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _field_annotation(cls: Any, parts: list[str]) -> Any:
    """The type hint of the dataclass field at ``parts`` (``["loop", "lr"]``), or None when unknown."""
    annotation: Any = cls
    for part in parts:
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = inner[0] if len(inner) == 1 else None
        if annotation is None or not dataclasses.is_dataclass(annotation):
            return None
        annotation = typing.get_type_hints(annotation).get(part)
    return annotation


def _is_text_field(annotation: Any) -> bool:
    """``str`` or ``str | None``: a ``--set`` value there stays the text as typed."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and set(args) == {str, type(None)}


def parse_value(raw: str, key: str = "value", annotation: Any = None) -> Any:
    """One ``--set`` value: the text itself for a ``str`` field (``a: b`` stays ``"a: b"``; ``null``
    is None for ``str | None``), YAML otherwise. A YAML mapping or list only from flow syntax
    (``{a: 1}``, ``[1, 2]``): ``a: b`` in an untyped value stays text too."""
    if _is_text_field(annotation):
        return None if annotation is not str and raw.strip() in ("null", "~") else raw
    value = safe_load_bounded(raw, f"--set {key}={raw if len(raw) <= 80 else raw[:79] + '…'}")
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        return raw
    return value


def parse_overrides(items: list[str] | None, cls: Any = None) -> dict[str, Any]:
    """``["loop.lr=1e-3", "model_kwargs.skip_indices=[2,1]"]`` -> nested dict (values parsed as YAML).

    With the config dataclass ``cls``, values of ``str`` fields stay the text as typed (see ``parse_value``).
    """
    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part; use key.sub=value")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier --set {part}=...")
            node = child
        annotation = _field_annotation(cls, parts) if cls is not None else None
        node[parts[-1]] = parse_value(raw, key.strip(), annotation)
    return result


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Dataclass defaults <- YAML file <- nested ``overrides`` (deep-merged, so a partial
    ``loop:`` section keeps the other defaults of the enclosing config)."""
    data = to_dict(cls())
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    data = deep_merge(data, overrides or {})
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config beside a run (atomically)."""
    from laworder.outputs import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))  # no partial file on a full disk


# numpy's default_rng takes 0 .. 2**128-1 and refuses negatives; torch's manual_seed takes
# -2**63 .. 2**64-1; laworder also mixes the seed with step and epoch counts. 0 .. 2**32-1 is the
# range every one of them accepts with room for that arithmetic (and what most tools document).
MAX_SEED = 2**32 - 1


def check_seed(where: str, value: Any, optional: bool = False) -> None:
    """``value`` is an integer seed in ``0 .. MAX_SEED`` (None passes when ``optional``).

    Raises:
        ConfigError: naming ``where``, the value and the accepted range.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
        raise ConfigError(f"{where}={shown} is out of range; accepted: an integer seed 0 .. {MAX_SEED}"
                          + (" or null" if optional else ""))

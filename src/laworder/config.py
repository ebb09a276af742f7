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


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from a file, or from a packaged config given by name (``resolve_config_path``)."""
    path = resolve_config_path(path)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
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
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"--set {key}={raw}: not a valid YAML value ({problem})") from None
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        yaml.safe_dump(to_dict(config), fh, sort_keys=False)
    os.replace(tmp, path)

"""A small name -> factory registry (the timm ``register_model`` pattern).

Segmenters, weighting objectives, dataset layouts and experiments each own one
``Registry``; adding an entry is one decorator, never an ``if name == ...`` chain.
"""

from __future__ import annotations

import inspect
from typing import Callable, Generic, TypeVar

from laworder.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``kind`` names the family in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("order")`` (defaults to the function name)."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if key in self._entries:
                raise ConfigError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = factory
            doc = (factory.__doc__ or "").strip().splitlines()
            self._docs[key] = doc[0] if doc else ""
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._entries[name]

    def create(self, name: str, **kwargs) -> T:
        """Build entry ``name``; keyword arguments its signature does not take are a ``ConfigError``."""
        factory = self.get(name)
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # a builtin without a signature: let the call decide
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                raise ConfigError(f"{self.kind} {name!r} does not accept {sorted(kwargs)}: {exc}") from None
        return factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """name -> first docstring line, for ``laworder ... list``."""
        return {k: self._docs[k] for k in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

"""The segmenter registry ``MODELS``, filled by ``@register_model`` (``create_model`` builds from it,
``laworder.models.factory``).

Adding a segmenter is one new module under ``laworder.models`` with one decorator
(the timm ``register_model`` / smp ``create_model`` pattern); nothing else changes.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from laworder.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name`` (defaults to the function name).

    The factory's first docstring line is what ``list`` commands show.
    """
    return MODELS.register(name)


def list_models() -> list[str]:
    """Sorted names of all registered segmenters."""
    return MODELS.names()

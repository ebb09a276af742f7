"""The segmenter registry: ``create_model(name, **kwargs)`` filled by ``@register_model``.

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


def create_model(name: str, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build the registered segmenter ``name`` with ``kwargs`` (e.g. ``in_channels``, ``num_classes``).

    ``pretrained`` loads weights shipped with the package (``"polyps"`` or ``"order/polyps"``; see
    ``laworder seg list`` and :mod:`laworder.models.pretrained`), returning the model in eval mode.

    Raises:
        ConfigError: ``name`` is not registered, or ``pretrained`` names no shipped weights (the
            messages list the known names), or ``kwargs`` contradict the weights (channels, classes).
    """
    MODELS.get(name)  # unknown model names fail first, listing the registered ones
    if pretrained is not None:
        from laworder.models.pretrained import create_pretrained

        return create_pretrained(name, pretrained, **kwargs)
    return MODELS.create(name, **kwargs)


def list_models() -> list[str]:
    """Sorted names of all registered segmenters."""
    return MODELS.names()

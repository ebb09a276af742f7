"""``create_model(name, pretrained=None, **kwargs)``: a registered segmenter, optionally with the
weights shipped in the package.

Above both ``registry`` (the names) and ``pretrained`` (the shipped weights, which builds through
the registry), so neither imports the other's caller: no import circle.
"""

from __future__ import annotations

from torch import nn

from laworder.models.pretrained import create_pretrained
from laworder.models.registry import MODELS


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
        return create_pretrained(name, pretrained, **kwargs)
    return MODELS.create(name, **kwargs)

"""ORDER (paper §3.2): MK-UNet-T with bidirectional skip attention on chosen decoder skips.

Skip index 0 is the deepest decoder skip (24 channels at H/16 for MK-UNet-T), 3 the shallowest
(4 channels at H/2). The active skips replace MK-UNet's GAG fusion; the others keep it. The same
class builds the Table 8 controls, with SE or CBAM in place of the bidirectional attention.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from laworder.errors import ConfigError
from laworder.models.mk_unet import MK_UNET_T_CHANNELS, GAGFusion, MKUNet
from laworder.models.registry import register_model
from laworder.models.skip_attention import BidirectionalSkipAttention
from laworder.models.skip_controls import CBAMSkip, SqueezeExcitationSkip

NUM_SKIPS = 4

# skip-attention kind -> (channels, num_heads, head_dim) -> fusion module
SKIP_ATTENTIONS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "bidirectional": lambda c, heads, dim: BidirectionalSkipAttention(c, heads, dim),
    "se": lambda c, heads, dim: SqueezeExcitationSkip(c),
    "cbam": lambda c, heads, dim: CBAMSkip(c),
}


def _check_skip_indices(skip_indices: Iterable[int]) -> tuple[int, ...]:
    indices = tuple(skip_indices)
    if len(set(indices)) != len(indices) or any(i not in range(NUM_SKIPS) for i in indices):
        raise ConfigError(
            f"skip_indices must be distinct values in 0..{NUM_SKIPS - 1} (0 = deepest), got {indices}"
        )
    return tuple(sorted(indices))


class ORDER(MKUNet):
    """ORDER: ``B×in_channels×H×W -> logits B×num_classes×H×W`` (H, W divisible by 32).

    Args:
        in_channels, num_classes: as for :class:`MKUNet`.
        skip_indices: decoder skips that get the skip attention (0 = deepest at H/16 ... 3 =
            shallowest at H/2); ``(0, 1)`` is the reported ORDER[0,1], ``()`` the plain backbone.
        num_heads, head_dim: bidirectional attention heads and per-head width (2 × 32).
        skip_attention: ``"bidirectional"`` (ORDER), ``"se"`` or ``"cbam"`` (Table 8 controls).
        channels, gag_kernel, deep_supervision, ...: passed to :class:`MKUNet`.

    ``gate_values`` returns the last forward's confidence gates, ``{skip_index: Tensor(B,)}``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        skip_indices: Sequence[int] = (0, 1),
        num_heads: int = 2,
        head_dim: int = 32,
        skip_attention: str = "bidirectional",
        channels: Sequence[int] = MK_UNET_T_CHANNELS,
        gag_kernel: int = 3,
        **backbone_kwargs,
    ) -> None:
        if skip_attention not in SKIP_ATTENTIONS:
            raise ConfigError(
                f"unknown skip_attention {skip_attention!r}; known: {', '.join(sorted(SKIP_ATTENTIONS))}"
            )
        if num_heads < 1 or head_dim < 1:
            raise ConfigError(f"num_heads and head_dim must be >= 1, got {num_heads}, {head_dim}")
        active = _check_skip_indices(skip_indices)
        make_attention = SKIP_ATTENTIONS[skip_attention]

        def fusion(index: int, width: int) -> nn.Module:
            if index in active:
                return make_attention(width, num_heads, head_dim)
            return GAGFusion(width, gag_kernel)

        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            channels=channels,
            gag_kernel=gag_kernel,
            skip_fusion=fusion,
            **backbone_kwargs,
        )
        self.skip_indices = active
        self.skip_attention = skip_attention

    @property
    def gate_values(self) -> dict[int, torch.Tensor]:
        """Detached confidence gates of the last forward, ``{skip_index: Tensor(B,)}`` in (0, 1).

        Empty before the first forward and for the SE/CBAM controls (they have no gate).
        """
        return {
            index: fusion.last_gate
            for index, fusion in enumerate(self.skip_fusion)
            if getattr(fusion, "last_gate", None) is not None
        }


@register_model("order")
def order(in_channels: int = 3, num_classes: int = 1, skip_indices: Sequence[int] = (0, 1), **kwargs) -> ORDER:
    """ORDER[0,1]: MK-UNet-T + bidirectional skip attention on skips {0,1}: 43K params, 0.12 GFLOPs at 256²."""
    return ORDER(in_channels=in_channels, num_classes=num_classes, skip_indices=skip_indices, **kwargs)


@register_model("order_se")
def order_se(in_channels: int = 3, num_classes: int = 1, skip_indices: Sequence[int] = (0, 1), **kwargs) -> ORDER:
    """ORDER backbone + SE skip on skips {0,1} (Table 8 control)."""
    return ORDER(in_channels, num_classes, skip_indices=skip_indices, skip_attention="se", **kwargs)


@register_model("order_cbam")
def order_cbam(in_channels: int = 3, num_classes: int = 1, skip_indices: Sequence[int] = (0, 1), **kwargs) -> ORDER:
    """ORDER backbone + CBAM skip on skips {0,1} (Table 8 control)."""
    return ORDER(in_channels, num_classes, skip_indices=skip_indices, skip_attention="cbam", **kwargs)

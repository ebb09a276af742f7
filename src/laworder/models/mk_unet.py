"""MK-UNet (Rahman & Marculescu, ICCV-W 2025), the backbone ORDER builds on (paper §3.2.1, eq. 11).

Written from the authors' public definition (SLDGroup/MK-UNet, ``mkunet_network.py``, class
``MK_UNet_T``): five encoder stages of one multi-kernel inverted residual (MKIR) block each, every
one followed by a 2×2 max-pool (skips at H/2..H/16, bottleneck at H/32), and five decoder stages of
channel attention → one shared 7×7 spatial attention → MKIR → bilinear ×2 → ReLU, the first four
fused with their encoder skip through a grouped attention gate (GAG): ``out + GAG(out, skip)``.

The skip fusion is pluggable (``skip_fusion`` factory): ORDER and its SE/CBAM controls replace the
GAG fusion on chosen skips and keep the rest of this network unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from laworder.errors import ConfigError
from laworder.models.base import SegmentationModel
from laworder.models.registry import register_model

MK_UNET_T_CHANNELS = (4, 8, 16, 24, 32)
# Reduction ratios of the decoder channel attentions, deepest stage first (reference CA1..CA5).
CHANNEL_ATTENTION_RATIOS = (16, 16, 16, 8, 4)

# (skip index, channels) -> module with forward(decoder, skip) -> fused feature map.
SkipFusionFactory = Callable[[int, int], nn.Module]


def init_normal_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """The reference's ``init_weights('normal')``: conv weights N(0, std), conv biases 0, BN (1, 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


def init_head_nonnegative_(conv: nn.Conv2d) -> nn.Conv2d:
    """Fold PyTorch's default draw of a 1×1 output head to non-negative weights and zero the bias.

    The MK-UNet heads read post-ReLU features ``f >= 0``. With the default init (weights and bias
    uniform in ±1/√fan_in) a seed can draw every weight and the bias negative (``set_seed(1)``
    does for ``mk_unet``): then every logit ``b + w·f <= b < 0``, nothing is predicted positive,
    and training cannot recover, because the only way to raise a foreground logit is to grow a
    feature the head weighs negatively, so the foreground features are pushed to zero instead
    (dead ReLUs) while the bias follows the background-dominated mean down. With ``w >= 0`` and
    ``b = 0`` every logit starts ``>= 0`` for any input, and the foreground stays expressible as
    "these features are active"; the background is learned by lowering the bias, as in the seeds
    whose default draw happened to be healthy.

    ``|w|`` of the default draw (not a new draw) keeps the magnitudes, and the random stream,
    of the reference init: every other parameter of the model is the same for a given seed.
    """
    with torch.no_grad():
        conv.weight.abs_()
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def init_head_balanced_(conv: nn.Conv2d) -> nn.Conv2d:
    """Give PyTorch's default draw of a 1×1 output head alternating signs over its input channels
    (``+|w|`` on even, ``-|w|`` on odd channels) and a zero bias.

    Like :func:`init_head_nonnegative_` no seed starts dead (a positive weight always exists), but
    the background can also be said with features from the start: ``init_head_nonnegative_``
    leaves the bias as the only way to a negative logit (``b + w·f >= b``), and at lr 1e-4 the bias
    moves about 1e-4 per step, so after the Table 12 schedule background logits were still floored
    near -0.5 (p ≈ 0.38; measured on the polyp protocol runs, bench/results/head_init_ab.md).
    Magnitudes and the random stream are the default draw's, as for the non-negative init.
    """
    with torch.no_grad():
        conv.weight.abs_()
        conv.weight[:, 1::2].neg_()
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


# what a run without model_kwargs.head_init trains (bench/results/seg_protocol_balanced.md: why not balanced)
DEFAULT_HEAD_INIT = "nonnegative"

# model_kwargs.head_init -> how the 1×1 output heads are initialised after PyTorch's default draw
HEAD_INITS: dict[str, Callable[[nn.Conv2d], nn.Conv2d]] = {
    "balanced": init_head_balanced_,
    "nonnegative": init_head_nonnegative_,
    "reference": lambda conv: conv,  # the official MK-UNet: PyTorch's default, never re-initialised
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle of a ``B×C×H×W`` tensor (identity when ``groups == 1``)."""
    if groups == 1:
        return x
    batch, channels, height, width = x.shape
    x = x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    """Bias-free conv (same padding) + BatchNorm (+ ReLU6)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MKIR(nn.Module):
    """Multi-kernel inverted residual block (eq. 11), stride 1, ``B×C_in×H×W -> B×C_out×H×W``.

    1×1 expand (×``expansion``) + BN + ReLU6; parallel depthwise convs, one per kernel size, each
    + BN + ReLU6, summed; channel shuffle (groups = gcd(hidden, C_out)); 1×1 project + BN (no
    activation); residual, through a bias-free 1×1 conv when ``C_in != C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (1, 3, 5), expansion: int = 2) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = conv_bn(in_channels, hidden)
        self.depthwise = nn.ModuleList(conv_bn(hidden, hidden, k, groups=hidden) for k in kernel_sizes)
        self.project = conv_bn(hidden, out_channels, relu6=False)
        self.shuffle_groups = math.gcd(hidden, out_channels)
        self.residual = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.expand(x)
        mixed = sum(branch(hidden) for branch in self.depthwise)
        return self.residual(x) + self.project(channel_shuffle(mixed, self.shuffle_groups))


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x · σ(MLP(avgpool x) + MLP(maxpool x))``, bias-free shared MLP.

    The hidden width is ``C // ratio`` with ``ratio`` capped at ``C`` (so at least 1), as in the reference.
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = channels // min(ratio, channels)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x · σ(conv_k([mean_c x; max_c x]))``, bias-free ``k×k`` conv."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        init_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(stats))


class GAGFusion(nn.Module):
    """MK-UNet skip fusion ``d + GAG(d, e)`` for decoder ``d`` and encoder skip ``e`` (both ``B×C×H×W``).

    GAG(g, x) = x · σ(BN(ψ(ReLU(BN(W_g g) + BN(W_x x))))): W_g, W_x are grouped ``k×k`` convs
    C → C/2 with C/2 groups (plain 1×1 when ``k == 1``), ψ a 1×1 conv C/2 → 1.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        inter = channels // 2
        groups = inter if kernel_size > 1 else 1

        def branch() -> nn.Sequential:
            conv = nn.Conv2d(channels, inter, kernel_size, padding=kernel_size // 2, groups=groups)
            return nn.Sequential(conv, nn.BatchNorm2d(inter))

        self.decoder_proj = branch()
        self.skip_proj = branch()
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1))
        init_normal_(self)

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.psi(F.relu(self.decoder_proj(decoder) + self.skip_proj(skip))))
        return decoder + skip * attention


class MKUNet(SegmentationModel):
    """MK-UNet: ``B×in_channels×H×W -> logits B×num_classes×H×W`` (H, W divisible by 32).

    Args:
        in_channels: image channels.
        num_classes: output channels (logits; sigmoid/softmax belong to the loss or prediction).
        channels: the five stage widths; ``(4, 8, 16, 24, 32)`` is MK-UNet-T.
        kernel_sizes: depthwise kernel sizes of every MKIR block.
        expansion: MKIR expansion factor.
        gag_kernel: kernel of the GAG projections.
        deep_supervision: also build the reference's three auxiliary heads (after decoder stages
            2-4, at H/8, H/4, H/2) and return ``[final, aux_H/2, aux_H/4, aux_H/8]``, all upsampled
            to ``H×W``. Off by default: the reference computes them but returns only the final map,
            and heads whose output is unused would break DDP without ``find_unused_parameters``.
        skip_fusion: factory ``(skip_index, channels) -> module`` for the four decoder skips
            (index 0 = deepest, the ``channels[3]`` skip at H/16; 3 = shallowest at H/2);
            default: GAG fusion everywhere.

        head_init: ``"nonnegative"`` (default): the 1×1 output heads' default draw folded to
            ``|w|`` with zero bias, so no seed starts with every logit negative (a dead head, see
            :func:`init_head_nonnegative_`); ``"reference"``: PyTorch's default, as the official
            MK-UNet (reproduces its draw, dead heads included, e.g. seed 1).

    ``prefers_channels_last``: the training loop runs this family in channels_last memory by
    default (oneDNN's depthwise convolutions; measured in bench/results/train_speed.md).

    Initialisation follows the reference: every conv of the blocks N(0, 0.02) with zero bias, BN
    (1, 0); the 1×1 output heads as ``head_init`` says (the reference never re-inits them).
    """

    prefers_channels_last = True

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        channels: Sequence[int] = MK_UNET_T_CHANNELS,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion: int = 2,
        gag_kernel: int = 3,
        deep_supervision: bool = False,
        skip_fusion: SkipFusionFactory | None = None,
        head_init: str = DEFAULT_HEAD_INIT,
    ) -> None:
        super().__init__(in_channels, num_classes, deep_supervision)
        if head_init not in HEAD_INITS:
            raise ConfigError(f"unknown head_init {head_init!r}; known: {', '.join(sorted(HEAD_INITS))}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5 or min(channels) < 2:
            raise ConfigError(f"channels must be five stage widths >= 2, got {channels}")
        self.channels = channels

        encoder_in = (in_channels, *channels[:-1])
        self.encoder = nn.ModuleList(
            MKIR(c_in, c_out, kernel_sizes, expansion) for c_in, c_out in zip(encoder_in, channels)
        )
        decoder_in = channels[::-1]  # 32, 24, 16, 8, 4 for MK-UNet-T
        decoder_out = (*channels[-2::-1], channels[0])  # 24, 16, 8, 4, 4: the last stage keeps C0
        self.decoder = nn.ModuleList(
            MKIR(c_in, c_out, kernel_sizes, expansion) for c_in, c_out in zip(decoder_in, decoder_out)
        )
        self.channel_attention = nn.ModuleList(
            ChannelAttention(c, ratio) for c, ratio in zip(decoder_in, CHANNEL_ATTENTION_RATIOS)
        )
        self.spatial_attention = SpatialAttention(7)  # one module shared by all five decoder stages

        def gag(index: int, width: int) -> nn.Module:
            return GAGFusion(width, gag_kernel)

        make_fusion = skip_fusion or gag
        self.skip_fusion = nn.ModuleList(make_fusion(i, c) for i, c in enumerate(decoder_out[:4]))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in decoder_out[1:4]) if deep_supervision else None
        )
        self.head_init = head_init
        for head in [self.head, *(self.aux_heads or [])]:
            HEAD_INITS[head_init](head)

    def forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        out = x
        for stage in self.encoder:
            out = F.max_pool2d(stage(out), 2)
            skips.append(out)
        out = skips.pop()  # the bottleneck, H/32
        skips.reverse()  # index 0 = deepest skip (H/16)

        aux_logits = []
        for index, stage in enumerate(self.decoder):
            out = self.spatial_attention(self.channel_attention[index](out))
            out = F.relu(F.interpolate(stage(out), scale_factor=2.0, mode="bilinear"))
            if index == len(skips):
                break
            if self.aux_heads is not None and index >= 1:
                aux_logits.insert(0, self.aux_heads[index - 1](out))  # finest first
            out = self.skip_fusion[index](out, skips[index])
        return self.head(out), aux_logits


@register_model("mk_unet")
def mk_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> MKUNet:
    """MK-UNet-T (channels 4-8-16-24-32, GAG skips): 27.4K params, 0.10 GFLOPs (conv/linear) at 256²."""
    return MKUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)

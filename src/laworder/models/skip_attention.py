"""ORDER's selective bidirectional skip attention with a confidence gate (paper §3.2.2, eq. 12-17).

One similarity ``S = Q_d K_eᵀ / √d_h`` per head is shared by both directions:
``R_d = softmax(S) V_e`` (decoder reads the encoder) and ``R_e = softmax(Sᵀ) V_d`` (encoder reads
the decoder). Both reads are projected back to ``C`` channels and added residually, scaled by one
per-sample confidence ``c``; the fused skip is ``d' + e'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laworder.models.mk_unet import init_normal_

# torch.export rejects tensor attributes assigned in forward; older torch has no is_exporting.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


class RMSNorm2d(nn.Module):
    """Token-wise RMSNorm of ``B×C×H×W``: each pixel's C-vector over its RMS, times a learned gain.

    Written out instead of ``nn.RMSNorm`` so the TorchScript ONNX exporter handles it at opset 17.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_rms = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * inv_rms * self.weight.view(1, -1, 1, 1)


class ConfidenceGate(nn.Module):
    """Eq. 17: ``c = σ(W₂ ReLU(W₁ [GAP(e); GAP(d)]))``, one scalar per sample, ``B×1×1×1``.

    W₁ is a 1×1 conv 2C → max(1, C/4), W₂ a 1×1 conv to 1 channel, both with bias.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 4)
        self.reduce = nn.Conv2d(2 * channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, 1, 1)
        # Small weights and a zero bias start every gate at c ≈ σ(0) = 0.5: the middle of the
        # sigmoid, where it is steepest, so the gate can learn to open or close from step one
        # (a negative bias would start it near-closed, where σ' is small and it learns slowly).
        init_normal_(self)

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([skip.mean(dim=(2, 3), keepdim=True), decoder.mean(dim=(2, 3), keepdim=True)], dim=1)
        return torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))


class BidirectionalSkipAttention(nn.Module):
    """Skip fusion ``d' + e'`` with ``d' = d + c·Δ_d``, ``e' = e + c·Δ_e`` (eq. 12-16).

    Args:
        channels: C of the decoder feature ``d`` and the encoder skip ``e`` (both ``B×C×H×W``).
        num_heads: attention heads H_a.
        head_dim: per-head width d_h (the projections have ``num_heads * head_dim`` channels).

    After every forward, ``last_gate`` holds the detached per-sample gate values, shape ``(B,)``.
    With explicit attention maps memory grows as ``B · H_a · (HW)²`` (at 256² input the H/8 skip
    holds 1024 tokens, the H/4 one 4096: the 8 GB of ORDER[2,1] in Table 9); the fused kernels
    used here keep it linear in HW.
    """

    def __init__(self, channels: int, num_heads: int = 2, head_dim: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.norm_decoder = RMSNorm2d(channels)
        self.norm_skip = RMSNorm2d(channels)
        self.decoder_qv = nn.Conv2d(channels, 2 * inner, 1)  # Q_d and V_d
        self.skip_kv = nn.Conv2d(channels, 2 * inner, 1)  # K_e and V_e
        self.proj_decoder = nn.Conv2d(inner, channels, 1)  # Proj_d (eq. 15)
        self.proj_skip = nn.Conv2d(inner, channels, 1)  # Proj_e
        self.gate = ConfidenceGate(channels)
        self.last_gate: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Q/K/V: Xavier-uniform, as nn.MultiheadAttention does. The backbone's N(0, 0.02) on a
        # 16-24-channel input would give attention logits of std ~0.04, i.e. uniform attention
        # (a global average) with vanishing gradients into Q and K; Xavier gives logits of std ~0.4.
        for conv in (self.decoder_qv, self.skip_kv):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        # Output projections: zero, so Δ_d = Δ_e = 0 at start and the stage begins exactly at the
        # plain additive skip d + e that the paper says a closed gate falls back to (the
        # zero-initialised residual branch of Fixup / ControlNet). The projections get gradient at
        # once (R_d, R_e are non-zero); Q/K/V and the gate from the first update on.
        for conv in (self.proj_decoder, self.proj_skip):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B×(H_a·d_h)×H×W -> B×H_a×N×d_h`` with unit stride along d_h.

        The fused CPU attention kernel needs a contiguous last dimension (otherwise SDPA falls
        back to the unfused math path); token-major ``B×N×C`` is free for channels_last input.
        """
        tokens = x.flatten(2).transpose(1, 2).contiguous()  # B×N×C; no copy when x is channels_last
        return tokens.reshape(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``B×H_a×N×d_h -> B×(H_a·d_h)×H×W`` with the spatial size of ``like`` (channels_last memory)."""
        batch, _, height, width = like.shape
        tokens = x.transpose(1, 2).reshape(batch, height, width, self.num_heads * self.head_dim)
        return tokens.permute(0, 3, 1, 2)

    def _attend(self, query_d: torch.Tensor, key_e: torch.Tensor, value_d: torch.Tensor,
                value_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 13-14 on ``B×H_a×N×d_h`` tensors: ONE similarity S, read in both directions.

        ``R_d = softmax(S) V_e`` with ``S = Q_d K_eᵀ/√d_h``, and ``R_e = softmax(Sᵀ) V_d`` where
        ``Sᵀ = K_e Q_dᵀ/√d_h``: the same S, so both reads are PyTorch's fused attention with the
        roles of Q_d and K_e swapped. The fused kernels never materialise the N×N maps (the
        explicit ``softmax(S) @ V`` held B·H_a·N² floats per direction, ~270 MB at 256², batch
        16) and are faster on CPU; outputs and gradients equal the explicit path within float32
        rounding (tests/test_models.py checks both, and against eq. 12-17 written with einsum).
        """
        read_decoder = F.scaled_dot_product_attention(query_d, key_e, value_e)  # eq. 14: R_d
        read_skip = F.scaled_dot_product_attention(key_e, query_d, value_d)  # R_e, same S transposed
        return read_decoder, read_skip

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        query_d, value_d = self.decoder_qv(self.norm_decoder(decoder)).chunk(2, dim=1)
        key_e, value_e = self.skip_kv(self.norm_skip(skip)).chunk(2, dim=1)
        query_d, value_d = self._split_heads(query_d), self._split_heads(value_d)
        key_e, value_e = self._split_heads(key_e), self._split_heads(value_e)

        # Batched at inference too: the fused kernels hold no N×N maps, so the former
        # one-sample-at-a-time loop (which kept only one sample's maps alive) is not needed.
        read_decoder, read_skip = self._attend(query_d, key_e, value_d, value_e)
        delta_decoder = self.proj_decoder(self._merge_heads(read_decoder, decoder))  # eq. 15
        delta_skip = self.proj_skip(self._merge_heads(read_skip, skip))

        confidence = self.gate(decoder, skip)  # eq. 17, B×1×1×1
        if not _is_exporting():
            self.last_gate = confidence.detach().flatten()
        return (decoder + confidence * delta_decoder) + (skip + confidence * delta_skip)  # eq. 16

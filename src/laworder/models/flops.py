"""Parameter and FLOP counts of segmenters, in two named conventions.

* ``conv_linear_flops``: 2 × the multiply-accumulates of Conv/Linear layers only, from forward
  hooks. This is the convention of the paper's tables (MK-UNet-T 0.10 G, ORDER[0,1] 0.11 G at
  256²): attention matmuls, norms, activations, pooling, resizing and biases are not counted.
* ``full_flops``: every FLOP ``torch.utils.flop_counter.FlopCounterMode`` sees (convolutions and
  all matmuls, also 2 per multiply-accumulate), so it includes ORDER's attention: two fused
  ``scaled_dot_product_attention`` calls, ``Q Kᵀ`` + ``softmax(S) V`` and ``K Qᵀ`` + ``softmax(Sᵀ) V``
  (the fused kernels recompute S rather than store it: four N×N×d_h products per head, not three);
  it is what the attention really costs. PyTorch's counter has no formula for the CPU flash
  kernel, so one is registered here (the same as for the CUDA kernels).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (forward): ``QKᵀ`` and ``PV``."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_SDPA_CPU_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    kernel = math.prod(module.kernel_size)
    if isinstance(module, _CONV_TRANSPOSE):
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def _dummy_forward(model: nn.Module, input_size: Sequence[int]) -> None:
    """One no-grad eval-mode forward on zeros; the model's training flag is restored."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        model.train(was_training)


def conv_linear_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 256, 256)) -> int:
    """2 × MACs of all Conv1d/2d/3d, ConvTranspose and Linear layers in one forward of ``input_size``.

    The paper's convention (attention matmuls, norms, activations and biases not counted), for the
    whole batch given in ``input_size``.
    """
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        macs += _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, *_CONV, *_CONV_TRANSPOSE))]
    try:
        _dummy_forward(model, input_size)
    finally:
        for handle in handles:
            handle.remove()
    return 2 * macs


def full_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 256, 256)) -> int:
    """All FLOPs ``FlopCounterMode`` counts in one forward (convs + every matmul, incl. attention)."""
    counter = FlopCounterMode(display=False, custom_mapping=_SDPA_CPU_FLOPS)
    with counter:
        _dummy_forward(model, input_size)
    return counter.get_total_flops()

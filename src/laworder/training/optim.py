"""Optimizer and LR-schedule registries (timm ``OptimInfo``-style: one entry per name)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from laworder.registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULERS: Registry[torch.optim.lr_scheduler.LRScheduler] = Registry("scheduler")


@OPTIMIZERS.register("ademamix")
def _ademamix(params: Iterable, lr: float, weight_decay: float, **kwargs: Any) -> torch.optim.Optimizer:
    """AdEMAMix (pytorch-optimizer) set up like the reference implementation (Pagliardini et al.).

    pytorch-optimizer defaults to alpha=5 with weight decay coupled into the gradient; the
    reference (apple/ml-ademamix) uses alpha=2 and AdamW-style decoupled decay. The paper
    names the optimizer, not the variant, so we follow the reference: alpha=2, decoupled decay,
    betas (0.9, 0.999, 0.9999), no alpha/beta3 warm-up. Override through ``optimizer_kwargs``.
    """
    from pytorch_optimizer import AdEMAMix

    options = dict(betas=(0.9, 0.999, 0.9999), alpha=2.0, weight_decouple=True, foreach=False)
    options.update(kwargs)
    return AdEMAMix(params, lr=lr, weight_decay=weight_decay, **options)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable, lr: float, weight_decay: float, **kwargs: Any) -> torch.optim.Optimizer:
    """torch AdamW (the ControlNet / diffusers default)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)


def _warmup_then(fn, warmup_steps: int):
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return fn(step - warmup_steps)

    return factor


@SCHEDULERS.register("cosine")
def _cosine(optimizer, total_steps: int, min_lr: float, warmup_steps: int = 0):
    """Cosine annealing from ``lr`` to ``min_lr`` over the run, stepped every optimizer step."""
    base_lr = optimizer.param_groups[0]["lr"]
    floor = min_lr / base_lr if base_lr > 0 else 0.0
    span = max(1, total_steps - warmup_steps)

    def cosine(step: int) -> float:
        progress = min(1.0, max(0.0, step / span))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then(cosine, warmup_steps))


@SCHEDULERS.register("constant")
def _constant(optimizer, total_steps: int, min_lr: float, warmup_steps: int = 0):
    """Constant learning rate (after an optional linear warm-up)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then(lambda step: 1.0, warmup_steps))

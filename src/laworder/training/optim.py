"""Optimizer and LR-schedule registries (timm ``OptimInfo``-style: one entry per name)."""

from __future__ import annotations

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


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable, lr: float, weight_decay: float, **kwargs: Any) -> torch.optim.Optimizer:
    """torch SGD (momentum 0.9 unless given): its updates are linear in the gradient, so two runs
    whose gradients differ by float rounding stay that close, unlike Adam-type sign-like steps."""
    kwargs.setdefault("momentum", 0.9)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **kwargs)


# The schedules come from the libraries' schedule factories (LambdaLR, state saved with the
# checkpoint). Warm-up is linear from 0 at step 0 (diffusers/transformers convention).
@SCHEDULERS.register("cosine")
def _cosine(optimizer, total_steps: int, min_lr: float, warmup_steps: int = 0):
    """Cosine annealing from ``lr`` to ``min_lr`` over the run (after an optional linear warm-up),
    stepped every optimizer step. transformers' min-lr variant of the cosine schedule: diffusers'
    ``get_cosine_schedule_with_warmup`` has no floor, and the paper's recipe anneals to 1e-6."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    base_lr = optimizer.param_groups[0]["lr"]
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
        min_lr_rate=min_lr / base_lr if base_lr > 0 else 0.0,
    )


@SCHEDULERS.register("constant")
def _constant(optimizer, total_steps: int, min_lr: float, warmup_steps: int = 0):
    """Constant learning rate (after an optional linear warm-up): diffusers' schedule."""
    from diffusers.optimization import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps)

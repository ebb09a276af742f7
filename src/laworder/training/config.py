"""The training-loop configuration shared by every task (segmentation, synthesis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


REPORT_TO = ("none", "tensorboard", "wandb", "csv")  # accelerate trackers (laworder.training.tracking)


@dataclass
class LoopConfig:
    """Everything the one training core needs; saved as ``loop`` inside each run's config.

    Effective batch = ``batch_size`` × number of processes; the learning rate is *not*
    rescaled with the number of processes (set ``lr`` yourself when you scale out).
    """

    output_dir: str = "runs/default"
    epochs: int = 100
    max_steps: int | None = None  # when set, overrides ``epochs``
    batch_size: int = 16  # per process
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "ademamix"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "cosine"
    min_lr: float = 1e-6
    warmup_steps: int = 0
    seed: int = 0
    grad_clip: float | None = None
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch
    keep_checkpoints: int = 1
    log_every: int = 10
    snapshot_every: int = 0  # steps between ``task.on_log`` calls; 0 = never
    val_every: int = 1  # epochs
    monitor: str = ""  # e.g. "val_dice"; empty = no best-model tracking
    monitor_mode: str = "max"
    ema_decay: float | None = None  # the EMA's (maximum) decay; None = no EMA
    ema_warmup: bool = False  # diffusers' EMAModel(use_ema_warmup=True): decay 1 − (1 + k/inv_gamma)^−power, capped
    ema_power: float = 2 / 3
    ema_inv_gamma: float = 1.0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (passed to accelerate)
    cpu: bool = False  # force CPU even when a GPU is visible
    num_workers: int = 0
    progress: bool = True
    resume: bool = False
    resume_from: str | None = None  # with ``resume``: a checkpoint folder of this run; None/"latest" = newest
    report_to: str = "tensorboard"  # "none" | "tensorboard" | "wandb" | "csv" (accelerate trackers, <run>/logs)
    gradient_checkpointing: bool = False  # trade compute for memory where a module supports it (diffusers)
    # None = what the task prefers (the MK-UNet family: yes, measured ~1.8x faster CPU steps)
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the training step; falls back to eager with one log line
    overwrite: bool = False

"""The one training loop: accelerate, tqdm, atomic checkpoints, exact resume, NaN guard.

Both segmentation and diffusion training run through ``fit``; a task only says what one
step and one validation pass do (see ``laworder.training.task``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from laworder.config import save_config, to_dict
from laworder.errors import CheckpointWriteError, ConfigError, NonFiniteLossError, RunDirError, TrainingInterrupted
from laworder.paths import resolve
from laworder.progress import fmt, interactive, say
from laworder.runlock import run_lock
from laworder.training import checkpoint as ckpt
from laworder.training.config import LoopConfig
from laworder.training.fast import CompiledStep, to_channels_last, wants_channels_last
from laworder.training.optim import OPTIMIZERS, SCHEDULERS
from laworder.training.sampling import EpochBatchSampler, step_generator
from laworder.training.task import TrainTask
from laworder.training.tracking import LOG_DIR, RunTracking

logger = logging.getLogger(__name__)

RUN_FILES = ("checkpoints", "model", "metrics.jsonl", "config.yaml", "run.json", "snapshots", "validation", "eval.json",
             LOG_DIR)


@dataclass
class FitResult:
    run_dir: Path
    global_step: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    last_logs: dict[str, float]
    seconds: float


def run_inputs(data: Any, extra: Any = ()) -> dict[str, Any]:
    """The folders a training run reads (``--data``, ``extra_train``) as ``check_run_dir`` inputs:
    its run folder may neither hold them (``--overwrite`` would delete them) nor lie inside them."""
    def folders(value: Any) -> list[str]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [str(v) for v in values if isinstance(v, (str, Path)) and v and not str(v).startswith("procedural")]

    return {"--data": folders(data), "extra_train": folders(extra)}


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, inputs: dict[str, Any] | None = None) -> list[str]:
    """The run files already in ``run_dir``; raises ``RunDirError`` (writing nothing) when the folder
    holds another run and neither ``resume`` nor ``overwrite`` is set, is not a folder, holds or lies
    inside one of the ``inputs`` (label -> path(s): the data), or would be replaced with
    ``overwrite`` without being a laworder run (no ``config.yaml``: its ``model/``, ``logs/`` ... are
    someone else's)."""
    from laworder.outputs import check_separate

    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output {run_dir} is a file, not a folder; choose a folder path")
    if inputs:
        check_separate(run_dir, inputs, what="run folder")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not (resume or overwrite):
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    if existing and overwrite and not resume and not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} holds {', '.join(existing)} but no config.yaml: not a laworder run, so "
                          "--overwrite would delete files laworder did not write; choose another folder")
    return existing


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder unless asked to resume or overwrite (call it holding
    the folder's ``run_lock``: with ``overwrite`` it deletes the previous run's files)."""
    existing = check_run_dir(run_dir, resume, overwrite)
    if overwrite and not resume:
        for name in existing:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _truncate_log(path: Path, after_step: int) -> None:
    """On resume, drop log lines written after the checkpoint so curves have no duplicates."""
    if not path.exists():
        return
    from laworder.outputs import write_text_atomic

    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            step = json.loads(line).get("step", 0) if line.strip() else None
        except (ValueError, AttributeError):
            step = None  # a line cut by a kill: dropped
        if isinstance(step, (int, float)) and step <= after_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))  # never a truncated log on a full disk


def _make_accelerator(config: LoopConfig, tracking: RunTracking | None = None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != config.mixed_precision and PartialState().num_processes == 1:
        # accelerate keeps one process-wide state: a second run in the same (single) process with
        # another precision would otherwise be refused
        AcceleratorState._reset_state()
    log_with = tracking.log_with() if tracking is not None else None
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision, log_with=log_with,
                              project_dir=str(config.output_dir))
    if accelerator.device.type == "cpu" and config.mixed_precision == "bf16" and not _cpu_has_native_bf16():
        logger.warning("--mixed-precision bf16 on a CPU without bf16 units (no AVX512_BF16/AMX): oneDNN "
                       "emulates it, so training is slower than float32 here (bench/results/synth_speed.md)")
    return accelerator


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def resolve_resume(config: LoopConfig) -> Path | None:
    """The checkpoint ``loop.resume_from`` names (a ``step_*`` folder of this run), checked before
    anything is written; ``None`` means the latest one (or a fresh start when there is none).

    Raises:
        RunDirError: the path is not a complete checkpoint inside ``<output_dir>/checkpoints``.
    """
    if not config.resume_from or config.resume_from == "latest":
        return None
    folder = Path(config.resume_from).expanduser()
    root = Path(config.output_dir) / "checkpoints"
    if resolve(folder).parent != resolve(root) or resolve(folder) not in [resolve(p) for p in ckpt.list_checkpoints(root)]:
        known = ", ".join(p.name for p in ckpt.list_checkpoints(root)) or "none"
        raise RunDirError(
            f"--resume {config.resume_from} is not a checkpoint of this run: expected a complete "
            f"{root}/step_* folder (present: {known}); nothing was written"
        )
    return folder


class _InterruptRequest:
    """Ctrl-C while training: the first one asks the loop to stop at the next step boundary, where a
    checkpoint is consistent (weights, optimizer, counters and running logs of the same step), so
    the resumed run is bit-identical to an uninterrupted one; a second one stops at once.

    The handler is installed only in the main thread (``signal`` allows no other), for the
    duration of ``_fit``; the previous handler comes back afterwards. A process told to ignore
    Ctrl-C (``SIG_IGN``: ``nohup``, a background job of a non-interactive shell, where a Ctrl-C
    meant for the foreground command reaches it too) keeps ignoring it, as Python itself does."""

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "_InterruptRequest":
        current = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and current not in (None, signal.SIG_IGN):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        print("\nlaworder: interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (which stops at a step boundary);
    a worker killed by it would end the run with "worker exited unexpectedly" instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cleanup_temporary(run_dir: Path) -> list[Path]:
    """Remove what an interrupted write left in a run folder: ``.tmp-*`` folders and files under
    ``checkpoints/`` and ``model/``; an ``.old-X`` whose ``X`` is missing (interrupted between the
    two renames of a swap) is put back. Returns the paths removed."""
    removed = []
    for parent in (run_dir / "checkpoints", run_dir / "model"):
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            if path.name.startswith(".old-"):
                final = parent / path.name[len(".old-"):]
                if not final.exists():
                    os.replace(path, final)
                    continue
            elif not path.name.startswith(".tmp-"):
                for leftover in path.glob("*.tmp") if path.is_dir() else []:
                    leftover.unlink(missing_ok=True)
                    removed.append(leftover)
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _enable_gradient_checkpointing(task: TrainTask) -> None:
    """diffusers-style ``enable_gradient_checkpointing()`` on every trained module that has it."""
    supported = [name for name, module in task.modules.items() if hasattr(module, "enable_gradient_checkpointing")]
    if not supported:
        raise ConfigError(f"gradient checkpointing: none of the trained modules ({', '.join(task.modules)}) supports it")
    for name in supported:
        task.modules[name].enable_gradient_checkpointing()


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(
    task: TrainTask,
    train_dataset: Dataset,
    config: LoopConfig,
    val_dataset: Dataset | None = None,
    run_config: Any = None,
) -> FitResult:
    """Train ``task`` on ``train_dataset`` according to ``config``.

    ``run_config`` (a dataclass) is written to ``<output_dir>/config.yaml``; default: ``config``.
    Weights land in ``<output_dir>/model/{last,best}/<module>.safetensors`` (the EMA weights when EMA is
    on, the raw ones then in ``model/raw/``); resumable state in ``<output_dir>/checkpoints/``.
    The folder's ``run_lock`` is held throughout (one writer).

    Raises:
        ConfigError: an out-of-range loop setting (checked before anything is written).
        RunDirError: the folder holds another run (without ``resume`` / ``overwrite``).
        RunLockedError: another live process writes into the folder.
        NonFiniteLossError / CheckpointWriteError: a NaN/inf loss or a failed checkpoint write;
            the last good checkpoint is kept.
    """
    from laworder.training.tracking import check_report_to
    from laworder.training.validate import check_loop_config

    check_loop_config(config)
    run_dir = Path(config.output_dir)
    check_run_dir(run_dir, config.resume, config.overwrite)
    check_report_to(config.report_to)
    if config.resume:
        resolve_resume(config)
    main_process = os.environ.get("RANK", "0") == "0"  # under `accelerate launch` only rank 0 locks
    with run_lock(run_dir, "training") if main_process else contextlib.nullcontext(), _InterruptRequest() as interrupt:
        try:
            return _fit(task, train_dataset, config, val_dataset, run_config, interrupt)
        except (OSError, CheckpointWriteError):
            if main_process and not config.resume and not ckpt.list_checkpoints(run_dir / "checkpoints"):
                _remove_failed_start(run_dir)  # a full disk before the first checkpoint: the rerun starts clean
            raise


def _remove_failed_start(run_dir: Path) -> None:
    """Remove the run files a new run wrote before it failed with nothing resumable (without
    ``resume`` every run file in the folder is this run's: ``check_run_dir`` refused others)."""
    for name in RUN_FILES:
        target = run_dir / name
        with contextlib.suppress(OSError):
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink(missing_ok=True)
    for leftover in run_dir.glob(".*.tmp-*"):  # temp files of atomic writes
        with contextlib.suppress(OSError):
            leftover.unlink()


def _fit(task: TrainTask, train_dataset: Dataset, config: LoopConfig, val_dataset: Dataset | None,
         run_config: Any, interrupt: _InterruptRequest | None = None) -> FitResult:
    started = time.time()
    run_dir = Path(config.output_dir)
    tracking = RunTracking(config.report_to, run_dir)  # a missing tracker package stops here, before any write
    resume_folder = resolve_resume(config) if config.resume else None
    accelerator = _make_accelerator(config, tracking)
    if accelerator.is_main_process:
        prepare_run_dir(run_dir, config.resume, config.overwrite)
        if not config.resume:
            save_config(run_config if run_config is not None else config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()

    task.accelerator = accelerator
    if config.gradient_checkpointing:
        _enable_gradient_checkpointing(task)
    for module in task.frozen_modules().values():
        module.to(accelerator.device)
    if wants_channels_last(task, config.channels_last):
        # before DDP wraps the modules and the optimizer sees them; the frozen networks too (a VAE,
        # a frozen UNet the ControlNet's gradient flows back through): their convolutions count
        to_channels_last({**task.frozen_modules(), **task.modules})
    names = list(task.modules)
    prepared = accelerator.prepare(*[task.modules[n] for n in names])
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    task.modules = dict(zip(names, prepared))
    compiled_step = CompiledStep(task, config.compile)

    optimizer = OPTIMIZERS.create(
        config.optimizer, params=list(task.optimizer_parameters()), lr=config.lr,
        weight_decay=config.weight_decay, **config.optimizer_kwargs,
    )
    sampler = EpochBatchSampler(
        len(train_dataset), config.batch_size, config.seed,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    steps_per_epoch = sampler.batches_per_epoch()
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    total_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = SCHEDULERS.create(
        config.scheduler, optimizer=optimizer, total_steps=total_steps,
        min_lr=config.min_lr, warmup_steps=config.warmup_steps,
    )
    # The optimizer and scheduler stay unwrapped: one step per batch, no accumulation, so
    # accelerate's wrappers would add nothing but another state format to save.
    ema = _make_ema(task, config)
    trainable = list(task.optimizer_parameters())

    state = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "best_metric": None, "best_step": None}
    checkpoint_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    resume_step = None
    resumed_running: dict[str, Any] = {}
    if config.resume:
        found = resume_folder or ckpt.latest_checkpoint(checkpoint_root)
        if found is not None:
            state.update(ckpt.read_checkpoint(found, _weights(task, ema), optimizer, scheduler))
            resumed_running = state.pop("running_logs", None) or {}
            resume_step = state["global_step"]
            if accelerator.is_main_process:
                _truncate_log(metrics_path, state["global_step"])
                _drop_later_checkpoints(checkpoint_root, found)
                logger.info("resumed from %s (step %d)", found, state["global_step"])
        elif accelerator.is_main_process:
            logger.warning("--resume given but no checkpoint in %s: starting from scratch", checkpoint_root)
        if accelerator.is_main_process:
            # written once the checkpoint has loaded: a resume refused for another model or a damaged
            # checkpoint leaves the finished run's config as it was
            save_config(run_config if run_config is not None else config, run_dir / "config.yaml")
    tracking.start(accelerator, to_dict(run_config if run_config is not None else config), resume_step)

    # training time adds up over resumes (run.json "seconds"), so a killed run still reports its cost
    seconds_before = float(state.pop("seconds", 0.0))

    def elapsed() -> float:
        return seconds_before + time.time() - started

    loader_kwargs = dict(num_workers=config.num_workers, persistent_workers=False,
                         worker_init_fn=_ignore_sigint if config.num_workers else None)
    progress = None
    # a bar on a terminal; in a log (stderr not a terminal) one line per epoch instead (below)
    epoch_lines = config.progress and accelerator.is_main_process and not interactive()
    if config.progress and accelerator.is_main_process and interactive():
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["global_step"], desc=f"train {run_dir.name}", dynamic_ncols=True)

    running: dict[str, float] = dict(resumed_running.get("sum", {}))
    running_count = int(resumed_running.get("count", 0))
    last_logs: dict[str, float] = {}
    saved_step: list[int] = []  # the step of the last checkpoint this session wrote

    def checkpoint_now() -> None:
        _sync_buffers(task, accelerator)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # the running log sums travel with the checkpoint, so the first log line after a resume
            # averages the same steps as in an uninterrupted run
            ckpt.write_checkpoint(checkpoint_root, state["global_step"], _weights(task, ema), optimizer, scheduler,
                                  {**state, "seconds": elapsed(), "running_logs": {"sum": running, "count": running_count}},
                                  keep=config.keep_checkpoints)
        saved_step[:] = [state["global_step"]]
        accelerator.wait_for_everyone()

    def stop_requested() -> bool:
        """A Ctrl-C was asked for (on any process: all stop at the same step)."""
        flag = bool(interrupt is not None and interrupt.requested)
        if accelerator.num_processes > 1:
            flag = bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="max").item())
        return flag

    def interrupted(saved_now: bool) -> TrainingInterrupted:
        last = ckpt.latest_checkpoint(checkpoint_root) if accelerator.is_main_process else None
        where = (f"checkpoint saved at the interrupt: {last}" if saved_now else
                 f"stopped mid-step, last checkpoint: {last}" if last else "no checkpoint written yet (a resume starts over)")
        return TrainingInterrupted(f"training interrupted at step {state['global_step']} of {total_steps}; {where}",
                                   str(run_dir), str(last) if last else None, saved_now)

    consistent = True  # every piece of state describes the same step: a checkpoint now is exact
    try:
        for module in task.modules.values():
            module.train()
        while state["global_step"] < total_steps and state["epoch"] < total_epochs:
            sampler.set_epoch(state["epoch"], start_batch=state["batch_in_epoch"])
            loader = DataLoader(train_dataset, batch_sampler=sampler, **loader_kwargs)
            for batch in loader:
                step = state["global_step"]
                consistent = False
                batch = _to_device(batch, accelerator.device)
                task.global_step, task.total_steps = step, total_steps  # for step-dependent schedules

                def forward_backward():  # re-run eagerly, same generator, if torch.compile fails here
                    generator = step_generator(config.seed, step, accelerator.process_index)
                    with accelerator.autocast():
                        output = task.training_step(batch, generator)
                    loss_all = accelerator.gather(output.loss.detach().float().reshape(1))
                    if not torch.isfinite(loss_all).all():
                        last = ckpt.latest_checkpoint(checkpoint_root)
                        raise NonFiniteLossError(
                            f"non-finite loss {loss_all.tolist()} at step {step} (epoch {state['epoch']}, "
                            f"batch {state['batch_in_epoch']}); training stopped. Last good checkpoint: "
                            f"{last if last else 'none written yet'}. Lower the learning rate, set grad_clip, "
                            "or check the data (`laworder data check`)."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(output.loss)
                    return output, loss_all

                output, loss_all = compiled_step.run(forward_backward)
                # the norm (before clipping) over the trained parameters only, logged every step: a
                # frozen UNet must neither dilute the norm nor be clipped with the ControlNet
                grad_norm = accelerator.clip_grad_norm_(trainable, config.grad_clip or math.inf)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    for name, averaged in ema.items():
                        averaged.update_parameters(task.unwrapped(name))
                state["global_step"] += 1
                state["batch_in_epoch"] += 1

                running["loss"] = running.get("loss", 0.0) + float(loss_all.mean())
                running["grad_norm"] = running.get("grad_norm", 0.0) + float(grad_norm)
                for key, value in output.logs.items():
                    running[key] = running.get(key, 0.0) + float(value)
                running_count += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{float(loss_all.mean()):.4f}", epoch=state["epoch"])
                at_end = state["global_step"] >= total_steps
                if state["global_step"] % max(1, config.log_every) == 0 or at_end:
                    last_logs = {k: v / running_count for k, v in running.items()}
                    record = {"step": state["global_step"], "epoch": state["epoch"],
                              "lr": scheduler.get_last_lr()[0], **last_logs, "time": elapsed()}
                    _append_log(accelerator, metrics_path, record)
                    tracking.scalars(record, state["global_step"])
                    running, running_count = {}, 0
                consistent = True  # weights, optimizer, counters and running logs all at this step
                if config.snapshot_every and state["global_step"] % config.snapshot_every == 0 and accelerator.is_main_process:
                    _track_snapshot(tracking, task.on_log(state["global_step"], run_dir, batch), state["global_step"])
                if accelerator.is_main_process:
                    periodic = task.periodic_logs(state["global_step"], run_dir)
                    if periodic:
                        _append_log(accelerator, metrics_path, {"step": state["global_step"], "epoch": state["epoch"], **periodic})
                        tracking.scalars(periodic, state["global_step"])
                if config.checkpoint_every and state["global_step"] % config.checkpoint_every == 0 and not at_end:
                    checkpoint_now()
                if at_end:
                    break
                if stop_requested():  # Ctrl-C: stop at this step boundary with a checkpoint of it
                    if saved_step != [state["global_step"]]:
                        checkpoint_now()
                    raise interrupted(True)
            consistent = False
            epoch_done = state["batch_in_epoch"] >= steps_per_epoch
            if epoch_done:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            if epoch_lines and (epoch_done or state["global_step"] >= total_steps):
                scores = ", ".join(f"{k} {fmt(v)}" for k, v in last_logs.items() if k in ("loss", "grad_norm"))
                say(f"train {run_dir.name}: epoch {state['epoch']}/{total_epochs}, step {state['global_step']}/{total_steps}"
                    + (f", {scores}" if scores else "") + f" ({elapsed():.0f} s)")
            if val_dataset is not None and (epoch_done and state["epoch"] % max(1, config.val_every) == 0 or state["global_step"] >= total_steps):
                _validate(task, val_dataset, config, state, accelerator, run_dir, metrics_path, ema, tracking)
            if not config.checkpoint_every or state["global_step"] >= total_steps:
                checkpoint_now()
            consistent = True
            if state["global_step"] < total_steps and stop_requested():
                if saved_step != [state["global_step"]]:
                    checkpoint_now()
                raise interrupted(True)
        _sync_buffers(task, accelerator)

        if accelerator.is_main_process:
            ckpt.write_weights_folder(run_dir / "model" / "last", _export_weights(task, ema), {
                "step": state["global_step"], "epoch": state["epoch"], "weights": "ema" if ema else "raw"})
            if ema:  # the raw weights beside the EMA ones, so either can be sampled or compared
                ckpt.write_weights_folder(run_dir / "model" / "raw", {name: task.unwrapped(name) for name in task.modules},
                                          {"step": state["global_step"], "epoch": state["epoch"], "weights": "raw"})
            with open(run_dir / "run.json", "w") as fh:
                json.dump({**state, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                           "num_processes": accelerator.num_processes,
                           "effective_batch_size": config.batch_size * accelerator.num_processes,
                           "device": str(accelerator.device), "compiled": compiled_step.active,
                           "compile_fallback": compiled_step.reason, "seconds": elapsed(),
                           "session_seconds": time.time() - started}, fh, indent=2)
    except TrainingInterrupted:
        if accelerator.is_main_process:
            cleanup_temporary(run_dir)
        _finish_quietly(tracking)
        raise
    except KeyboardInterrupt:
        # a Ctrl-C that did not wait for the step boundary (a second one, or one raised in a callback)
        saved_now = False
        if consistent and not (interrupt is not None and interrupt.forced) and accelerator.num_processes == 1:
            if saved_step != [state["global_step"]]:
                checkpoint_now()
            saved_now = True
        if accelerator.is_main_process:
            cleanup_temporary(run_dir)
        _finish_quietly(tracking)
        raise interrupted(saved_now) from None
    finally:
        if progress is not None:
            progress.close()
    tracking.finish()
    accelerator.wait_for_everyone()
    return FitResult(run_dir, state["global_step"], state["epoch"], state["best_metric"], state["best_step"], last_logs, time.time() - started)


def _finish_quietly(tracking: RunTracking) -> None:
    """Flush the trackers of an interrupted run (what they hold so far stays readable)."""
    try:
        tracking.finish()
    except Exception:  # noqa: BLE001  the interrupt is what the user must hear about
        logger.warning("could not close the trackers of the interrupted run", exc_info=True)


def _sync_buffers(task: TrainTask, accelerator) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes.

    DDP keeps parameters identical but each rank updates its BN statistics from its own
    shard; like timm's ``distribute_bn(reduce=True)`` we average them before anything is
    validated or saved, so every rank holds the same model.
    """
    if accelerator.num_processes == 1:
        return
    for name in task.modules:
        for buffer in task.unwrapped(name).buffers():
            if buffer.is_floating_point():
                buffer.copy_(accelerator.reduce(buffer.detach().clone(), reduction="mean"))


def _validate(task, val_dataset, config, state, accelerator, run_dir, metrics_path, ema, tracking=None) -> None:
    _sync_buffers(task, accelerator)
    loader = DataLoader(val_dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    for module in task.modules.values():
        module.eval()
    with torch.no_grad():
        metrics = task.validate(_DeviceLoader(loader, accelerator.device))
    for module in task.modules.values():
        module.train()
    if not metrics:
        return
    _append_log(accelerator, metrics_path, {"step": state["global_step"], "epoch": state["epoch"], **metrics})
    if tracking is not None:
        tracking.scalars(metrics, state["global_step"])
    improved = False
    if config.monitor:
        if config.monitor not in metrics:
            raise KeyError(f"monitor {config.monitor!r} not among validation metrics {sorted(metrics)}")
        value = float(metrics[config.monitor])
        improved = _improved(value, state["best_metric"], config.monitor_mode)
        if improved:
            state["best_metric"], state["best_step"] = value, state["global_step"]
            if accelerator.is_main_process:
                ckpt.write_weights_folder(run_dir / "model" / "best", _export_weights(task, ema), {
                    "step": state["global_step"], "epoch": state["epoch"], config.monitor: value})
    if accelerator.is_main_process:  # even with --no-progress a run says what it decided
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
        best = ""
        if config.monitor:
            best = ("; new best" if improved else "" if state["best_metric"] is None else
                    f"; best {fmt(float(state['best_metric']))} at step {state['best_step']}")
        say(f"validate {run_dir.name} at step {state['global_step']} (epoch {state['epoch']}): {shown}{best}")


def _drop_later_checkpoints(root: Path, resumed: Path) -> None:
    """Resuming from an earlier checkpoint abandons the later ones (their steps are re-run), so
    pruning by step number cannot later keep a stale checkpoint over a new one."""
    for later in ckpt.list_checkpoints(root):
        if int(later.name[len(ckpt.PREFIX):]) > int(resumed.name[len(ckpt.PREFIX):]):
            logger.warning("resuming from %s: removing the later checkpoint %s", resumed.name, later.name)
            shutil.rmtree(later, ignore_errors=True)


def _track_snapshot(tracking: RunTracking, snapshot: dict[str, Any] | None, step: int) -> None:
    """Send what ``task.on_log`` returned (``{"images": {tag: H×W×C}, "scalars": {...}}``) to the trackers."""
    if not snapshot:
        return
    tracking.images(snapshot.get("images", {}), step)
    if snapshot.get("scalars"):
        tracking.scalars(snapshot["scalars"], step)


class _DeviceLoader:
    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield _to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)


def _append_log(accelerator, path: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _make_ema(task: TrainTask, config: LoopConfig):
    if config.ema_decay is None:
        return None
    from laworder.training.ema import make_ema

    return {name: make_ema(task.unwrapped(name), config.ema_decay, config.ema_warmup, config.ema_power, config.ema_inv_gamma)
            for name in task.modules}


def _weights(task: TrainTask, ema) -> dict[str, torch.nn.Module]:
    """Everything whose state must survive a resume."""
    weights = {name: task.unwrapped(name) for name in task.modules}
    for name, averaged in (ema or {}).items():
        weights[f"{name}.ema"] = averaged
    return weights


def _export_weights(task: TrainTask, ema) -> dict[str, torch.nn.Module]:
    """What users load: the EMA weights when EMA is on (under the plain module names)."""
    if ema:
        return {name: averaged.module for name, averaged in ema.items()}
    return {name: task.unwrapped(name) for name in task.modules}

"""Ctrl-C during training (issue 24 item 6): a checkpoint at the interrupt (or the last one named),
no temporary folder left, the ``--resume`` command printed, exit 130, and the resumed run exact."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from laworder.errors import TrainingInterrupted
from laworder.training import fit
from laworder.training import checkpoint as ckpt
from laworder.training.checkpoint import latest_checkpoint, list_checkpoints
from test_training_core import PointDataset, RegressionTask, _config, _weights


class SigintTask(RegressionTask):
    """Sends itself SIGINT (a real Ctrl-C) during training step ``at`` (1-based)."""

    def __init__(self, at: int, twice: bool = False):
        super().__init__()
        self.at, self.twice = at, twice

    def training_step(self, batch, generator):
        output = super().training_step(batch, generator)
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
            if self.twice:
                os.kill(os.getpid(), signal.SIGINT)
        return output


class CallbackInterruptTask(RegressionTask):
    """``periodic_logs`` (a callback after the step) raises KeyboardInterrupt at step ``at``."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def periodic_logs(self, step, run_dir):
        if step == self.at:
            raise KeyboardInterrupt
        return {}


def _train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


def _no_temporary(run_dir: Path) -> None:
    left = [p for p in run_dir.rglob("*") if p.name.startswith((".tmp-", ".old-")) or p.name.endswith(".tmp")]
    assert left == [], left


def _assert_same_run(full: Path, resumed: Path) -> None:
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _train_lines(full) == _train_lines(resumed)  # same log lines, the same numbers (times aside)


@pytest.fixture(autouse=True)
def ctrl_c_delivered():
    """Python's own Ctrl-C handler for each test, whatever the test process inherited (a background
    job of a non-interactive shell starts with SIGINT ignored, which the loop respects)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it(tmp_path):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kwargs = dict(epochs=3, checkpoint_every=4, log_every=1)
    result = fit(SigintTask(7), PointDataset(), _config(tmp_path / "b", **kwargs), val_dataset=PointDataset(8))
    assert result.global_step == 15 and (result.run_dir / "model" / "last").is_dir()  # ignored, as asked
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("at, log_every", [(7, 1), (3, 2), (5, 4)])
def test_sigint_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, at, log_every):
    """First Ctrl-C: the step finishes, a checkpoint of it is written, training stops; resuming
    gives the uninterrupted run's weights and metrics.jsonl (running log sums travel along)."""
    kwargs = dict(epochs=3, checkpoint_every=4, log_every=log_every)
    before = signal.getsignal(signal.SIGINT)
    full = fit(RegressionTask(), PointDataset(), _config(tmp_path / "a", **kwargs), val_dataset=PointDataset(8))
    with pytest.raises(TrainingInterrupted) as caught:
        fit(SigintTask(at), PointDataset(), _config(tmp_path / "b", **kwargs), val_dataset=PointDataset(8))
    run = tmp_path / "b" / "run"
    assert caught.value.saved_now and caught.value.checkpoint == str(run / "checkpoints" / f"step_{at:08d}")
    assert f"step {at} of 15" in str(caught.value) and "saved at the interrupt" in str(caught.value)
    assert latest_checkpoint(run / "checkpoints").name == f"step_{at:08d}"
    assert not (run / "model" / "last").exists()  # the run did not pretend to finish
    _no_temporary(run)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    resumed = fit(RegressionTask(), PointDataset(), _config(tmp_path / "b", resume=True, **kwargs),
                  val_dataset=PointDataset(8))
    assert resumed.global_step == full.global_step
    _assert_same_run(full.run_dir, resumed.run_dir)


def test_keyboard_interrupt_in_a_callback_checkpoints_that_step(tmp_path):
    full = fit(RegressionTask(), PointDataset(), _config(tmp_path / "a", checkpoint_every=4))
    with pytest.raises(TrainingInterrupted) as caught:
        fit(CallbackInterruptTask(6), PointDataset(), _config(tmp_path / "b", checkpoint_every=4))
    run = tmp_path / "b" / "run"
    assert caught.value.saved_now and latest_checkpoint(run / "checkpoints").name == "step_00000006"
    _no_temporary(run)
    resumed = fit(RegressionTask(), PointDataset(), _config(tmp_path / "b", checkpoint_every=4, resume=True))
    _assert_same_run(full.run_dir, resumed.run_dir)


def test_second_sigint_stops_at_once_and_names_the_last_checkpoint(tmp_path):
    with pytest.raises(TrainingInterrupted) as caught:
        fit(SigintTask(6, twice=True), PointDataset(), _config(tmp_path, checkpoint_every=4))
    run = tmp_path / "run"
    assert not caught.value.saved_now
    assert caught.value.checkpoint == str(run / "checkpoints" / "step_00000004")
    assert "stopped mid-step, last checkpoint" in str(caught.value)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004"]
    _no_temporary(run)


def test_interrupt_inside_a_checkpoint_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Ctrl-C while ``step_*`` is being written: its ``.tmp-step_*`` folder is removed, the
    previous checkpoint kept and named."""
    original, calls = ckpt.save_weights, {"n": 0}

    def interrupted_save(module, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint, half written
            original(module, path)
            raise KeyboardInterrupt
        original(module, path)

    monkeypatch.setattr(ckpt, "save_weights", interrupted_save)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(RegressionTask(), PointDataset(), _config(tmp_path, checkpoint_every=4))
    run = tmp_path / "run"
    _no_temporary(run)
    # the step-8 write was interrupted, then retried as the checkpoint at the interrupt
    assert caught.value.saved_now and latest_checkpoint(run / "checkpoints").name == "step_00000008"


def test_no_checkpoint_yet_says_a_resume_starts_over(tmp_path):
    with pytest.raises(TrainingInterrupted, match="no checkpoint written yet"):
        fit(SigintTask(1, twice=True), PointDataset(), _config(tmp_path, checkpoint_every=100))
    _no_temporary(tmp_path / "run")


def test_swap_interrupted_between_renames_is_repaired(tmp_path):
    from laworder.training.loop import cleanup_temporary

    model = tmp_path / "model"
    (model / ".old-best").mkdir(parents=True)  # the old best moved aside, the new one never renamed in
    (model / ".old-best" / "model.safetensors").write_bytes(b"weights")
    (model / ".tmp-best").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step_00000009").mkdir(parents=True)
    removed = cleanup_temporary(tmp_path)
    assert (model / "best" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in removed) == [".tmp-best", ".tmp-step_00000009"]
    _no_temporary(tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["seg", "train", "--data", "d", "-o", "run"], "laworder seg train --data d -o run --resume"),
    (["seg", "train", "-o", "run", "--overwrite"], "laworder seg train -o run --resume"),
    (["seg", "train", "-o", "my run", "--resume", "run/checkpoints/step_00000004"], "laworder seg train -o 'my run' --resume"),
    (["exp", "run", "--resume", "table.yaml"], "laworder exp run table.yaml --resume"),
    (["synth", "train", "--resume", "--debug", "-o", "r"], "laworder synth train -o r --resume"),
])
def test_resume_command(argv, expected):
    assert TrainingInterrupted.resume_command(argv) == expected

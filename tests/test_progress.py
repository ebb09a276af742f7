"""Progress fits where it goes: bars on a terminal, plain lines in a log, rounded scores, and a
line per validation even with progress off."""

from __future__ import annotations

import logging
import warnings

import pytest

from laworder import progress as progress_module
from laworder.progress import LineProgress, fmt, progress, route_warnings


def test_line_progress_prints_a_tenth_at_a_time_without_carriage_returns(capsys):
    items = list(progress(range(100), desc="predict", unit="image"))  # pytest's stderr is no terminal
    assert items == list(range(100))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 10
    assert lines[0].startswith("predict: 10/100 image") and lines[-1].startswith("predict: 100/100 image")


def test_counted_progress_shows_rounded_postfix_and_closes_once(capsys):
    bar = progress(total=3, desc="export", unit="step", lines=3)
    assert isinstance(bar, LineProgress)
    bar.set_postfix(loss=0.123456789)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "loss 0.1235" in lines[-1]


def test_disabled_progress_is_the_bare_iterable():
    data = [1, 2]
    assert progress(data, enabled=False) is data and progress(total=3, enabled=False) is None


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(progress_module, "interactive", lambda: True)
    from tqdm.auto import tqdm

    bar = progress(total=2, desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


def test_fmt_rounds_scores_only():
    assert fmt(0.41234567) == "0.4123" and fmt(12) == "12" and fmt("a") == "a" and fmt(123456.7) == "1.2346e+05"


def test_warnings_and_log_records_go_through_tqdm_write(monkeypatch, capsys):
    written = []
    monkeypatch.setattr(progress_module, "say", written.append)
    old_show = warnings.showwarning
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        route_warnings()
        warnings.warn("careful", UserWarning, stacklevel=1)
        logging.getLogger("laworder.test").warning("logged")
    finally:
        warnings.showwarning = old_show
        for h in list(root.handlers):
            if isinstance(h, progress_module._TqdmLogHandler) or h is handler:
                root.removeHandler(h)
    assert any("careful" in line for line in written) and any("logged" in line for line in written)


def test_training_says_each_validation_with_progress_off(tmp_path, capsys):
    from laworder.data.procedural import generate_procedural
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.train import train_segmenter
    from laworder.training import LoopConfig

    data = generate_procedural(tmp_path / "proc", num_images=8, size=32, seed=0)
    loop = LoopConfig(output_dir=str(tmp_path / "run"), epochs=2, batch_size=4, progress=False, monitor="val_dice", cpu=True)
    train_segmenter(SegTrainConfig(data=str(data), model="mk_unet", image_size=32, loop=loop))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("validate run")]
    assert len(lines) == 2 and "val_dice" in lines[0] and "epoch 1" in lines[0] and "\r" not in err
    assert "train run: epoch" not in err  # progress off: no per-epoch lines
    value = lines[0].split("val_dice ")[1].split(",")[0].split(";")[0]
    assert len(value.replace(".", "").lstrip("0")) <= 4  # rounded to 4 significant digits


def test_training_in_a_log_prints_one_line_per_epoch(tmp_path, capsys):
    from laworder.data.procedural import generate_procedural
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.train import train_segmenter
    from laworder.training import LoopConfig

    data = generate_procedural(tmp_path / "proc", num_images=8, size=32, seed=0)
    loop = LoopConfig(output_dir=str(tmp_path / "run"), epochs=2, batch_size=4, progress=True, monitor="val_dice", cpu=True)
    train_segmenter(SegTrainConfig(data=str(data), model="mk_unet", image_size=32, loop=loop))
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines() if line.startswith("train run: epoch")] == \
        ["train run: epoch 1/2", "train run: epoch 2/2"]

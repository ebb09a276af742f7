"""Run-folder locks, checkpoint disk faults, the image pixel cap, predict's input pre-check,
``--set`` strings, and pools / experiments resumed after a real ``kill -9``."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laworder.cli import main
from laworder.errors import CheckpointWriteError, DataError, RunLockedError

HELPERS = Path(__file__).parent / "helpers"
SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    """The test's environment (conftest's private cache folder included) for a child process."""
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


# --- one writer per run folder ------------------------------------------------------------------
def _holder(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from laworder.runlock import acquire; acquire(sys.argv[1], 'holder'); "
            "print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_writer_is_refused_with_holder_pid_and_host(tmp_path):
    from laworder.runlock import acquire, release

    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError) as refused:
            acquire(tmp_path / "run")
        assert f"pid {holder.pid}" in str(refused.value) and socket.gethostname() in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    acquire(tmp_path / "run")  # the kernel dropped the killed holder's lock
    release(tmp_path / "run")
    assert not (tmp_path / "run" / ".laworder.lock").exists()


def test_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    from laworder.runlock import LOCK_FILE, acquire, read_holder, release

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    acquire(tmp_path)
    assert read_holder(tmp_path)["pid"] == os.getpid()
    assert f"left by pid {dead.pid}" in capsys.readouterr().err
    release(tmp_path)


def test_overwrite_never_deletes_a_locked_run(tmp_path):
    from laworder.training import LoopConfig, fit

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "keep.txt").write_text("the other process's work")
    (run / "config.yaml").write_text("{}\n")  # a laworder run (without it --overwrite is refused anyway)
    holder = _holder(run)
    try:
        with pytest.raises(RunLockedError):
            fit(None, None, LoopConfig(output_dir=str(run), overwrite=True, progress=False))
    finally:
        holder.kill()
        holder.wait()
    assert (run / "checkpoints" / "keep.txt").read_text() == "the other process's work"


def test_lock_is_reentrant_within_a_process(tmp_path):
    from laworder.runlock import is_locked, run_lock

    with run_lock(tmp_path):
        with run_lock(tmp_path):
            assert is_locked(tmp_path)
        assert is_locked(tmp_path)
    assert not is_locked(tmp_path)


# --- resource faults ----------------------------------------------------------------------------
def test_disk_full_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    from laworder.training import checkpoint as ckpt
    from laworder.training import fit
    from test_training_core import PointDataset, RegressionTask, _config

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # the second checkpoint (3 torch.save per checkpoint)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    config = _config(tmp_path, epochs=1, max_steps=4, checkpoint_every=1, monitor="")
    with pytest.raises(CheckpointWriteError) as failed:
        fit(RegressionTask(), PointDataset(), config)
    message = str(failed.value)
    assert "No space left on device" in message and "step_00000001" in message and "--resume" in message
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000001"]  # no half-written folder left
    state = json.loads((root / "step_00000001" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    resumed = fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1, max_steps=4, checkpoint_every=1,
                                                           monitor="", resume=True))
    assert resumed.global_step == 4


def test_unwritable_run_folder_is_one_line_from_the_cli(tmp_path, capsys, monkeypatch):
    from laworder.training import checkpoint as ckpt

    def unwritable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "checkpoints/.tmp-step")

    monkeypatch.setattr(ckpt, "save_weights", unwritable)
    data = tmp_path / "data"
    from laworder.data.procedural import generate_procedural

    generate_procedural(data, num_images=4, size=32, seed=0)
    code = main(["seg", "train", "--data", str(data), "--model", "mk_unet", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "4", "-o", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Permission denied" in err and "last good checkpoint kept" in err


def test_image_over_the_pixel_cap_is_refused_by_name_without_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    from laworder.data import io

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))  # 900 M pixels by its header, ~100 bytes on disk
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(DataError, match="bomb.png") as refused:
        io.read_image(bomb)
    assert "pixel" in str(refused.value) and not decoded
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    io.set_max_image_pixels(100)
    try:
        with pytest.raises(DataError, match=r"small.png: 20×20 = 400 pixels is over the cap of 100"):
            io.read_image(small)
    finally:
        io.set_max_image_pixels(None)
    monkeypatch.setenv("LAWORDER_MAX_IMAGE_PIXELS", "399")
    with pytest.raises(DataError, match="over the cap of 399"):
        io.read_mask(small)


def png_header(width: int, height: int) -> bytes:
    """An 8-bit grayscale PNG claiming any size, with a few bytes of pixel data (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --- --set keeps strings ------------------------------------------------------------------------
def test_set_value_of_a_string_field_stays_the_text(tmp_path):
    from laworder.config import load_config, parse_overrides
    from laworder.experiments.runner import config_class_of, load_experiment
    from laworder.seg.config import SegTrainConfig

    overrides = parse_overrides(["data=a: b", "loop.output_dir=yes", "loop.lr=3e-4"], SegTrainConfig)
    config = load_config(SegTrainConfig, None, overrides)
    assert config.data == "a: b" and config.loop.output_dir == "yes" and config.loop.lr == 3e-4
    assert parse_overrides(["x=a: b"]) == {"x": "a: b"}  # untyped: block YAML stays text too
    assert parse_overrides(["x={a: 1}"]) == {"x": {"a": 1}}
    spec = tmp_path / "exp.yaml"
    spec.write_text("kind: seg_compare\n")
    items = ["description=Table 4: step-matched", "seg.split_seed=null"]
    overrides = parse_overrides(items, config_class_of(spec, parse_overrides(items)))
    _, _, exp_config = load_experiment(spec, overrides)
    assert exp_config.description == "Table 4: step-matched"


# --- inputs before outputs: seg predict ----------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from laworder.data.procedural import generate_procedural

    root = tmp_path_factory.mktemp("predict")
    data = generate_procedural(root / "data", num_images=4, size=32, seed=0)
    run = root / "run"
    assert main(["seg", "train", "--data", str(data), "--model", "mk_unet", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "4", "-o", str(run), "--no-progress"]) == 0
    return run, data


def test_predict_with_a_truncated_image_writes_nothing_or_skips_it(seg_run, tmp_path, capsys):
    run, data = seg_run
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((data / "images").iterdir())[:3]
    for path in sources:
        (images / path.name).write_bytes(path.read_bytes())
    broken = images / sources[1].name
    broken.write_bytes(broken.read_bytes()[:60])
    out = tmp_path / "out"
    assert main(["seg", "predict", str(run), str(images), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert sources[1].name in err and "1 of 3 images unreadable" in err and not out.exists()
    assert main(["seg", "predict", str(run), str(images), str(out), "--no-progress", "--skip-unreadable"]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == [sources[0].name, sources[2].name]
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["count"] == 1 and str(broken) in skipped["skipped"]
    # a second run into the same folder is refused unless --overwrite
    assert main(["seg", "predict", str(run), str(images), str(out), "--no-progress", "--skip-unreadable"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["seg", "predict", str(run), str(images), str(out), "--no-progress", "--skip-unreadable",
                 "--overwrite"]) == 0


# --- resumes after kill -9 ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    from laworder.data.procedural import generate_procedural

    root = tmp_path_factory.mktemp("pool_resume")
    data = generate_procedural(root / "data", num_images=6, size=32, seed=1)
    run = root / "synth"
    assert main(["synth", "train", "--data", str(data), "--objective", "uniform", "--resolution", "32",
                 "--set", "backbone_kwargs.preset=tiny", "--max-steps", "2", "--batch-size", "2",
                 "-o", str(run), "--no-progress"]) == 0
    return run, data


def _kill_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPERS / "kill_script.py"), *args], env=_env(), capture_output=True,
                          text=True, timeout=600)


def _sample(run: Path, data: Path, out: Path, *extra: str) -> int:
    """In-process ``synth sample`` with the kill script's settings."""
    return main(["synth", "sample", str(run), str(data), str(out), "--steps", "2", "--batch-size", "2", "--device", "cpu",
                 "--no-progress", *extra])


def test_pool_killed_mid_batch_resumes_to_identical_images(synth_run, tmp_path, capsys):
    run, data = synth_run
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _sample(run, data, reference) == 0
    stopped = _kill_script("sample", str(run), str(data), str(killed), "--kill-at-write", "4")
    assert stopped.returncode == -9  # SIGKILL inside the second batch's second mask write
    assert not (killed / "manifest.json").exists() and len(list((killed / "images").iterdir())) == 4
    assert _sample(run, data, killed) == 2 and "--resume" in capsys.readouterr().err
    assert _sample(run, data, killed, "--resume") == 0
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (reference / sub).iterdir())
        assert names == sorted(p.name for p in (killed / sub).iterdir()) and len(names) == 6
        for name in names:
            assert (reference / sub / name).read_bytes() == (killed / sub / name).read_bytes(), name
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["items"] == json.loads((reference / "manifest.json").read_text())["items"]
    assert not (killed / ".laworder.lock").exists()


def test_experiment_killed_between_rows_resumes_at_the_row(tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(
        "kind: seg_compare\nseeds: [0]\nvariants:\n  - {name: A, model: mk_unet}\n  - {name: B, model: mk_unet, "
        "model_kwargs: {}}\nseg:\n  data: procedural:10:32:3\n  image_size: 32\n  loop: {epochs: 1, batch_size: 4}\n")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["exp", "run", str(spec), "--output", str(reference), "--no-progress"]) == 0
    assert _kill_script("exp", str(spec), str(killed), "--kill-at-train", "2").returncode == -9
    finished = sorted(p.parent.parent.name for p in (killed / "rows").rglob("run.json"))
    assert finished == ["a"]  # row A done, row B killed as it started
    assert main(["exp", "run", str(spec), "--output", str(killed), "--no-progress", "--resume"]) == 0
    rows = [json.loads((folder / "results.json").read_text())["results"]["rows"] for folder in (reference, killed)]
    assert [r["protocol"]["summary"] for r in rows[0]] == [r["protocol"]["summary"] for r in rows[1]]

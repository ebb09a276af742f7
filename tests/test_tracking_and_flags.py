"""Experiment trackers (TensorBoard / CSV / W&B refusal), first-class training flags, `--resume PATH`,
`seg config` / `synth config`, packaged configs by name."""

from __future__ import annotations

import json

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from laworder.cli import main as cli
from laworder.config import load_config, packaged_configs, resolve_config_path
from laworder.data.procedural import generate_procedural
from laworder.errors import ConfigError, RunDirError
from laworder.seg.config import SegTrainConfig
from laworder.seg.train import train_segmenter
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.task import train_synth
from laworder.training import LoopConfig
from laworder.training.tracking import check_report_to, read_csv_log


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_procedural(tmp_path_factory.mktemp("data") / "proc", num_images=12, size=32, seed=0)


def _seg(data: Path, out: Path, **loop) -> SegTrainConfig:
    base = dict(output_dir=str(out), epochs=2, batch_size=4, lr=3e-3, progress=False, monitor="val_dice", cpu=True)
    base.update(loop)
    return SegTrainConfig(data=str(data), model="order", image_size=32, loop=LoopConfig(**base))


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_loss_lr_val_and_order_gates(tiny_data, tmp_path):
    run = train_segmenter(_seg(tiny_data, tmp_path / "run", report_to="tensorboard", log_every=1))
    curves = _scalars(run.run_dir / "logs")
    for tag in ("train/loss", "train/lr", "val/dice", "val/loss", "train/gate_0", "train/gate_1"):
        assert tag in curves, f"{tag} missing from {sorted(curves)}"
    steps = run.fit.global_step
    assert [step for step, _ in curves["train/loss"]] == list(range(1, steps + 1))
    assert all(0.0 < value < 1.0 for _, value in curves["train/gate_0"])
    assert (run.run_dir / "metrics.jsonl").is_file(), "metrics.jsonl stays"


def test_csv_tracker_curves_have_no_duplicates_after_resume(tiny_data, tmp_path):
    config = _seg(tiny_data, tmp_path / "run", report_to="csv", log_every=1, keep_checkpoints=5)
    train_segmenter(config)
    first = read_csv_log(tmp_path / "run" / "logs" / "metrics.csv")
    resumed = replace(config, loop=replace(config.loop, epochs=3, resume=True))
    train_segmenter(resumed)
    curves = read_csv_log(tmp_path / "run" / "logs" / "metrics.csv")
    steps = [step for step, _ in curves["train/loss"]]
    assert steps == sorted(set(steps)) and steps[: len(first["train/loss"])] == [s for s, _ in first["train/loss"]]
    assert len(curves["val/dice"]) == 3
    # "time" is the run's training seconds, counted on across the resume (it restarted at 0 before)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [line["time"] for line in lines if "time" in line]
    assert len(times) > len(first["train/loss"]) and times == sorted(times)


def test_report_to_wandb_without_wandb_is_refused_before_anything_is_written(tiny_data, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    out = tmp_path / "run"
    code = cli(["seg", "train", "--data", str(tiny_data), "--image-size", "32", "--epochs", "1", "-o", str(out),
                "--report-to", "wandb", "--no-progress", "--cpu"])
    assert code == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError, match="one of none, tensorboard, wandb, csv"):
        check_report_to("mlflow")


def test_synth_train_tracks_delta_statistics_and_weight_grids(tmp_path):
    data = generate_procedural(tmp_path / "data", num_images=6, size=32, seed=0)
    loop = replace(default_loop(), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=3, checkpoint_every=0,
                   snapshot_every=2, log_every=1, progress=False, report_to="tensorboard")
    run_dir = train_synth(SynthConfig(data=str(data), objective="law", resolution=32,
                                      backbone_kwargs={"preset": "tiny"}, loop=loop))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs"))
    events.Reload()
    assert {"train/delta_mean", "train/delta_lesion", "train/w_final_lesion", "train/lr"} <= set(events.Tags()["scalars"])
    assert "snapshots/weights" in " ".join(events.Tags()["images"])


def test_resume_from_a_named_checkpoint_is_bit_identical_and_drops_later_ones(tiny_data, tmp_path):
    straight = train_segmenter(_seg(tiny_data, tmp_path / "straight", epochs=3, report_to="none"))
    config = _seg(tiny_data, tmp_path / "run", epochs=3, keep_checkpoints=5, report_to="none")
    train_segmenter(config)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 3
    first = tmp_path / "run" / "checkpoints" / checkpoints[0]
    train_segmenter(replace(config, loop=replace(config.loop, resume=True, resume_from=str(first))))
    weights = load_file(str(tmp_path / "run" / "model" / "last" / "model.safetensors"))
    expected = load_file(str(straight.run_dir / "model" / "last" / "model.safetensors"))
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_resume_path_of_another_run_is_refused_and_nothing_is_written(tiny_data, tmp_path, capsys):
    other = train_segmenter(_seg(tiny_data, tmp_path / "other", epochs=1, report_to="none"))
    train_segmenter(_seg(tiny_data, tmp_path / "run", epochs=1, report_to="none"))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    foreign = next((other.run_dir / "checkpoints").iterdir())
    code = cli(["seg", "train", "--data", str(tiny_data), "--image-size", "32", "--epochs", "2", "--cpu",
                "--no-progress", "-o", str(tmp_path / "run"), "--resume", str(foreign)])
    assert code == 2 and "not a checkpoint of this run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    with pytest.raises(RunDirError):
        train_segmenter(_seg(tiny_data, tmp_path / "run", epochs=2, resume=True,
                             resume_from=str(tmp_path / "run" / "model" / "last")))


def test_first_class_flags_reach_the_config(capsys):
    assert cli(["seg", "config", "--lr", "0.02", "--mixed-precision", "bf16", "--num-workers", "2",
                "--keep-checkpoints", "3", "--report-to", "csv", "--resume", "runs/x/checkpoints/step_00000004"]) == 0
    loop = yaml.safe_load(capsys.readouterr().out)["loop"]
    assert (loop["lr"], loop["mixed_precision"], loop["num_workers"], loop["keep_checkpoints"], loop["report_to"]) == \
        (0.02, "bf16", 2, 3, "csv")
    assert loop["resume"] is True and loop["resume_from"] == "runs/x/checkpoints/step_00000004"
    assert cli(["synth", "config", "--gradient-checkpointing", "--resume"]) == 0
    loop = yaml.safe_load(capsys.readouterr().out)["loop"]
    assert loop["gradient_checkpointing"] is True and loop["resume"] is True and loop["resume_from"] is None


def test_seg_config_prints_the_packaged_paper_config_which_reads_back(tmp_path, capsys):
    assert cli(["seg", "config", "--config", "polyps_paper", "--set", "loop.epochs=7"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    expected = load_config(SegTrainConfig, "configs/seg/polyps_paper.yaml", {"loop": {"epochs": 7}})
    assert load_config(SegTrainConfig, printed) == expected
    assert expected.data == "../shared/data/polyps" and expected.model_kwargs == {"skip_indices": [0, 1]}


def test_packaged_configs_resolve_by_name_and_repo_path(tmp_path, monkeypatch):
    names = packaged_configs()
    assert {"polyps_paper", "brisc_paper", "tiny", "table4_augmentation"} <= set(names)
    monkeypatch.chdir(tmp_path)  # outside the repo: configs/... does not exist here
    assert resolve_config_path("polyps_paper") == names["polyps_paper"]
    assert resolve_config_path("configs/seg/polyps_paper.yaml") == names["polyps_paper"]
    assert resolve_config_path("seg/tiny") == names["tiny"]
    with pytest.raises(ConfigError, match="packaged: .*polyps_paper"):
        resolve_config_path("polyps_papr")


def test_mixed_precision_bf16_trains_on_cpu_after_a_full_precision_run(tiny_data, tmp_path):
    train_segmenter(_seg(tiny_data, tmp_path / "fp32", epochs=1, report_to="none"))
    run = train_segmenter(_seg(tiny_data, tmp_path / "bf16", epochs=1, report_to="none", mixed_precision="bf16"))
    assert run.fit.global_step > 0 and torch.isfinite(torch.tensor(run.fit.last_logs["loss"]))


def test_bf16_on_a_cpu_without_bf16_units_warns_that_it_is_emulated(tiny_data, tmp_path, monkeypatch, caplog):
    from laworder.training import loop

    monkeypatch.setattr(loop, "_cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="laworder.training.loop"):
        train_segmenter(_seg(tiny_data, tmp_path / "bf16", epochs=1, report_to="none", mixed_precision="bf16",
                             max_steps=1))
    assert "emulates it" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="laworder.training.loop"):
        train_segmenter(_seg(tiny_data, tmp_path / "fp32", epochs=1, report_to="none", max_steps=1))
    assert "emulates it" not in caplog.text


def test_gradient_checkpointing_is_enabled_on_diffusers_modules_and_refused_elsewhere(tiny_data, tmp_path):
    from laworder.synth.task import SynthTask
    from laworder.training import fit
    from laworder.data.dataset import PairDataset
    from laworder.data.layouts import load_dataset

    loop = replace(default_loop(), output_dir=str(tmp_path / "synth"), max_steps=1, batch_size=2, checkpoint_every=0,
                   snapshot_every=0, progress=False, report_to="none", gradient_checkpointing=True)
    config = SynthConfig(data=str(tiny_data), objective="uniform", resolution=32, backbone_kwargs={"preset": "tiny"}, loop=loop)
    task = SynthTask(config)
    fit(task, PairDataset(load_dataset(str(tiny_data)).train, 32), loop, run_config=config)
    assert task.unwrapped("unet").is_gradient_checkpointing and task.unwrapped("controlnet").is_gradient_checkpointing
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        train_segmenter(_seg(tiny_data, tmp_path / "seg", epochs=1, report_to="none", gradient_checkpointing=True))


def test_every_packaged_config_is_declared_as_package_data():
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["laworder"]
    package = root / "src" / "laworder"
    shipped = [p.relative_to(package).as_posix() for p in (package / "configs").rglob("*") if p.is_file()]
    assert shipped and all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in shipped), shipped
    assert (root / "configs").resolve() == (package / "configs").resolve(), "configs/ links to the packaged configs"


def test_wandb_run_keeps_its_id_over_a_resume_and_writes_under_the_run(tmp_path, monkeypatch):
    from laworder.training.tracking import RunTracking

    class FakeAccelerator:
        is_main_process = True
        calls: list = []

        def init_trackers(self, project, config=None, init_kwargs=None):
            self.calls.append((project, config, init_kwargs))

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setattr("laworder.training.tracking.check_report_to", lambda report_to: None)  # wandb not installed here
    accelerator = FakeAccelerator()
    RunTracking("wandb", tmp_path / "run").start(accelerator, {"loop": {"lr": 1e-4, "seed": 0}, "data": "x"}, None)
    RunTracking("wandb", tmp_path / "run").start(accelerator, {"loop": {"lr": 1e-4, "seed": 0}, "data": "x"}, 10)
    (project, config, first), (_, _, resumed) = accelerator.calls
    assert config == {"loop.lr": 1e-4, "loop.seed": 0, "data": "x"}
    assert first["wandb"]["dir"] == str(tmp_path / "run" / "logs") and first["wandb"]["id"] == resumed["wandb"]["id"]


def test_real_wandb_offline_run_resumes_into_the_same_run(tiny_data, tmp_path, monkeypatch):
    """With wandb installed (not in CI: `pip install "laworder[wandb]"`), offline runs land under <run>/logs."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    config = _seg(tiny_data, tmp_path / "run", report_to="wandb", log_every=1, epochs=1)
    train_segmenter(config)
    train_segmenter(replace(config, loop=replace(config.loop, epochs=2, resume=True)))
    run_id = (tmp_path / "run" / "logs" / "wandb_run_id").read_text().strip()
    offline = sorted((tmp_path / "run" / "logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline), offline
    assert all(any(p.glob("*.wandb")) for p in offline)


def test_experiment_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    from laworder.experiments.runner import load_experiment

    monkeypatch.chdir(tmp_path)
    kind, _, config = load_experiment("table4_augmentation_tiny")
    assert kind == "augmentation" and config == load_experiment(packaged_configs()["table4_augmentation_tiny"])[2]

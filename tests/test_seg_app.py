"""Segmentation end to end on tiny procedural data: train, evaluate, predict, export, CLI, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from laworder.cli import main as cli
from laworder.data.io import write_image, write_mask
from laworder.data.procedural import generate_procedural
from laworder.errors import DataError, RunDirError
from laworder.seg.config import SegTrainConfig
from laworder.seg.evaluate import evaluate_records, evaluation_subsets
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig

HELPER = Path(__file__).parent / "helpers" / "seg_train_script.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_procedural(tmp_path_factory.mktemp("data") / "proc", num_images=24, size=32, seed=0)


def _config(data: Path, out: Path, model: str = "order", **loop) -> SegTrainConfig:
    base = dict(output_dir=str(out), epochs=2, batch_size=4, lr=3e-3, progress=False, monitor="val_dice", cpu=True)
    base.update(loop)
    return SegTrainConfig(data=str(data), model=model, image_size=32, loop=LoopConfig(**base))


def test_train_writes_best_last_split_and_config(tiny_data, tmp_path):
    run = train_segmenter(_config(tiny_data, tmp_path / "run"))
    assert (run.run_dir / "model" / "best" / "model.safetensors").is_file()
    assert (run.run_dir / "model" / "last" / "model.safetensors").is_file()
    split = json.loads((run.run_dir / "split.json").read_text())
    assert run.num_train + run.num_val == 24 and run.num_val >= 2
    assert set(split["train"]).isdisjoint(split["val"])
    model, config = load_segmenter(run.run_dir)
    assert config.model == "order" and not model.training
    result = evaluate_records(model, evaluation_subsets(str(tiny_data)), 32)
    assert 0.0 <= result.mean["dice"] <= 1.0 and result.subsets["proc"]["n"] == 24


def test_training_refuses_broken_dataset_with_full_report(tmp_path):
    data = generate_procedural(tmp_path / "bad", num_images=6, size=32, seed=1)
    (data / "masks" / sorted(os.listdir(data / "masks"))[0]).unlink()  # unmatched image
    write_mask(data / "masks" / "orphan.png", torch.zeros(32, 32, dtype=torch.bool).numpy())
    with pytest.raises(DataError) as err:
        train_segmenter(_config(data, tmp_path / "run"))
    assert "orphan" in str(err.value)
    assert not (tmp_path / "run").exists(), "nothing may be written for a broken dataset"


def test_existing_run_folder_is_refused(tiny_data, tmp_path):
    train_segmenter(_config(tiny_data, tmp_path / "run", epochs=1))
    with pytest.raises(RunDirError):
        train_segmenter(_config(tiny_data, tmp_path / "run", epochs=1))


def test_empty_and_full_masks_train_without_nan(tmp_path):
    data = tmp_path / "edge"
    for i in range(8):
        image = (torch.rand(32, 32, 3) * 255).byte().numpy()
        write_image(data / "images" / f"im{i}.png", image)
        write_mask(data / "masks" / f"im{i}.png", torch.full((32, 32), i % 2 == 0).numpy())
    run = train_segmenter(_config(data, tmp_path / "run", epochs=2))
    records = [json.loads(l) for l in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)


def _run_helper(*args, env_extra=None, launcher=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = (launcher or [sys.executable]) + [str(HELPER), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bit_identical(tiny_data, tmp_path):
    full = _run_helper(tmp_path / "full", "--data", tiny_data)
    assert full.returncode == 0, full.stderr
    killed = _run_helper(tmp_path / "cut", "--data", tiny_data, "--kill-at", 7)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, no clean-up ran
    ckpts = sorted((tmp_path / "cut" / "checkpoints").glob("step_*"))
    assert ckpts and ckpts[-1].name == "step_00000006"
    resumed = _run_helper(tmp_path / "cut", "--data", tiny_data, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "full" / "model" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_training_ends_with_identical_weights(tiny_data, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    out = _run_helper(tmp_path / "ddp", "--data", tiny_data, "--dump-weights", launcher=launcher)
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["num_processes"] == 2 and run["effective_batch_size"] == 8


def test_cli_train_evaluate_predict_export(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "cli_run"
    assert cli(["seg", "train", "--data", str(tiny_data), "--model", "mk_unet", "--image-size", "32",
                "--epochs", "1", "--batch-size", "4", "-o", str(run_dir), "--no-progress", "--cpu"]) == 0
    assert cli(["seg", "evaluate", str(run_dir)]) == 0
    assert (run_dir / "eval" / "eval.json").is_file()
    assert "Mean Dice" in (run_dir / "eval" / "eval.md").read_text()
    assert cli(["seg", "predict", str(run_dir), str(tiny_data), str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 24
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 24
    onnx_path = tmp_path / "model.onnx"
    assert cli(["seg", "export", str(run_dir), str(onnx_path)]) == 0
    assert onnx_path.is_file()
    assert cli(["seg", "export", str(run_dir), str(onnx_path)]) == 2  # an existing file is not replaced silently
    assert cli(["seg", "export", str(run_dir), str(onnx_path), "--overwrite", "--no-progress"]) == 0
    assert cli(["seg", "predict", str(run_dir), str(tiny_data), str(tmp_path / "pred_onnx"), "--onnx", str(onnx_path)]) == 0
    assert len(list((tmp_path / "pred_onnx" / "masks").glob("*.png"))) == 24
    # refusing to overwrite is a clean CLI error, not a traceback
    assert cli(["seg", "train", "--data", str(tiny_data), "--image-size", "32", "--epochs", "1", "-o", str(run_dir), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_profile_json(tmp_path):
    out = tmp_path / "profile.json"
    assert cli(["seg", "profile", "--models", "mk_unet", "order", "--image-size", "64", "--batch-size", "2",
                "--repeats", "2", "--out", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert rows["order"]["flops_full"] > rows["order"]["flops_conv_linear"] > 0
    assert rows["order"]["params"] > rows["mk_unet"]["params"]


def test_cli_lists_models_and_rejects_unknown(capsys, tiny_data, tmp_path):
    assert cli(["seg", "list"]) == 0
    assert "order" in capsys.readouterr().out
    assert cli(["seg", "train", "--data", str(tiny_data), "--model", "nope", "-o", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "mk_unet" in err


def test_onnx_export_refuses_a_model_whose_onnx_output_differs(tmp_path):
    """A graph onnxruntime runs differently from PyTorch (fresh noise on every call) fails the
    parity check with a clear error, and no .onnx file is left behind."""
    from laworder.errors import LaworderError
    from laworder.seg.export import export_onnx

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x[:, :1] + torch.rand_like(x[:, :1])

    target = tmp_path / "noisy.onnx"
    with pytest.raises(LaworderError, match="parity check failed"):
        export_onnx(Noisy(), target, input_size=32)
    assert not target.exists() and not list(tmp_path.glob("*.onnx"))

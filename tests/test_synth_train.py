"""Synthesis training through the shared core: every objective's step, end to end, resume, NaN guard."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from laworder.errors import DataError, NonFiniteLossError
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.task import SynthTask, train_synth

OBJECTIVES = ["uniform", "fixed", "ratio", "law", "adaptive_distillation", "noise_consistency"]




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from laworder.data.procedural import generate_procedural

    return generate_procedural(tmp_path_factory.mktemp("data") / "procedural", num_images=6, size=32, seed=0)


def tiny_config(output_dir: Path | str = "unused", objective: str = "law", data: Path | str = "", **loop) -> SynthConfig:
    options = dict(output_dir=str(output_dir), max_steps=4, batch_size=3, checkpoint_every=2, snapshot_every=2,
                   log_every=1, progress=False)
    options.update(loop)
    return SynthConfig(data=str(data), objective=objective, resolution=32, backbone_kwargs={"preset": "tiny"},
                       loop=replace(default_loop(), **options))


def tiny_batch(batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch, 1, 32, 32)
    masks[:, :, 8:14, 10:20] = 1
    return {"image": torch.rand(batch, 3, 32, 32, generator=generator), "mask": masks}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_trains_the_backbone_in_one_step(objective):
    torch.manual_seed(0)
    task = SynthTask(tiny_config(objective=objective))
    output = task.training_step(tiny_batch(), torch.Generator().manual_seed(1))
    output.loss.backward()
    assert torch.isfinite(output.loss) and "loss_denoise" in output.logs
    for name, module in task.modules.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads, f"{name} got no gradient with {objective}"
        assert all(torch.isfinite(g).all() for g in grads)
    expected = {"unet", "controlnet", "embedding"} | {"law": {"objective"}, "adaptive_distillation": {"image_controlnet"}}.get(objective, set())
    assert set(task.modules) == expected


def test_the_step_is_a_pure_function_of_batch_and_generator():
    torch.manual_seed(0)
    task = SynthTask(tiny_config())
    first = task.training_step(tiny_batch(), torch.Generator().manual_seed(5)).loss
    second = task.training_step(tiny_batch(), torch.Generator().manual_seed(5)).loss
    assert torch.equal(first, second)


def test_image_and_mask_size_mismatch_is_a_data_error():
    task = SynthTask(tiny_config())
    batch = tiny_batch()
    with pytest.raises(DataError, match=r"differ in size"):
        task.training_step({"image": batch["image"], "mask": batch["mask"][..., :16, :16]}, torch.Generator())
    with pytest.raises(DataError, match="size=32"):
        task.training_step({"image": torch.rand(2, 3, 16, 16), "mask": torch.zeros(2, 1, 16, 16)}, torch.Generator())


def test_non_binary_mask_in_a_batch_is_a_data_error():
    batch = tiny_batch()
    batch["mask"][0, 0, 0, 0] = 0.3
    with pytest.raises(DataError, match="only 0 and 1"):
        SynthTask(tiny_config()).training_step(batch, torch.Generator())


def read_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}


def test_train_synth_end_to_end_then_sample(data_dir, tmp_path):
    from laworder.synth.sampler import sample_pool

    run = train_synth(tiny_config(tmp_path / "run", "law", data_dir))
    assert sorted(read_weights(run / "model" / "last")) == ["controlnet", "embedding", "objective", "unet"]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss_denoise", "loss_dice", "w_final_mean", "delta_lesion"} <= set(records[-1])
    assert "resolution: 32" in (run / "config.yaml").read_text()
    pool = sample_pool(run, data_dir, tmp_path / "pool", steps=2, limit=2)
    assert len(list((pool / "images").iterdir())) == 2


def test_killed_run_resumes_exactly(data_dir, tmp_path, monkeypatch):
    straight = train_synth(tiny_config(tmp_path / "straight", "law", data_dir, snapshot_every=0))

    original = SynthTask.training_step
    calls = {"n": 0}

    def dies_at_step_three(self, batch, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch, generator)

    monkeypatch.setattr(SynthTask, "training_step", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train_synth(tiny_config(tmp_path / "killed", "law", data_dir, snapshot_every=0))
    assert (tmp_path / "killed" / "checkpoints" / "step_00000002").is_dir()
    monkeypatch.setattr(SynthTask, "training_step", original)
    resumed = train_synth(tiny_config(tmp_path / "killed", "law", data_dir, snapshot_every=0, resume=True))
    expected, got = read_weights(straight / "model" / "last"), read_weights(resumed / "model" / "last")
    for module, tensors in expected.items():
        for key, value in tensors.items():
            assert torch.equal(value, got[module][key]), f"{module}.{key} differs after resume"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    original = SynthTask.training_step
    calls = {"n": 0}

    def nan_at_step_three(self, batch, generator):
        output = original(self, batch, generator)
        calls["n"] += 1
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SynthTask, "training_step", nan_at_step_three)
    with pytest.raises(NonFiniteLossError, match="step 2.*step_00000002"):
        train_synth(tiny_config(tmp_path / "run", "uniform", data_dir, snapshot_every=0))
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    for tensors in read_weights(checkpoint).values():
        assert all(torch.isfinite(v).all() for v in tensors.values())

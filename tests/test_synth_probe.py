"""The mask probe: ε-MSE with true vs shuffled masks per region, logged during synthesis training."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from laworder.errors import DataError
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.probe import ProbeSet, derangement, probe_mask, read_probe, region_maps
from laworder.synth.task import SynthTask, train_synth


def test_regions_split_every_pixel_once_around_the_mask_edge():
    masks = torch.zeros(2, 1, 12, 12)
    masks[0, :, 3:9, 3:9] = 1  # a 6×6 square; the second mask is empty
    regions = region_maps(masks, width=1)
    covered = regions["lesion"].int() + regions["boundary"].int() + regions["background"].int()
    assert torch.equal(covered, torch.ones_like(covered))
    assert int(regions["lesion"][0].sum()) == 16  # 4×4 interior
    assert int(regions["boundary"][0].sum()) == 8 * 8 - 16  # one px inside + one px outside the edge
    assert int(regions["lesion"][1].sum()) == 0 and int(regions["boundary"][1].sum()) == 0
    assert int(region_maps(masks, width=2)["lesion"][0].sum()) == 4


def test_derangement_moves_every_item():
    order = derangement(5)
    assert sorted(order.tolist()) == list(range(5)) and all(order[i] != i for i in range(5))
    with pytest.raises(DataError, match="at least 2"):
        derangement(1)


def tiny_task(seed: int = 0) -> SynthTask:
    torch.manual_seed(seed)
    return SynthTask(SynthConfig(objective="uniform", resolution=32, backbone_kwargs={"preset": "tiny"}))


def probe_set() -> ProbeSet:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 1, 32, 32)
    for index in range(3):
        masks[index, :, 4 + 6 * index : 14 + 6 * index, 6:20] = 1
    images = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
    return ProbeSet(images, masks, derangement(3), timesteps=(200, 700), batch_size=4)


def test_the_probe_sees_no_gap_before_the_controlnet_learns_and_one_after():
    task = tiny_task()
    logs = probe_mask(task.backbone, task.noise_scheduler, probe_set())
    # ControlNet's zero convolutions: the mask cannot change ε̂ yet
    assert all(logs[f"probe_gap_{region}"] == 0.0 for region in ("lesion", "boundary", "background", "all"))
    assert logs["probe_mse_true_all"] > 0
    with torch.no_grad():
        for parameter in task.modules["controlnet"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    logs = probe_mask(task.backbone, task.noise_scheduler, probe_set())
    assert logs["probe_gap_all"] != 0.0 and logs["probe_mse_shuffled_lesion"] != logs["probe_mse_true_lesion"]
    assert logs == probe_mask(task.backbone, task.noise_scheduler, probe_set())  # fixed noise and timesteps


def probe_config(tmp_path, data: str, probe_every: int = 2) -> SynthConfig:
    loop = replace(default_loop(), output_dir=str(tmp_path / "run"), max_steps=4, batch_size=2, checkpoint_every=0,
                   snapshot_every=0, log_every=1, progress=False)
    return SynthConfig(data=data, objective="ratio", resolution=32, backbone_kwargs={"preset": "tiny"},
                       probe_every=probe_every, probe_count=3, loop=loop)


def test_training_logs_the_probe_every_k_steps_and_plots_it(tmp_path):
    from laworder.experiments.figures import plot_probe

    run_dir = train_synth(probe_config(tmp_path, "procedural:6:32:0:3"))
    records = read_probe(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    assert {"probe_gap_lesion", "probe_gap_boundary", "probe_gap_background", "probe_mse_true_all"} <= set(records[0])
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2, 3, 4]
    assert plot_probe({"ratio": run_dir}, tmp_path / "probe.png").stat().st_size > 1000
    quiet = probe_config(tmp_path, "procedural:6:32:0:3", probe_every=0)
    quiet.loop.output_dir = str(tmp_path / "quiet")
    plain = [json.loads(line) for line in (train_synth(quiet) / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in plain] == [r["loss"] for r in losses if "loss" in r]  # the probe leaves training alone


def test_the_probe_needs_held_out_pairs(tmp_path):
    from laworder.data.procedural import generate_procedural

    folder = generate_procedural(tmp_path / "pairs", num_images=4, size=32, seed=0)  # a pair folder: no test split
    with pytest.raises(DataError, match="probe_every=0"):
        train_synth(probe_config(tmp_path, str(folder)))
    assert not (tmp_path / "run").exists()


def test_synth_train_probe_every_flag_writes_the_probe_plot(tmp_path, capsys):
    from laworder.cli import main

    run = tmp_path / "cli"
    assert main(["synth", "train", "--data", "procedural:6:32:0:3", "--objective", "uniform", "--resolution", "32",
                 "--set", "backbone_kwargs.preset=tiny", "--set", "probe_count=2", "--probe-every", "1",
                 "--max-steps", "1", "--batch-size", "2", "-o", str(run), "--no-progress"]) == 0
    assert "mask probe in probe.png" in capsys.readouterr().out and (run / "probe.png").is_file()
    assert [r["step"] for r in read_probe(run)] == [1]

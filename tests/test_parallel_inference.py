"""Inference across processes: 2 CPU processes (torchrun, gloo) give the same pool, masks and
mask-recovery scores as 1, byte for byte (``laworder.parallel``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from laworder import parallel
from laworder.cli import main as cli
from laworder.config import save_config
from laworder.data.io import write_image, write_mask
from laworder.models import create_model
from laworder.seg.config import SegTrainConfig
from laworder.training import save_weights
from test_synth_sampler import fake_run  # tests/ is on sys.path (rootdir conftest)

HELPER = Path(__file__).parent / "helpers" / "cli_commands.py"


def fake_synth_run(root: Path) -> Path:
    """A ``synth train`` run folder with untrained tiny weights (test_synth_sampler's, objective uniform)."""
    return fake_run(root, objective="uniform")


def fake_seg_run(root: Path) -> Path:
    """A ``seg train`` run folder with an untrained MK-UNet at 32²."""
    save_config(SegTrainConfig(model="mk_unet", image_size=32), root / "config.yaml")
    (root / "model" / "best").mkdir(parents=True)
    torch.manual_seed(0)
    save_weights(create_model("mk_unet", in_channels=3), root / "model" / "best" / "model.safetensors")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_single_process_state_leaves_accelerate_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    state = parallel.process_state()
    assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
    batches = parallel.batches_of(list(range(7)), 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]] and parallel.my_share(batches, state) == batches
    assert parallel.gather([1, 2], state) == [1, 2]


def test_two_processes_write_the_same_pool_masks_and_scores_as_one(tmp_path, monkeypatch):
    # CPU in both runs, also on a GPU machine (two processes must not share one GPU, and the
    # bytes compared must come from the same kind of device).
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    synth_run, seg_run = fake_synth_run(tmp_path / "synth"), fake_seg_run(tmp_path / "seg")
    rng = np.random.default_rng(0)
    for index in range(5):  # 5 masks in batches of 2: the two processes get 2 and 1 batches
        mask = np.zeros((48, 48), bool)
        mask[5 * index : 5 * index + 20, 8:30] = True
        write_mask(tmp_path / "masks" / f"m{index}.png", mask)
        write_image(tmp_path / "photos" / f"p{index}.png", (rng.random((30 + 7 * index, 41, 3)) * 255).astype(np.uint8))

    def commands(out: Path) -> list[list[str]]:
        return [["synth", "sample", str(synth_run), str(tmp_path / "masks"), str(out / "pool"), "--steps", "2",
                 "--batch-size", "2", "--device", "cpu", "--no-progress"],
                ["seg", "predict", str(seg_run), str(tmp_path / "photos"), str(out / "pred"), "--resize", "pad",
                 "--no-progress"],
                ["exp", "mask-recovery", str(seg_run), str(out / "pool"), "--out", str(out / "recovery.json")],
                ["synth", "sample", str(synth_run), str(tmp_path / "masks"), str(out / "augmented"), "--steps", "1",
                 "--batch-size", "3", "--mask-augment", "2", "--device", "cpu", "--no-progress"]]

    for command in commands(tmp_path / "one"):
        assert cli(command) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
              str(HELPER)]
    args = [arg for command in commands(tmp_path / "two") for arg in command + ["++"]][:-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pool: ") == 2, done.stdout  # one process reports (two pools)

    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one.keys() == two.keys() and len([k for k in one if k.startswith("pool/images/")]) == 5
    assert len([k for k in one if k.startswith("pred/masks/")]) == 5
    assert len([k for k in one if k.startswith("augmented/masks/")]) == 10  # 2 jittered copies of 5 masks
    assert json.loads(one["augmented/manifest.json"])["count"] == 10
    for name in one:
        if name.endswith(".json"):
            continue
        assert one[name] == two[name], name
    manifest_one, manifest_two = (json.loads(one["pool/manifest.json"]), json.loads(two["pool/manifest.json"]))
    assert [item["stem"] for item in manifest_two["items"]] == [f"m{i}" for i in range(5)]
    assert {k: v for k, v in manifest_one.items() if k != "checkpoint"} == \
        {k: v for k, v in manifest_two.items() if k != "checkpoint"}
    augmented_one, augmented_two = (json.loads(one["augmented/manifest.json"]), json.loads(two["augmented/manifest.json"]))
    assert augmented_one["items"] == augmented_two["items"]  # sources and transforms, whatever the process count
    recovery_one, recovery_two = json.loads(one["recovery.json"]), json.loads(two["recovery.json"])
    assert recovery_two["count"] == 5 and recovery_one["per_image"] == recovery_two["per_image"]
    assert recovery_one["dice"] == recovery_two["dice"]

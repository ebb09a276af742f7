"""The shared training core: run folders, logging, NaN guard, checkpoints, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from laworder.errors import NonFiniteLossError, RunDirError
from laworder.training import LoopConfig, StepOutput, TrainTask, fit, load_weights
from laworder.training.checkpoint import latest_checkpoint, list_checkpoints
from laworder.training.sampling import EpochBatchSampler


class PointDataset(Dataset):
    def __init__(self, n: int = 20):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "index": i}


class RegressionTask(TrainTask):
    def __init__(self, nan_at_step: int | None = None):
        torch.manual_seed(0)
        self.modules = {"net": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))}
        self.nan_at_step = nan_at_step
        self.calls = 0

    def training_step(self, batch, generator):
        self.calls += 1
        noise = torch.randn(batch["x"].shape, generator=generator) * 0.01
        pred = self.modules["net"](batch["x"] + noise.to(batch["x"].device)).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        if self.nan_at_step is not None and self.calls > self.nan_at_step:
            loss = loss * float("nan")
        return StepOutput(loss, {"mse": float(loss.detach())})

    def validate(self, loader):
        errors = [((self.unwrapped("net")(b["x"]).squeeze(-1) - b["y"]) ** 2).mean() for b in loader]
        return {"val_mse": float(torch.stack(errors).mean())}


def _config(tmp_path, **kw) -> LoopConfig:
    base = dict(output_dir=str(tmp_path / "run"), epochs=3, batch_size=4, lr=5e-2, optimizer="adamw",
                log_every=1, progress=False, monitor="val_mse", monitor_mode="min")
    base.update(kw)
    return LoopConfig(**base)


def _weights(run_dir, name="last"):
    net = RegressionTask().modules["net"]
    load_weights(net, run_dir / "model" / name / "net.safetensors")
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_fit_writes_weights_logs_and_best(tmp_path):
    result = fit(RegressionTask(), PointDataset(), _config(tmp_path), val_dataset=PointDataset(8))
    run = result.run_dir
    assert result.global_step == 15  # 20 items / batch 4 = 5 steps × 3 epochs
    assert (run / "model" / "last" / "net.safetensors").is_file()
    assert (run / "model" / "best" / "net.safetensors").is_file()
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 16))
    first, last = sum(r["loss"] for r in train[:5]), sum(r["loss"] for r in train[-5:])
    assert last < first
    assert sum("val_mse" in r for r in records) == 3


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1))
    with pytest.raises(RunDirError, match="--resume"):
        fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1))
    fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1, overwrite=True))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = _config(tmp_path, epochs=3, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="step 7"):
        fit(RegressionTask(nan_at_step=7), PointDataset(), config)
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last is not None and last.name == "step_00000006"
    for tensor in load_state(last / "net.safetensors").values():
        assert torch.isfinite(tensor).all()


def load_state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    full = fit(RegressionTask(), PointDataset(), _config(tmp_path / "a", epochs=3, checkpoint_every=3), val_dataset=PointDataset(8))
    # Stop after 7 steps (mid-epoch 2), then resume to the end with a fresh task object.
    fit(RegressionTask(), PointDataset(), _config(tmp_path / "b", epochs=3, checkpoint_every=3, max_steps=7), val_dataset=PointDataset(8))
    # max_steps changes the cosine horizon, so resume a run cut by a NaN instead for the real check:
    with pytest.raises(NonFiniteLossError):
        fit(RegressionTask(nan_at_step=8), PointDataset(), _config(tmp_path / "c", epochs=3, checkpoint_every=3), val_dataset=PointDataset(8))
    assert latest_checkpoint(tmp_path / "c" / "run" / "checkpoints").name == "step_00000006"
    resumed = fit(RegressionTask(), PointDataset(), _config(tmp_path / "c", epochs=3, checkpoint_every=3, resume=True), val_dataset=PointDataset(8))
    assert resumed.global_step == full.global_step
    a, c = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], c[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (resumed.run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert steps == sorted(set(steps)), "resume must not duplicate log lines"


def test_run_seconds_add_up_over_resumes(tmp_path):
    with pytest.raises(NonFiniteLossError):
        fit(RegressionTask(nan_at_step=8), PointDataset(), _config(tmp_path, checkpoint_every=3))
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["seconds"] = 1000.0  # pretend the killed part took long
    state_file.write_text(json.dumps(state))
    fit(RegressionTask(), PointDataset(), _config(tmp_path, checkpoint_every=3, resume=True))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["seconds"] >= 1000.0 and record["session_seconds"] < 1000.0


def test_keep_checkpoints_prunes_old_ones(tmp_path):
    fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=2, checkpoint_every=2, keep_checkpoints=2))
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert len(names) == 2 and names[-1] == "step_00000010"


def test_batch_sampler_shards_ranks_and_resumes():
    ranks = [EpochBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [i for s in ranks for batch in s for i in batch]
    assert sorted(seen)[:10] == list(range(10)) or set(seen) == set(range(10))
    sampler = EpochBatchSampler(10, 3, seed=1)
    full = list(sampler)
    sampler.set_epoch(0, start_batch=2)
    assert list(sampler) == full[2:]
    sampler.set_epoch(1)
    assert list(sampler) != full


def test_ema_weights_are_exported(tmp_path):
    result = fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1, ema_decay=0.5))
    ckpt = latest_checkpoint(result.run_dir / "checkpoints")
    assert (ckpt / "net.ema.safetensors").is_file()
    assert (result.run_dir / "model" / "last" / "net.safetensors").is_file()


def test_ema_warmup_follows_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    from laworder.training.ema import make_ema

    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    ours = make_ema(net, decay=0.999, warmup=True)
    theirs = EMAModel(net.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    for _ in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ours.update_parameters(net)
        theirs.step(net.parameters())
    for mine, reference in zip(ours.module.parameters(), theirs.shadow_params):
        assert torch.allclose(mine, reference, atol=1e-6)


class PartlyFrozenTask(RegressionTask):
    """A trained head after a frozen layer (as a ControlNet beside a frozen UNet)."""

    def __init__(self):
        super().__init__()
        self.modules["net"][0].requires_grad_(False)


def test_grad_norm_is_logged_before_clipping_and_over_trainable_parameters_only(tmp_path, monkeypatch):
    from accelerate import Accelerator

    norms = []
    original = Accelerator.clip_grad_norm_

    # spy on the loop's call (accelerate >= 1.16 no longer goes through torch.nn.utils.clip_grad_norm_)
    def spy(self, parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        assert all(p.requires_grad for p in parameters), "a frozen parameter reached the clip"
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))
        return original(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    fit(PartlyFrozenTask(), PointDataset(), _config(tmp_path, epochs=1, grad_clip=1e-3, monitor=""))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(logged) == 5 and logged == pytest.approx(norms[:5], rel=1e-5)
    assert min(logged) > 1e-3  # reported before clipping, not the clipped 1e-3


def test_ema_run_keeps_raw_and_ema_weights(tmp_path):
    result = fit(RegressionTask(), PointDataset(), _config(tmp_path, epochs=1, ema_decay=0.99, ema_warmup=True, monitor=""))
    last, raw = _weights(result.run_dir, "last"), _weights(result.run_dir, "raw")
    assert any(not torch.equal(last[k], raw[k]) for k in last)
    meta = json.loads((result.run_dir / "model" / "raw" / "meta.json").read_text())
    assert meta["weights"] == "raw"
    assert json.loads((result.run_dir / "model" / "last" / "meta.json").read_text())["weights"] == "ema"

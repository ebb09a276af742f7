"""UniSegDiff: STAPLE fusion, staged targets and inference, training through the seg app, faults."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from laworder.cli import main as cli
from laworder.errors import ConfigError, MissingWeightsError, NonFiniteLossError
from laworder.models import create_model, list_models
from laworder.models.unisegdiff import StagePlan, UniSegDiff, staple, vote_entropy
from laworder.seg.config import AugmentConfig, SegTrainConfig
from laworder.seg.evaluate import evaluate_records, evaluation_subsets
from laworder.seg.loading import load_segmenter
from laworder.seg.task import SegTask
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig

TINY = dict(widths=(8, 8, 8, 8, 8), num_samples=3, staple_iterations=5)


def tiny_model(**kwargs) -> UniSegDiff:
    torch.manual_seed(0)
    return create_model("unisegdiff", **{**TINY, **kwargs})


def lesion_masks(batch: int = 2, size: int = 32) -> torch.Tensor:
    masks = torch.zeros(batch, 1, size, size)
    masks[:, :, 8:20, 6:18] = 1
    return masks


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from laworder.data.procedural import generate_procedural

    return generate_procedural(tmp_path_factory.mktemp("data") / "proc", num_images=12, size=32, seed=0)


# --- STAPLE -------------------------------------------------------------------------------
def test_staple_of_identical_samples_returns_that_sample():
    sample = torch.rand(2, 1, 16, 16) > 0.6
    result = staple(sample.expand(2, 5, 16, 16))
    assert torch.equal(result.probability >= 0.5, sample)
    assert torch.isfinite(result.logits).all()


def test_staple_of_all_empty_samples_is_an_empty_mask_without_nan():
    for count in (1, 2, 20):
        result = staple(torch.zeros(3, count, 8, 8, dtype=torch.bool))
        assert torch.isfinite(result.logits).all() and torch.isfinite(result.sensitivity).all()
        assert not (result.probability >= 0.5).any()
    full = staple(torch.ones(1, 4, 8, 8))
    assert (full.probability >= 0.5).all()


def test_staple_outvotes_a_dissenting_sample_and_rates_it_lower():
    truth = lesion_masks(1, 16)[:, 0] > 0
    dissent = torch.zeros_like(truth)
    dissent[:, :4, :4] = True
    samples = torch.stack([truth, truth, truth, dissent], dim=1)
    result = staple(samples)
    assert torch.equal(result.probability[:, 0] >= 0.5, truth)
    assert result.sensitivity[0, 3] < result.sensitivity[0, 0]


def test_vote_entropy_is_zero_on_agreement_and_one_on_an_even_split():
    agree = torch.ones(1, 4, 2, 2)
    split = torch.cat([torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)], dim=1)
    assert torch.equal(vote_entropy(agree), torch.zeros(1, 1, 2, 2))
    assert torch.allclose(vote_entropy(split), torch.ones(1, 1, 2, 2))


# --- stages -------------------------------------------------------------------------------
def test_staged_targets_and_loss_weights_follow_t():
    plan = StagePlan()
    t = torch.tensor([999, 600, 599, 300, 299, 0])
    assert plan.stage_of(t).tolist() == [0, 0, 1, 1, 2, 2]
    assert plan.network_timesteps(t).tolist() == [999, 999, 599, 300, 0, 0]
    alpha, beta = plan.loss_weights(t)
    assert alpha.tolist() == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]  # α:β = 1:3, 1:1, 3:1
    assert torch.allclose(alpha + beta, torch.ones(6))


def test_a_chain_is_eleven_steps_one_jump_then_ddim_every_30():
    chain = StagePlan().chain_timesteps()
    assert chain[0] == 999 and chain[1] == 599 and chain[-1] == 299 and len(chain) - 1 == 11
    assert all(a - b == 30 for a, b in zip(chain[1:], chain[2:]))
    with pytest.raises(ConfigError):
        StagePlan(high_threshold=200, low_threshold=300)


def test_staged_inference_runs_each_branch_where_the_paper_puts_it(monkeypatch):
    model = tiny_model().eval()
    calls: list[tuple[str, list[int], int]] = []
    encode, decode_mask, decode_noise = model.dnet.encode, model.dnet.decode_mask, model.dnet.decode_noise
    monkeypatch.setattr(model.dnet, "encode", lambda x, t, c: calls.append(("encode", t.tolist(), x.shape[0])) or encode(x, t, c))
    monkeypatch.setattr(model.dnet, "decode_mask", lambda h, e: calls.append(("x0", [], h[0].shape[0])) or decode_mask(h, e))
    monkeypatch.setattr(model.dnet, "decode_noise", lambda h, e: calls.append(("eps", [], h[0].shape[0])) or decode_noise(h, e))
    images = torch.rand(2, 3, 32, 32)
    result = model.segment(images)
    assert result.samples.shape == (2, 3, 32, 32) and result.logits.shape == (2, 1, 32, 32)
    one_run = calls[: len(calls) // 2]
    assert calls[len(calls) // 2:] == one_run  # num_samples=3 -> two runs of two chains each
    fed = [t[0] for kind, t, _ in one_run if kind == "encode"]
    assert fed == [999] + list(range(599, 299, -30)) + [0]  # refinement jump: x_299 with t = 0
    assert one_run[:2] == [("encode", [999, 999], 2), ("x0", [], 2)]  # rapid jump: x₀ branch
    middle = one_run[2:-2]
    assert middle[:3] == [("encode", [599] * 4, 4), ("x0", [], 2), ("eps", [], 2)]  # two chains
    assert one_run[-2:] == [("encode", [0] * 4, 4), ("eps", [], 4)]  # both chains end on ε
    assert model.plan.chain_timesteps()[-1] == 299


def test_prediction_is_deterministic_and_independent_of_the_batch():
    model = tiny_model().eval()
    images = torch.rand(3, 3, 32, 32)
    together = model(images)
    assert torch.allclose(model(images[1:2]), together[1:2], atol=1e-4)  # float round-off only
    assert torch.equal(model.segment(images[1:2]).samples, model.segment(images).samples[1:2])
    assert model.last_uncertainty.shape == (1, 1, 32, 32)
    assert torch.isfinite(together).all() and together.abs().max() <= model.logit_clip


# --- training -----------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["feature", "diffusion"])
def test_empty_and_full_masks_give_finite_losses(stage):
    model = tiny_model(stage=stage)
    images = torch.rand(2, 3, 32, 32)
    masks = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32)])
    with pytest.warns(UserWarning, match="untrained") if stage == "diffusion" else nullcontext():
        loss, logs = model.training_loss(images, masks, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    trained = model.cfenet if stage == "feature" else model.dnet
    frozen = model.dnet if stage == "feature" else model.cfenet
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.parameters())
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_the_training_step_is_a_pure_function_of_the_generator():
    model = tiny_model(stage="diffusion")
    task = SegTask(model, AugmentConfig())
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": lesion_masks()}
    with pytest.warns(UserWarning):
        first = task.training_step(batch, torch.Generator().manual_seed(3))
    second = task.training_step(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first.loss, second.loss)
    assert {"loss_noise", "loss_dice", "loss_ce", "frac_rapid_segmentation"} <= set(first.logs)


def test_bad_configs_are_refused_with_the_value():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("unisegdiff", num_classes=2)
    with pytest.raises(ConfigError, match="stage"):
        create_model("unisegdiff", stage="joint")
    with pytest.raises(ConfigError, match="norm_groups"):
        create_model("unisegdiff", widths=(6, 8))
    with pytest.raises(MissingWeightsError, match="stage=feature"):
        create_model("unisegdiff", feature_weights="/nonexistent/run")
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny_model()(torch.rand(1, 3, 40, 40))


def _seg_config(data: Path, out: Path, **model_kwargs) -> SegTrainConfig:
    loop = LoopConfig(output_dir=str(out), epochs=1, batch_size=4, lr=1e-3, progress=False, cpu=True,
                      monitor="val_dice", optimizer="adamw")
    return SegTrainConfig(data=str(data), model="unisegdiff", image_size=32, model_kwargs={**TINY, **model_kwargs},
                          loop=loop)


def test_two_stage_training_then_evaluate_through_the_seg_app(tiny_data, tmp_path):
    features = train_segmenter(_seg_config(tiny_data, tmp_path / "feature", stage="feature"))
    run = train_segmenter(_seg_config(tiny_data, tmp_path / "diffusion", feature_weights=str(features.run_dir)))
    pretrained = load_segmenter(features.run_dir)[0].cfenet.state_dict()
    assert all(torch.equal(v, run.model.cfenet.state_dict()[k]) for k, v in pretrained.items()), "the CFENet stays frozen"
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "loss_noise" in records[0] and "val_dice" in records[-1]
    model, config = load_segmenter(run.run_dir)
    assert config.model_kwargs["feature_weights"] == str(features.run_dir)
    result = evaluate_records(model, evaluation_subsets(str(tiny_data)), 32, batch_size=6)
    assert 0.0 <= result.mean["dice"] <= 1.0
    assert cli(["seg", "evaluate", str(run.run_dir), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "eval.json").is_file()


def test_a_nan_loss_stops_training_with_the_core_guard(tiny_data, tmp_path, monkeypatch):
    def nan_loss(self, images, masks, generator=None):
        return images.sum() * float("nan"), {}

    monkeypatch.setattr(UniSegDiff, "training_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train_segmenter(_seg_config(tiny_data, tmp_path / "run", stage="feature"))


def test_listed_with_the_other_segmenters(capsys):
    assert "unisegdiff" in list_models()
    assert cli(["seg", "list"]) == 0
    assert "unisegdiff" in capsys.readouterr().out

"""The fast CPU training path (channels_last, torch.compile with eager fallback) gives the same numbers."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from laworder.data.procedural import generate_procedural
from laworder.seg.config import SegTrainConfig
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig
from laworder.training import fast


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_procedural(tmp_path_factory.mktemp("data") / "proc", num_images=24, size=32, seed=0)


def _train(data, out, model="order", **loop):
    base = dict(output_dir=str(out), max_steps=50, batch_size=4, lr=1e-3, progress=False, log_every=1,
                cpu=True, report_to="none", val_every=100)
    base.update(loop)
    config = SegTrainConfig(data=str(data), model=model, image_size=32, loop=LoopConfig(**base))
    run = train_segmenter(config)
    losses = [json.loads(line)["loss"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    return run, losses


@pytest.mark.parametrize("model", ["order", "mk_unet"])
def test_channels_last_first_50_losses_match_eager(tiny_data, tmp_path, model):
    # SGD, because Adam-type steps are ~lr·sign(g): a gradient that is 0 up to float rounding gets a
    # full-size step of random sign, so any two summation orders part after one step. Even with
    # SGD the two runs drift: at init this network's gradient is ill-conditioned (float32 vs
    # float64 differ by ~0.4 % eagerly at 64², and by 4-14 % in channels_last, whose CPU BatchNorm
    # estimates small variances less accurately), so step 0 must agree to rounding and the 50-step
    # curves to a few percent, not bit for bit.
    opt = dict(optimizer="sgd", lr=0.05)
    fast_run, fast_losses = _train(tiny_data, tmp_path / "fast", model, **opt)  # default: the model's preference
    eager_run, eager_losses = _train(tiny_data, tmp_path / "eager", model, channels_last=False, **opt)
    weight = "skip_fusion.3.decoder_proj.0.weight"  # 2×2×3×3: the two layouts differ
    assert fast_run.model.get_parameter(weight).is_contiguous(memory_format=torch.channels_last)
    assert eager_run.model.get_parameter(weight).is_contiguous()
    assert len(fast_losses) == len(eager_losses) == 50
    fast_t, eager_t = torch.tensor(fast_losses), torch.tensor(eager_losses)
    torch.testing.assert_close(fast_t[0], eager_t[0], rtol=1e-5, atol=0)
    relative = ((fast_t - eager_t).abs() / eager_t).tolist()
    assert max(relative) < 0.08 and sum(relative) / 50 < 0.02, relative
    # checkpoints and exported weights stay plain contiguous safetensors with the same keys
    a = load_file(str(fast_run.run_dir / "model" / "last" / "model.safetensors"))
    b = load_file(str(eager_run.run_dir / "model" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].is_contiguous() for k in a)


class _BrokenCompile(torch.nn.Module):
    """What torch.compile returns when inductor cannot build: the first call raises."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler found")


def test_compile_failure_falls_back_to_eager_with_one_log_line(tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _BrokenCompile(module))
    with caplog.at_level(logging.WARNING, logger="laworder.training.fast"):
        run, losses = _train(tiny_data, tmp_path / "compiled", max_steps=6, compile=True)
    eager, eager_losses = _train(tiny_data, tmp_path / "eager", max_steps=6)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert len(caplog.records) == 1 and "training continues eagerly" in caplog.records[0].getMessage()
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["compiled"] is False and "no C++ compiler" in info["compile_fallback"]
    assert losses == eager_losses  # the failed step was re-run eagerly from the same state
    a = load_file(str(run.run_dir / "model" / "last" / "model.safetensors"))
    b = load_file(str(eager.run_dir / "model" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_that_are_not_compile_errors_still_stop_training():
    assert fast.is_compile_error(torch._dynamo.exc.InternalTorchDynamoError("x"))
    assert not fast.is_compile_error(ValueError("expected 3 input channels"))

    class Task:
        modules = {"model": torch.nn.Identity()}

    step = fast.CompiledStep(Task(), enabled=True, compile_fn=lambda m: m)
    with pytest.raises(ValueError):
        step.run(lambda: (_ for _ in ()).throw(ValueError("bad data")))
    assert step.active


def test_evaluation_scores_a_fast_copy_and_leaves_the_model_alone(tiny_data):
    from laworder.data.layouts import load_dataset
    from laworder.models import create_model
    from laworder.seg.evaluate import evaluate_records, predict_probabilities
    from laworder.seg.runtime import inference_model

    torch.manual_seed(0)
    model = create_model("order").eval()
    images = torch.rand(3, 3, 32, 32)
    before = predict_probabilities(model, images)
    fast = inference_model(model)
    assert fast.get_parameter("skip_fusion.3.decoder_proj.0.weight").is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(predict_probabilities(fast, images), before, rtol=1e-4, atol=1e-5)
    records = {"proc": load_dataset(str(tiny_data)).train[:4]}
    evaluate_records(model, records, 32)
    weight = model.get_parameter("skip_fusion.3.decoder_proj.0.weight")
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(predict_probabilities(model, images), before)
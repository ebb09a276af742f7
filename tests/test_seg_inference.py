"""Inference options: --resize squash/pad/sliding, flip TTA, probabilities, dynamic-size ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from laworder.cli import main as cli
from laworder.data.io import read_image, read_mask, write_image
from laworder.data.procedural import generate_procedural
from laworder.seg.export import OnnxSegmenter, export_onnx
from laworder.seg.predict import predict_folder, predict_logits


class RedThreshold(nn.Module):
    """Pixel-wise: logit = 20·(red − 0.5), so the mask is ``red > 0.5`` whatever the window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * (x[:, :1] - 0.5)


class ColumnRamp(nn.Module):
    """Not flip-invariant: logit = column index / width (left 0, right 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        ramp = torch.arange(width, dtype=x.dtype) / (width - 1)
        return ramp.expand(x.shape[0], 1, x.shape[2], width).clone()


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = generate_procedural(root / "proc", num_images=12, size=32, seed=0)
    run = root / "run"
    assert cli(["seg", "train", "--data", str(data), "--model", "mk_unet", "--image-size", "32", "--epochs", "1",
                "--batch-size", "4", "-o", str(run), "--no-progress", "--cpu"]) == 0
    return run


def test_cli_pad_tta_keeps_a_131_by_77_image_size(tiny_run, tmp_path):
    pixels = (np.random.default_rng(0).random((77, 131, 3)) * 255).astype(np.uint8)  # H=77, W=131
    write_image(tmp_path / "in" / "odd.png", pixels)
    out = tmp_path / "pred"
    assert cli(["seg", "predict", str(tiny_run), str(tmp_path / "in"), str(out), "--resize", "pad", "--tta",
                "--save-probabilities", "--no-progress"]) == 0
    mask = read_mask(out / "masks" / "odd.png")
    assert mask.shape == (77, 131)
    assert read_image(out / "overlays" / "odd.png").shape == (77, 131, 3)
    probs = np.load(out / "probabilities" / "odd.npz")["probabilities"]
    assert probs.shape == (2, 77, 131) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probs[1] >= 0.5)
    for mode in ("squash", "sliding"):
        assert cli(["seg", "predict", str(tiny_run), str(tmp_path / "in"), str(tmp_path / mode), "--resize", mode,
                    "--no-overlays", "--no-progress"]) == 0
        assert read_mask(tmp_path / mode / "masks" / "odd.png").shape == (77, 131)


@pytest.mark.parametrize("size", [(77, 131), (20, 24), (96, 40)])
def test_sliding_window_equals_whole_image_for_a_pixelwise_model(size):
    # Gaussian blending of identical per-pixel values is that value: any seam or misplaced window shows up.
    # (20, 24) is smaller than the 32² window: padded, not an error.
    image = _image(*size)
    logits = predict_logits(RedThreshold(), image, image_size=32, resize="sliding")
    assert logits.shape == (1, 1, *size)
    torch.testing.assert_close(logits, RedThreshold()(image), atol=1e-4, rtol=1e-4)


def test_pad_keeps_aspect_ratio_and_maps_back_to_the_image():
    # Left half red, right half dark: the predicted mask must be the left half, not stretched.
    image = torch.zeros(1, 3, 50, 130)
    image[:, 0, :, :65] = 1.0
    logits = predict_logits(RedThreshold(), image, image_size=64, resize="pad")
    mask = logits[0, 0] > 0
    assert mask.shape == (50, 130)
    assert mask[:, :63].all() and not mask[:, 67:].any()


def test_pad_feeds_the_network_multiples_of_32():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return x[:, :1]

    predict_logits(model, _image(77, 131), image_size=64, resize="pad")
    assert seen == [(64, 64)]  # 131→64 wide, 77→38 high, padded to 64
    predict_logits(model, _image(300, 100), image_size=128, resize="pad")
    assert seen[-1] == (128, 64)  # 300→128 high, 100→43 wide, padded to 64


def test_tta_averages_the_four_flips():
    image = _image(32, 32)
    plain = predict_logits(ColumnRamp(), image, 32, "squash", tta=False)
    mirrored = predict_logits(ColumnRamp(), image, 32, "squash", tta=True)
    assert plain[0, 0, 0, 0] < 0.01 and plain[0, 0, 0, -1] > 0.99
    torch.testing.assert_close(mirrored, torch.full_like(mirrored, 0.5))  # ramp + flipped ramp
    # a flip-equivariant (pixel-wise) model is unchanged by TTA
    torch.testing.assert_close(predict_logits(RedThreshold(), image, 32, "squash", tta=True),
                               predict_logits(RedThreshold(), image, 32, "squash"))


def test_unknown_resize_mode_is_a_config_error(tmp_path):
    from laworder.errors import ConfigError

    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="squash"):
        predict_folder(RedThreshold(), tmp_path / "a.png", tmp_path / "out", 32, resize="crop")


def test_onnx_export_has_dynamic_height_and_width(tmp_path):
    from laworder.models import create_model

    model = create_model("mk_unet", in_channels=3).eval()
    report = export_onnx(model, tmp_path / "m.onnx", input_size=32)
    assert report.checked_sizes == [(32, 32), (64, 96)]
    onnx_model = OnnxSegmenter(report.path)
    image = _image(96, 160)  # a third size, never checked at export
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(image), model(image), atol=1e-4, rtol=1e-3)
    # and it serves every resize mode
    for mode in ("pad", "sliding"):
        with torch.no_grad():
            expected = predict_logits(model, _image(45, 70), 32, mode, tta=True)
        torch.testing.assert_close(predict_logits(onnx_model, _image(45, 70), 32, mode, tta=True), expected,
                                   atol=1e-4, rtol=1e-3)


class _FailingCompile(nn.Module):
    """What torch.compile returns when inductor cannot build: the first call raises."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler found")


def test_cli_compile_failure_falls_back_to_eager_with_the_same_masks(tiny_run, tmp_path, monkeypatch, caplog):
    write_image(tmp_path / "in" / "a.png", (np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8))
    assert cli(["seg", "predict", str(tiny_run), str(tmp_path / "in"), str(tmp_path / "eager"), "--no-progress"]) == 0
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _FailingCompile(module))
    with caplog.at_level("WARNING"):
        assert cli(["seg", "predict", str(tiny_run), str(tmp_path / "in"), str(tmp_path / "compiled"),
                    "--compile", "--no-progress"]) == 0
        assert cli(["seg", "evaluate", str(tiny_run), "--compile", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    fallbacks = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(fallbacks) == 2 and "no C++ compiler" in fallbacks[0].getMessage()  # one line per command
    np.testing.assert_array_equal(read_mask(tmp_path / "compiled" / "masks" / "a.png"),
                                  read_mask(tmp_path / "eager" / "masks" / "a.png"))


def test_compile_with_onnx_is_refused(tiny_run, tmp_path, capsys):
    assert cli(["seg", "predict", str(tiny_run), str(tmp_path), str(tmp_path / "o"), "--onnx", "m.onnx", "--compile"]) != 0
    assert "--compile applies to the PyTorch model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_errors_that_are_not_compile_errors_propagate():
    from laworder.seg.runtime import CompiledInference

    def broken(module):
        return lambda x: (_ for _ in ()).throw(ValueError("expected 3 input channels"))

    wrapped = CompiledInference(nn.Conv2d(3, 1, 1).eval(), broken)
    with pytest.raises(ValueError, match="3 input channels"):
        wrapped(torch.rand(1, 3, 8, 8))
    assert wrapped.active


def test_real_torch_compile_gives_the_eager_probabilities():
    """One real inductor build (about 30-60 s on 2 cores): the compiled copy matches the eager model."""
    from laworder.models import create_model
    from laworder.seg.runtime import inference_model

    torch.manual_seed(0)
    model = create_model("mk_unet").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    compiled = inference_model(model, compile=True)
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    if not compiled.active:
        pytest.skip(f"torch.compile unavailable here: {compiled.reason}")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

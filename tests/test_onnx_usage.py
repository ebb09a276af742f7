"""ONNX files that know how they are used: metadata written by the export, read back by
``OnnxSegmenter``, checked against what ``seg predict`` feeds (issue 27 item 4, issue 24)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from laworder.data.io import read_mask, write_image
from laworder.errors import ConfigError, DataError, MissingWeightsError
from laworder.seg.config import SegTrainConfig
from laworder.seg.export import (
    OnnxSegmenter,
    OnnxUsage,
    _write_metadata,
    export_onnx,
    onnx_predict_settings,
    usage_of,
    weights_fingerprint,
)
from laworder.seg.predict import predict_folder


class TinySegmenter(torch.nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images) * 4


CONFIG = SegTrainConfig(model="tiny", image_size=32, channels=3, threshold=0.4)


def _images(folder, count: int = 3) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):  # sizes other than the training size: predict resizes
        write_image(folder / f"img{index}.png", rng.integers(0, 256, (40 + 8 * index, 36, 3), dtype=np.uint8))


def test_export_records_usage_and_onnx_alone_predicts_like_pytorch(tmp_path):
    model = TinySegmenter().eval()
    export_onnx(model, tmp_path / "m.onnx", input_size=32, usage=usage_of(model, CONFIG))
    onnx_model = OnnxSegmenter(tmp_path / "m.onnx")
    usage = onnx_model.usage
    assert (usage.image_size, usage.channels, usage.threshold, usage.labels) == (32, 3, 0.4, ())
    assert usage.resize == "squash" and usage.normalisation == "divide_by_255" and usage.model == "tiny"
    assert usage.version and usage.weights_sha256 == weights_fingerprint(model)
    settings = onnx_predict_settings(onnx_model)  # no run folder: everything from the metadata
    assert (settings.image_size, settings.channels, settings.threshold) == (32, 3, 0.4)
    _images(tmp_path / "in")
    for name, runner in (("torch", model), ("onnx", onnx_model)):
        predict_folder(runner, tmp_path / "in", tmp_path / name, settings.image_size, settings.channels,
                       settings.threshold, save_probabilities=True)
    for index in range(3):
        torch_p = np.load(tmp_path / "torch" / "probabilities" / f"img{index}.npz")["probabilities"]
        onnx_p = np.load(tmp_path / "onnx" / "probabilities" / f"img{index}.npz")["probabilities"]
        np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)
        same = read_mask(tmp_path / "torch" / "masks" / f"img{index}.png") == read_mask(tmp_path / "onnx" / "masks" / f"img{index}.png")
        assert same.mean() > 0.999


def test_onnx_of_other_weights_or_settings_is_refused_with_a_run(tmp_path):
    model = TinySegmenter().eval()
    export_onnx(model, tmp_path / "m.onnx", input_size=32, usage=usage_of(model, CONFIG))
    onnx_model = OnnxSegmenter(tmp_path / "m.onnx")
    assert onnx_predict_settings(onnx_model, model, CONFIG) is CONFIG
    with pytest.raises(DataError, match="another model.*weights"):
        onnx_predict_settings(onnx_model, TinySegmenter(seed=1), CONFIG)
    other = SegTrainConfig(model="tiny", image_size=64, channels=3)
    with pytest.raises(DataError, match="image_size 32 vs 64"):
        onnx_predict_settings(onnx_model, model, other)


def test_onnx_without_metadata_needs_its_run(tmp_path):
    export_onnx(TinySegmenter().eval(), tmp_path / "old.onnx", input_size=32)  # no usage: an older export
    onnx_model = OnnxSegmenter(tmp_path / "old.onnx")
    assert onnx_model.usage is None
    with pytest.raises(ConfigError, match="no laworder metadata"):
        onnx_predict_settings(onnx_model)
    assert onnx_predict_settings(onnx_model, TinySegmenter(), CONFIG) is CONFIG


def test_garbage_or_missing_onnx_is_a_one_line_data_error(tmp_path):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a model\xff" * 10)
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("image_size: 32\n")
    for name in ("garbage.onnx", "empty.onnx", "text.onnx"):
        with pytest.raises(DataError, match="not an ONNX model") as err:
            OnnxSegmenter(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(MissingWeightsError):
        OnnxSegmenter(tmp_path / "missing.onnx")


def test_fixed_size_or_other_channel_models_are_refused(tmp_path):
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(TinySegmenter(in_channels=1).eval(), (torch.rand(1, 1, 48, 48),), str(path),
                      input_names=["image"], output_names=["logits"], opset_version=17, dynamo=False)
    _write_metadata(path, OnnxUsage(image_size=48, channels=1).to_metadata())
    onnx_model = OnnxSegmenter(path)
    assert onnx_model.input_shape == [1, 1, 48, 48]
    onnx_model.check_fits(channels=1, image_size=48, resize="squash")  # fits as recorded
    with pytest.raises(DataError, match="1-channel images.*3-channel"):
        onnx_model.check_fits(channels=3, image_size=48, resize="squash")
    with pytest.raises(DataError, match="fixed 48×48 input, not the 32×32"):
        onnx_model.check_fits(channels=1, image_size=32, resize="squash")
    with pytest.raises(DataError, match="--resize pad"):
        onnx_model.check_fits(channels=1, image_size=48, resize="pad")
    with pytest.raises(DataError, match="fixed batch of 1"):
        onnx_model.check_fits(channels=1, image_size=48, resize="sliding")
    with pytest.raises(DataError, match="1 logit channels, expected 3"):
        onnx_model.check_fits(channels=1, image_size=48, resize="squash", num_classes=3)


def test_bad_metadata_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(TinySegmenter().eval(), path, input_size=32)
    _write_metadata(path, {"laworder.image_size": "abc", "laworder.channels": "3"})
    with pytest.raises(DataError, match="unreadable laworder metadata"):
        OnnxSegmenter(path)
    _write_metadata(path, {**OnnxUsage(32, 3).to_metadata(), "laworder.normalisation": "imagenet"})
    with pytest.raises(DataError, match="normalisation 'imagenet'"):
        OnnxSegmenter(path)

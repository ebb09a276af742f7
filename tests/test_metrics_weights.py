"""Loading metric networks from local files: the FID Inception and a CLIP checkpoint folder."""

from __future__ import annotations

import pytest
import torch

from laworder.errors import ConfigError, DataError, MissingWeightsError
from laworder.metrics import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    clip_image_similarity,
    load_clip_image_encoder,
    load_fid_inception,
    resolve_fid_weights,
)
from laworder.metrics.inception import _tf_avg_pool, check_state_dict

# --- FID Inception ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A weight file in the standard format (plain state dict) holding random weights."""
    torch.manual_seed(0)
    model = FIDInceptionV3()
    path = tmp_path_factory.mktemp("fid") / FID_WEIGHTS_FILENAME
    torch.save(model.state_dict(), path)
    return path, model


def test_inception_weight_file_round_trip_gives_2048_d_pool3_features(inception_file):
    path, original = inception_file
    loaded = load_fid_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded_state = loaded.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = loaded(images)  # resized to 299×299 inside
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all() and (features >= 0).all()  # post-ReLU average


def test_fid_weights_resolve_from_env_var_or_folder(inception_file, monkeypatch):
    path, _ = inception_file
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(path))
    assert resolve_fid_weights() == path
    monkeypatch.delenv(FID_WEIGHTS_ENV)
    assert resolve_fid_weights(path.parent) == path


def test_missing_fid_weights_error_names_file_url_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingWeightsError) as unset:
        load_fid_inception()
    message = str(unset.value)
    assert FID_WEIGHTS_FILENAME in message and FID_WEIGHTS_URL in message
    assert FID_WEIGHTS_ENV in message
    with pytest.raises(MissingWeightsError, match=str(tmp_path / FID_WEIGHTS_FILENAME)):
        load_fid_inception(tmp_path)


def test_wrong_state_dict_lists_first_mismatches():
    model = FIDInceptionV3()
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    with pytest.raises(ConfigError) as error:
        check_state_dict(model, state, "bad.pth")
    message = str(error.value)
    assert "fc.weight: file (1000, 2048) vs model (1008, 2048)" in message
    assert "missing: Mixed_7c.branch_pool.conv.weight" in message
    assert "unexpected: AuxLogits.fc.weight" in message


def test_weight_file_that_is_not_this_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match=r"missing: Conv2d_1a_3x3\.conv\.weight.*more"):
        load_fid_inception(path)
    (tmp_path / "junk.pth").write_text("<html>not a checkpoint</html>")
    with pytest.raises(ConfigError, match="plain state dict"):
        load_fid_inception(tmp_path / "junk.pth")


def test_batchnorm_counters_are_optional_in_weight_files():
    model = FIDInceptionV3()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(check_state_dict(model, state, "no-counters.pth"))


def test_fid_blocks_use_tensorflow_pooling_variants():
    model = FIDInceptionV3()
    assert (model.Mixed_7b.pool, model.Mixed_7c.pool) == ("avg", "max")
    # TF average pooling ignores padding: a constant map stays constant at the borders.
    pooled = _tf_avg_pool(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(pooled, torch.ones(1, 1, 4, 4))


# --- CLIP-I -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from laworder.metrics.clip_score import _image_processor_class

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    processor = _image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(folder)
    return folder


def test_clip_i_of_identical_images_is_one(clip_folder):
    encoder = load_clip_image_encoder(clip_folder)
    images = torch.rand(3, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    result = clip_image_similarity(images, images.clone(), encoder, reference="toy")
    assert result.clip_i == pytest.approx(1.0, abs=1e-5)
    assert (result.mode, result.n_real, result.n_fake, result.reference) == ("paired", 3, 3, "toy")
    repeated = images[:1].expand(2, -1, -1, -1)
    all_pairs = clip_image_similarity(repeated, images[:1], encoder, mode="all_pairs")
    assert all_pairs.clip_i == pytest.approx(1.0, abs=1e-5)


def test_clip_i_of_different_images_is_below_one(clip_folder):
    encoder = load_clip_image_encoder(clip_folder)
    generator = torch.Generator().manual_seed(3)
    real = torch.rand(2, 3, 32, 32, generator=generator)
    fake = torch.rand(2, 3, 32, 32, generator=generator)
    fake[:, 0] = 1.0  # very red
    paired = clip_image_similarity(real, fake, encoder).clip_i
    assert -1.0 <= paired < 0.9999
    with pytest.raises(DataError, match="2 real vs 1 generated"):
        clip_image_similarity(real, fake[:1], encoder)
    with pytest.raises(ConfigError, match="mode"):
        clip_image_similarity(real, fake, encoder, mode="mean")


def test_missing_clip_checkpoint_files_are_named(tmp_path, clip_folder):
    with pytest.raises(MissingWeightsError, match="not found"):
        load_clip_image_encoder(tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((clip_folder / "config.json").read_text())
    with pytest.raises(MissingWeightsError) as error:
        load_clip_image_encoder(partial)
    assert "preprocessor_config.json" in str(error.value)
    assert "model.safetensors" in str(error.value)
    assert all(word in str(error.value) for word in ("save_pretrained", "config.json"))

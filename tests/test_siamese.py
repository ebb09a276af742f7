"""Siamese-Diffusion (full): mixed condition and w_i, θ′ copy, dense hint input, online
augmentation, sampling from the mask branch only, tiny train + sample, empty/full masks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from laworder.cli import build_parser
from laworder.cli import main as cli
from laworder.errors import ConfigError
from laworder.synth.backbones import Backbone
from laworder.synth.backbones.dense_hint import DenseHintInput
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.task import SynthTask, renoise_from_prediction, train_synth
from laworder.synth.weighting import create_objective, objective_backbone_defaults


def tiny_config(output_dir: Path | str = "unused", data: Path | str = "", objective: str = "siamese",
                objective_kwargs: dict | None = None, backbone_kwargs: dict | None = None, **loop) -> SynthConfig:
    options = dict(output_dir=str(output_dir), max_steps=6, batch_size=3, checkpoint_every=0, snapshot_every=0,
                   log_every=1, progress=False)
    options.update(loop)
    return SynthConfig(data=str(data), objective=objective, objective_kwargs=objective_kwargs or {}, resolution=32,
                       backbone_kwargs={"preset": "tiny", **(backbone_kwargs or {})},
                       loop=replace(default_loop(), **options))


def tiny_batch(batch: int = 4) -> dict[str, torch.Tensor]:
    masks = torch.zeros(batch, 1, 32, 32)
    masks[:, :, 8:14, 10:20] = 1
    return {"image": torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "mask": masks}


def make_task(**kwargs) -> SynthTask:
    torch.manual_seed(0)
    return SynthTask(tiny_config(**kwargs))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from laworder.data.procedural import generate_procedural

    return generate_procedural(tmp_path_factory.mktemp("data") / "procedural", num_images=6, size=32, seed=0)


# --- eq. 5: the mixed condition and its schedule ----------------------------------------------
def test_image_weight_ramps_with_the_step_and_the_mask_weight_is_one():
    objective = create_objective("siamese")
    assert [objective.image_control_weight(k, 300) for k in (0, 100, 300)] == [0.0, 1 / 3, 1.0]
    assert objective.mask_control_weight == 1.0 and objective.consistency_weight == 1.0


def test_mixed_condition_is_wi_ci_plus_wm_stopgrad_cm(monkeypatch):
    task = make_task()
    task.global_step, task.total_steps = 25, 100
    image_down, image_mid = [torch.ones(1, 2, requires_grad=True)], torch.ones(1, 2, requires_grad=True)
    mask_down, mask_mid = [torch.full((1, 2), 3.0, requires_grad=True)], torch.full((1, 2), 3.0, requires_grad=True)
    seen = {}
    monkeypatch.setattr(task.backbone, "control", lambda *args, **kwargs: (image_down, image_mid))
    monkeypatch.setattr(task.backbone, "image_hint", lambda images: images)
    monkeypatch.setattr(task.backbone, "denoise", lambda noisy, t, states, mixed, unet_grad=True: seen.update(mixed=mixed, unet_grad=unet_grad) or mixed[1])
    out = task._image_branch_prediction(None, None, None, (mask_down, mask_mid), torch.zeros(1))
    assert torch.allclose(out, torch.full((1, 2), 0.25 * 1.0 + 1.0 * 3.0))  # w_i = 25/100, w_m = 1
    out.sum().backward()
    assert torch.allclose(image_mid.grad, torch.full((1, 2), 0.25)) and mask_mid.grad is None  # sg[c_m]
    assert seen["unet_grad"] is False  # Image-Diffusion runs the UNet as a copy θ′


@pytest.mark.parametrize("objective, unet_learns", [("siamese", False), ("noise_consistency", True)])
def test_image_branch_loss_reaches_the_controlnet_and_only_noise_consistency_trains_the_unet(objective, unet_learns):
    task = make_task(objective=objective)
    task.global_step, task.total_steps = 5, 10
    images, masks = task.inputs(tiny_batch())
    _, _, extra = task.diffusion_forward(images, masks, torch.Generator().manual_seed(0), 0.0)
    extra["eps_image"].pow(2).mean().backward()  # L_i alone
    unet_grads = [p.grad for p in task.modules["unet"].parameters() if p.grad is not None]
    control_grads = [p.grad for p in task.modules["controlnet"].parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert bool(unet_grads) is unet_learns
    assert control_grads


# --- dense hint input --------------------------------------------------------------------------
def test_dense_hint_input_merges_patches_down_to_the_latent_size_and_starts_at_zero():
    dhi = DenseHintInput(3, 32, channels=(16, 32, 64, 128, 256), downsample=8)
    out = dhi(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 32, 8, 8) and torch.equal(out, torch.zeros_like(out))
    assert sum(type(m).__name__ == "PatchMerging" for m in dhi.modules()) == 3
    with pytest.raises(ConfigError):
        DenseHintInput(3, 32, channels=(16, 32), downsample=8)


def test_siamese_builds_the_dense_hint_input_unless_the_config_says_otherwise():
    assert objective_backbone_defaults("siamese") == {"hint_input": "dense"}
    assert objective_backbone_defaults("law") == {}
    dense = make_task().backbone.modules["controlnet"].controlnet_cond_embedding
    sparse = make_task(backbone_kwargs={"hint_input": "sparse"}).backbone.modules["controlnet"].controlnet_cond_embedding
    assert isinstance(dense, DenseHintInput) and not isinstance(sparse, DenseHintInput)


# --- online augmentation (eq. 11-13) -----------------------------------------------------------
def test_online_augmentation_starts_after_a_third_of_training_and_only_for_t_up_to_200():
    objective = create_objective("siamese")
    t = torch.tensor([0, 150, 200, 201, 999])
    assert objective.augmentation_rows(t, 0, 300) is None
    assert objective.augmentation_rows(t, 100, 300) is None  # k must exceed N_iter / 3
    assert objective.augmentation_rows(t, 101, 300).tolist() == [True, True, True, False, False]
    assert objective.augmentation_rows(t, None, 300) is None
    assert create_objective("noise_consistency").augmentation_rows(t, 299, 300) is None


def test_renoising_the_true_noise_gives_back_z_t_and_a_wrong_prediction_moves_it():
    scheduler = make_task().noise_scheduler
    clean = torch.rand(3, 3, 8, 8) * 2 - 1
    noise, t = torch.randn(3, 3, 8, 8), torch.tensor([10, 100, 200])
    noisy = scheduler.add_noise(clean, noise, t)
    assert torch.allclose(renoise_from_prediction(scheduler, noisy, noise, noise, t), noisy, atol=1e-5)
    assert not torch.allclose(renoise_from_prediction(scheduler, noisy, noise + 0.5, noise, t), noisy, atol=1e-3)


def test_the_training_step_augments_exactly_the_selected_rows(monkeypatch):
    task = make_task()
    seen = {}
    select = task.objective.augmentation_rows
    monkeypatch.setattr(task.objective, "augmentation_rows",
                        lambda t, k, n: seen.update(t=t.clone(), rows=select(t, k, n)) or seen["rows"])
    task.objective.augment_max_timestep = 600  # so that this small batch has rows on both sides
    task.total_steps = 6
    for step, expect_rows in ((1, False), (2, False), (3, True)):
        task.global_step = step
        output = task.training_step(tiny_batch(8), torch.Generator().manual_seed(4))
        if not expect_rows:
            assert seen["rows"] is None and output.logs["augmented_fraction"] == 0.0 and output.logs["loss_augmented"] == 0.0
    fraction = float((seen["t"] <= 600).float().mean())
    assert 0.0 < fraction < 1.0 and output.logs["augmented_fraction"] == pytest.approx(fraction)
    assert output.logs["loss_augmented"] > 0.0


def test_the_siamese_step_is_a_pure_function_of_batch_and_generator():
    task = make_task(objective_kwargs={"augment_max_timestep": 999})
    task.global_step, task.total_steps = 5, 6
    first = task.training_step(tiny_batch(), torch.Generator().manual_seed(2))
    second = task.training_step(tiny_batch(), torch.Generator().manual_seed(2))
    assert torch.equal(first.loss, second.loss) and first.logs["augmented_fraction"] == 1.0


def test_empty_and_full_masks_give_finite_losses_and_gradients():
    task = make_task(objective_kwargs={"augment_max_timestep": 999})
    task.global_step, task.total_steps = 5, 6
    batch = tiny_batch(2)
    batch["mask"] = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32)])
    output = task.training_step(batch, torch.Generator().manual_seed(0))
    output.loss.backward()
    assert torch.isfinite(output.loss) and all(torch.isfinite(torch.tensor(v)) for v in output.logs.values())
    for module in task.modules.values():
        assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


# --- end to end --------------------------------------------------------------------------------
def test_tiny_train_then_sample_from_the_mask_branch_only(data_dir, tmp_path, monkeypatch):
    from laworder.synth.sampler import sample_pool

    run = train_synth(tiny_config(tmp_path / "run", data_dir))
    weights = load_file(str(run / "model" / "last" / "controlnet.safetensors"))
    assert any(key.startswith("controlnet_cond_embedding.layers.") for key in weights)  # the DHI was trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["augmented_fraction"] == 0.0 for r in records if r["step"] <= 3)  # k = 0, 1, 2 <= N_iter / 3
    assert {"loss_denoise", "loss_image", "loss_consistency", "loss_augmented"} <= set(records[-1])

    def forbidden(*args, **kwargs):
        raise AssertionError("sampling touched the image branch")

    monkeypatch.setattr(Backbone, "image_hint", forbidden)
    monkeypatch.setattr(SynthTask, "__init__", forbidden)
    pool = sample_pool(run, data_dir, tmp_path / "pool", steps=2, limit=2)
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["method"] == "siamese" and len(list((pool / "images").iterdir())) == 2


def test_cli_selects_it_with_method_or_objective_and_lists_it(capsys):
    parser = build_parser()
    assert parser.parse_args(["synth", "train", "--method", "siamese"]).objective == "siamese"
    assert parser.parse_args(["synth", "train", "--objective", "siamese"]).objective == "siamese"
    assert cli(["synth", "list"]) == 0
    assert "siamese" in capsys.readouterr().out

"""DDIM + CFG sampler and synthetic pools: validation, per-mask seeding, manifest, no φ at sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from laworder.config import save_config
from laworder.data.io import write_mask
from laworder.errors import ConfigError, MissingWeightsError, RunDirError
from laworder.synth.config import SynthConfig
from laworder.synth.sampler import (
    MaskConditionedSampler,
    check_sampling_args,
    collect_masks,
    load_backbone,
    mask_seed,
    sample_pool,
)
from laworder.synth.task import SynthTask
from laworder.training import LoopConfig, save_weights




def fake_run(root: Path, objective: str = "law") -> Path:
    """A run folder as ``synth train`` leaves it, with untrained tiny weights."""
    config = SynthConfig(objective=objective, resolution=32, backbone_kwargs={"preset": "tiny"},
                         loop=LoopConfig(output_dir=str(root)))
    torch.manual_seed(0)
    task = SynthTask(config)
    # ControlNet zero-convs start at zero; perturb them so the mask matters
    with torch.no_grad():
        for parameter in task.modules["controlnet"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_config(config, root / "config.yaml")
    (root / "model" / "last").mkdir(parents=True)
    for name, module in task.modules.items():
        save_weights(module, root / "model" / "last" / f"{name}.safetensors")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fake_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    for index in range(3):
        mask = np.zeros((64, 64), bool)
        mask[8 * index : 8 * index + 20, 10:30] = True
        write_mask(folder / f"case_{index}.png", mask)
    return folder


def masks_tensor(count: int = 3) -> torch.Tensor:
    masks = torch.zeros(count, 1, 32, 32)
    for index in range(count):
        masks[index, :, 4 * index : 4 * index + 10, 5:15] = 1
    return masks


@pytest.mark.parametrize(
    "steps, guidance, message",
    [(0, 10.0, "steps"), (1001, 10.0, "steps"), (2.5, 10.0, "steps"), (True, 10.0, "steps"),
     (50, -0.5, "guidance_scale"), (50, float("nan"), "guidance_scale"),
     (50, float("inf"), "guidance_scale"), (50, -3.0, "guidance_scale")],
)
def test_out_of_range_steps_and_guidance_are_rejected(steps, guidance, message):
    with pytest.raises(ConfigError, match=message):
        check_sampling_args(steps, guidance)


def test_valid_sampling_arguments_pass():
    check_sampling_args(1, 1.0)
    check_sampling_args(1000, 10.0)
    check_sampling_args(50, 0.0, mask_guidance=0.0)  # 0: the null token only / no ControlNet
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="mask_guidance must be a finite number >= 0"):
            check_sampling_args(50, 10.0, mask_guidance=bad)
    with pytest.raises(ConfigError, match="eta"):
        check_sampling_args(50, 10.0, eta=1.5)


def test_samples_are_seeded_per_mask_independent_of_batching(run_dir):
    backbone, _, _ = load_backbone(run_dir)
    sampler = MaskConditionedSampler(backbone, steps=3, guidance_scale=10.0)
    masks, seeds = masks_tensor(), [mask_seed(0, f"case_{i}") for i in range(3)]
    together = sampler.sample(masks, seeds)
    alone = torch.cat([sampler.sample(masks[i : i + 1], seeds[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-4)  # guidance 10 amplifies round-off
    assert torch.equal(together, sampler.sample(masks, seeds))
    assert not torch.allclose(together[0], sampler.sample(masks[:1], [seeds[0] + 1])[0])
    assert mask_seed(5, "a") == 5 + mask_seed(0, "a")


def count_forwards(backbone, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = backbone.predict_noise

    def counted(noisy, *args):
        calls.append(noisy.shape[0])
        return original(noisy, *args)

    monkeypatch.setattr(backbone, "predict_noise", counted)
    return calls


def test_cfg_batches_conditional_and_unconditional_into_one_forward(run_dir, monkeypatch):
    backbone, _, _ = load_backbone(run_dir)
    masks, seeds = masks_tensor(2), [1, 2]
    calls = count_forwards(backbone, monkeypatch)
    batched = MaskConditionedSampler(backbone, steps=3, guidance_scale=7.5).sample(masks, seeds)
    assert calls == [4, 4, 4]
    calls.clear()
    two_pass = MaskConditionedSampler(backbone, steps=3, guidance_scale=7.5, batched_cfg=False).sample(masks, seeds)
    assert calls == [2] * 6
    assert torch.allclose(batched, two_pass, atol=1e-4)
    calls.clear()
    MaskConditionedSampler(backbone, steps=3, guidance_scale=1.0).sample(masks, seeds)
    assert calls == [2, 2, 2]  # guidance 1 = conditional pass only


def test_sample_pool_writes_a_reproducible_pair_folder_with_manifest(run_dir, mask_dir, tmp_path):
    from laworder.data.layouts import load_dataset

    pool = sample_pool(run_dir, mask_dir, tmp_path / "pool", steps=2, guidance_scale=10.0, seed=3, batch_size=2)
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["method"] == "law" and manifest["count"] == 3
    assert manifest["steps"] == 2 and manifest["guidance_scale"] == 10.0 and manifest["seed"] == 3
    assert manifest["resolution"] == 32 and len(manifest["checkpoint_sha256"]) == 64
    assert [item["seed"] for item in manifest["items"]] == [mask_seed(3, f"case_{i}") for i in range(3)]
    collection = load_dataset(pool)
    assert sorted(r.stem for r in collection.train) == ["case_0", "case_1", "case_2"]
    from laworder.data.io import read_image, read_mask

    assert read_image(pool / "images" / "case_0.png").shape == (32, 32, 3)
    assert read_mask(pool / "masks" / "case_0.png").shape == (32, 32)
    again = sample_pool(run_dir, mask_dir, tmp_path / "again", steps=2, seed=3, batch_size=1)
    for name in ("case_0.png", "case_1.png", "case_2.png"):
        first = read_image(pool / "images" / name).astype(int)
        second = read_image(again / "images" / name).astype(int)
        assert np.abs(first - second).max() <= 1  # batching changes float round-off only


def test_sampling_never_builds_phi(run_dir, mask_dir, tmp_path, monkeypatch):
    import laworder.synth.weighting.law as law

    assert (run_dir / "model" / "last" / "objective.safetensors").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("LAW's φ was built at sampling time")

    monkeypatch.setattr(law.DeltaNet, "__init__", refuse)
    monkeypatch.setattr(law.LawObjective, "__init__", refuse)
    sample_pool(run_dir, mask_dir, tmp_path / "pool", steps=1, limit=1)


def test_sample_pool_refuses_a_non_empty_folder(run_dir, mask_dir, tmp_path):
    out = tmp_path / "pool"
    out.mkdir()
    (out / "other.txt").write_text("x")
    with pytest.raises(RunDirError, match="overwrite"):
        sample_pool(run_dir, mask_dir, out, steps=1, limit=1)
    # --overwrite replaces only what laworder wrote: a folder of someone else's files is refused
    with pytest.raises(RunDirError, match="did not write"):
        sample_pool(run_dir, mask_dir, out, steps=1, limit=1, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["other.txt"]
    pool = tmp_path / "pool2"
    sample_pool(run_dir, mask_dir, pool, steps=1, limit=2)
    (pool / "notes.txt").write_text("mine")
    sample_pool(run_dir, mask_dir, pool, steps=1, limit=1, overwrite=True)
    assert len(list((pool / "images").iterdir())) == 1 and (pool / "notes.txt").read_text() == "mine"


def test_missing_checkpoint_or_weights_are_named(run_dir, tmp_path):
    with pytest.raises(MissingWeightsError, match="checkpoint not found"):
        load_backbone(tmp_path / "nope")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "model" / "last" / "controlnet.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="controlnet.safetensors"):
        load_backbone(broken)
    lone = tmp_path / "lone"
    lone.mkdir()
    with pytest.raises(MissingWeightsError, match="config.yaml"):
        load_backbone(lone)


def test_repeated_stems_across_subsets_are_prefixed(tmp_path):
    from laworder.data.records import DatasetCollection, PairRecord

    records = {name: [PairRecord("1", tmp_path / "i.png", tmp_path / f"{name}.png", name)] for name in ("A", "B")}
    collection = DatasetCollection("x", "pranet", train=[], test=records)
    assert [item.stem for item in collect_masks(collection, "test")] == ["A_1", "B_1"]
    assert [item.stem for item in collect_masks(collection, "B")] == ["1"]
    with pytest.raises(ConfigError, match="unknown split"):
        collect_masks(collection, "C")


@pytest.mark.parametrize("guidance", [1.0, 10.0])
def test_mask_guidance_one_is_the_paper_sampler_bit_for_bit(run_dir, guidance):
    backbone, _, _ = load_backbone(run_dir)
    masks, seeds = masks_tensor(2), [4, 5]
    plain = MaskConditionedSampler(backbone, steps=3, guidance_scale=guidance).sample(masks, seeds)
    explicit = MaskConditionedSampler(backbone, steps=3, guidance_scale=guidance, mask_guidance=1.0).sample(masks, seeds)
    assert torch.equal(plain, explicit)


def test_mask_guidance_follows_its_formula_and_adds_one_mask_free_pass(run_dir, monkeypatch):
    from laworder.synth.backbones import LESION_TOKEN, NULL_TOKEN

    backbone, _, _ = load_backbone(run_dir)
    generator = torch.Generator().manual_seed(0)
    sample, hint = torch.randn(2, 3, 32, 32, generator=generator), backbone.mask_hint(masks_tensor(2))
    timestep = torch.tensor(500)
    cond, null = torch.full((2,), LESION_TOKEN), torch.full((2,), NULL_TOKEN)
    eps_cond = backbone.predict_noise(sample, timestep, hint, cond)
    eps_null = backbone.predict_noise(sample, timestep, hint, null)
    eps_base = backbone.predict_noise(sample, timestep, None, cond)
    assert not torch.allclose(eps_cond, eps_base)  # the ControlNet changes the prediction
    sampler = MaskConditionedSampler(backbone, steps=3, guidance_scale=4.0, mask_guidance=3.0, batched_cfg=False)
    expected = eps_cond + 3.0 * (eps_cond - eps_null) + 2.0 * (eps_cond - eps_base)
    assert torch.allclose(sampler.guided_noise(sample, timestep, hint), expected, atol=1e-5)
    only_mask = MaskConditionedSampler(backbone, steps=3, guidance_scale=1.0, mask_guidance=0.0)
    assert torch.allclose(only_mask.guided_noise(sample, timestep, hint), eps_base, atol=1e-6)  # s = 0: no ControlNet
    calls = count_forwards(backbone, monkeypatch)
    MaskConditionedSampler(backbone, steps=2, guidance_scale=10.0, mask_guidance=2.0).sample(masks_tensor(2), [1, 2])
    assert calls == [4, 2, 4, 2]  # batched CFG pass + the mask-free pass per step


def test_pools_with_mask_guidance_are_identical_whatever_the_batching(run_dir, mask_dir, tmp_path):
    from laworder.data.io import read_image

    pools = [sample_pool(run_dir, mask_dir, tmp_path / f"b{size}", steps=2, guidance_scale=10.0, mask_guidance=3.0,
                         seed=1, batch_size=size) for size in (1, 2, 3)]
    manifest = json.loads((pools[0] / "manifest.json").read_text())
    assert manifest["mask_guidance"] == 3.0 and manifest["guidance_scale"] == 10.0
    for name in ("case_0.png", "case_1.png", "case_2.png"):
        first = read_image(pools[0] / "images" / name).astype(int)
        for other in pools[1:]:
            # same seeds and noise whatever the batching; the pixels up to float round-off (oneDNN's
            # kernels can round differently per batch size: 1 pixel of 3072 by 1 level on AVX-512)
            difference = np.abs(first - read_image(other / "images" / name).astype(int))
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    plain = sample_pool(run_dir, mask_dir, tmp_path / "plain", steps=2, guidance_scale=10.0, seed=1, limit=1)
    assert not np.array_equal(read_image(plain / "images" / "case_0.png"), read_image(pools[0] / "images" / "case_0.png"))

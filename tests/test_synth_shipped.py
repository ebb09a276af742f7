"""Shipped generators (issue 25 item 4): export a run, load_pretrained(...).generate(masks), pools.

Tiny random-weight generators built here at 16² (VAE -> base -> two ControlNets, two steps
each); LAWORDER_PRETRAINED_DIR points at them, so nothing needs the real shipped weights.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from laworder.errors import ConfigError, DataError
from laworder.models.pretrained import ENV_DIR, list_pretrained
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.pretrained import find_generator, list_generators, load_pretrained
from laworder.synth.sampler import MaskConditionedSampler, load_backbone, sample_pool
from laworder.synth.ship import export_generator, prune_modules
from laworder.synth.task import train_synth
from laworder.synth.vae import VaeConfig, default_vae_loop, train_vae

LOOP = dict(max_steps=2, batch_size=3, checkpoint_every=0, snapshot_every=0, log_every=1, progress=False)
SAMPLING = {"steps": 3, "guidance_scale": 3.0}


def _loop(out: Path):
    return replace(default_loop(), output_dir=str(out), **LOOP)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """data, vae, base and the law / uniform ControlNet runs at 16²."""
    from laworder.data.procedural import generate_procedural

    root = tmp_path_factory.mktemp("gen")
    data = root / "data"
    generate_procedural(data / "TrainDataset", num_images=6, size=16, seed=0)
    generate_procedural(data / "TestDataset" / "Held", num_images=3, size=16, seed=0, start_index=6)
    vae = train_vae(VaeConfig(data=str(data), resolution=16, block_out_channels=(8, 16, 16), norm_num_groups=8,
                              val_images=2, scale_images=6,
                              loop=replace(default_vae_loop(), output_dir=str(root / "vae"), **LOOP)))
    base = train_synth(SynthConfig(data=str(data), objective="uniform", stage="base", resolution=16,
                                   validation_masks=0, backbone_kwargs={"preset": "tiny", "vae": str(vae)},
                                   loop=_loop(root / "base")))
    out = {"data": data, "vae": vae, "base": base, "root": root}
    for objective in ("law", "uniform"):
        out[objective] = train_synth(SynthConfig(data=str(data), objective=objective, base=str(base),
                                                 validation_masks=0, loop=_loop(root / objective)))
    return out


@pytest.fixture(scope="module")
def shipped(runs) -> Path:
    weights = runs["root"] / "weights"
    for objective in ("law", "uniform"):
        export_generator(runs[objective], weights, f"tiny/{objective}", description="A two-step test generator.",
                         command=f"pytest ({objective})", metrics={"recovery": {"dice_mg1": 0.5}, "fid": 12.5},
                         notes="trained for two steps", dtype="float16", tolerance=255, sampling=SAMPLING)
    return weights


@pytest.fixture
def env(shipped, monkeypatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(shipped))
    return shipped


def test_export_writes_meta_card_and_shares_frozen_networks(shipped):
    law, uniform = (json.loads((shipped / "synth" / f"tiny-{v}" / "meta.json").read_text()) for v in ("law", "uniform"))
    assert law["dtype"] == "float16" and law["resolution"] == 16 and law["objective"] == "law"
    assert set(law["modules"]) == {"vae", "unet", "embedding", "controlnet"}
    # the frozen VAE, base UNet and embedding are one file for both; the ControlNets differ
    for module in ("vae", "unet", "embedding"):
        assert law["modules"][module] == uniform["modules"][module]
    assert law["modules"]["controlnet"] != uniform["modules"]["controlnet"]
    assert len(list((shipped / "synth" / "_modules").glob("*.safetensors"))) == 5
    assert law["training"]["controlnet"]["global_step"] == 2 and law["training"]["base"]["global_step"] == 2
    assert "vae" in law["training"] and law["vae_config"]["latent_channels"] == 4
    check = law["fp16_check"]
    assert check["masks"] == 3 and 0 <= check["max_abs_levels"] <= 255 and check["tolerance_levels"] == 255
    card = (shipped / "synth" / "tiny-law" / "card.md").read_text()
    for text in ("16×16", "pytest (law)", "recovery / dice_mg1 | 0.5", "| fid | 12.5 |", "> trained for two steps",
                 "float16: at most", "load_pretrained(\"tiny/law\")", "controlnet |"):
        assert text in card, text
    assert list_pretrained(shipped) == []  # segmenter listing does not see generators


def test_generate_same_seed_same_image_any_mask_form(env):
    generator = load_pretrained("tiny/law")
    assert generator.resolution == 16 and not any(p.requires_grad for p in generator.backbone.unet.parameters())
    masks = np.zeros((3, 32, 32), dtype=np.uint8)
    masks[0, 4:20, 4:20] = 1
    masks[1, 10:30, 2:12] = 1
    masks[2, 0:8, 20:32] = 1
    images = generator.generate(masks, seed=7)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    again = generator.generate(torch.from_numpy(masks[:, None]).bool(), seed=7, batch_size=2)
    assert torch.allclose(images, again, atol=1e-5)
    assert torch.equal(generator.generate(masks[1:2], seeds=[8]), generator.generate(masks[1:2], seed=8))
    assert not torch.allclose(images, generator.generate(masks, seed=8))
    # other settings reach the sampler
    assert not torch.allclose(images, generator.generate(masks, seed=7, mask_guidance=3.0))


def test_bad_masks_and_names_are_one_line_errors(env):
    generator = load_pretrained("tiny/uniform")
    with pytest.raises(DataError, match="only 0 and 1"):
        generator.generate(np.full((1, 16, 16), 255, dtype=np.uint8))
    with pytest.raises(DataError, match="N×H×W or N×1×H×W"):
        generator.generate(np.zeros((16, 16)))
    with pytest.raises(ConfigError, match="known: tiny/law, tiny/uniform"):
        load_pretrained("polyps/law")
    with pytest.raises(ConfigError, match="2 seeds for 1 masks"):
        generator.generate(np.zeros((1, 16, 16)), seeds=[1, 2])


def test_float32_export_reproduces_the_run_exactly(runs, tmp_path):
    weights = tmp_path / "w"
    export_generator(runs["law"], weights, "tiny/law", description="d", command="c", dtype="float32", sampling=SAMPLING)
    meta = find_generator("tiny/law", weights).meta
    assert meta["dtype"] == "float32" and meta["fp16_check"]["max_abs_levels"] == 0
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 2:9, 3:12] = 1
    masks[1, :, 8:16, 0:5] = 1
    backbone, _, _ = load_backbone(runs["law"])
    expected = MaskConditionedSampler(backbone, 3, 3.0).sample(masks, [5, 6])
    got = load_pretrained("tiny/law", weights).generate(masks, seed=5)
    assert torch.allclose(got, ((expected + 1) / 2).clamp(0, 1), atol=1e-6)


def test_auto_falls_back_to_float32_beyond_tolerance_and_prunes(runs, tmp_path):
    weights = tmp_path / "w"
    export_generator(runs["law"], weights, "tiny/law", description="d", command="c", dtype="float16", sampling=SAMPLING)
    fp16_files = set((weights / "synth" / "_modules").iterdir())
    meta = export_generator(runs["law"], weights, "tiny/law", description="d", command="c", dtype="auto",
                            tolerance=-1, sampling=SAMPLING).meta
    assert meta["dtype"] == "float32" and meta["fp16_check"]["float16_rejected"]["tolerance_levels"] == -1
    left = set((weights / "synth" / "_modules").iterdir())
    assert len(left) == 4 and not left & fp16_files, "float16 files no generator uses are removed"
    assert "more than the tolerance" in (weights / "synth" / "tiny-law" / "card.md").read_text()
    (weights / "synth" / "_modules" / "notes.txt").write_text("not ours")
    assert prune_modules(weights / "synth") == [] and (weights / "synth" / "_modules" / "notes.txt").is_file()


def test_export_refuses_bad_names_and_base_runs(runs, tmp_path):
    with pytest.raises(ConfigError, match="<dataset>/<variant>"):
        export_generator(runs["law"], tmp_path, "Polyps-LAW", description="d", command="c")
    with pytest.raises(ConfigError, match="synth pretrain"):
        export_generator(runs["base"], tmp_path, "tiny/base", description="d", command="c")
    assert not (tmp_path / "synth").exists()


def test_sample_pool_from_a_shipped_generator(env, runs, tmp_path):
    masks = runs["data"] / "TestDataset" / "Held" / "masks"
    pool = sample_pool(None, str(masks), tmp_path / "pool", pretrained="tiny/law", steps=2, guidance_scale=2.0,
                       batch_size=2)
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["checkpoint"] == "pretrained:tiny/law" and manifest["method"] == "law" and manifest["count"] == 3
    assert len(list((pool / "images").glob("*.png"))) == 3
    with pytest.raises(ConfigError, match="not both or neither"):
        sample_pool(runs["law"], str(masks), tmp_path / "p2", pretrained="tiny/law")
    assert list_generators() and list_generators()[0].name == "tiny/law"


def test_ship_script_finds_moved_runs_and_ships_them(runs, tmp_path, monkeypatch, capsys):
    """bench/ship_generators.py on a folder of copied runs whose recorded base / VAE paths are gone."""
    import importlib.util
    import shutil

    import yaml

    source = tmp_path / "polyps_law"
    for part in ("law", "base", "vae"):
        shutil.copytree(runs[part], source / part)
    for part, key in (("law", "base"), ("base", "vae"), ("law", "vae")):
        path = source / part / "config.yaml"
        config = yaml.safe_load(path.read_text())
        if key == "base":
            config["base"] = "/gone/base"
        else:
            config["backbone_kwargs"]["vae"] = "/gone/vae"
        path.write_text(yaml.safe_dump(config))
    (source / "metrics.json").write_text(json.dumps({"recovery_dice_mg1": 0.61}))
    (source / "README.md").write_text("Trained by the generator session.\n")
    spec = importlib.util.spec_from_file_location("ship_generators", Path(__file__).parents[1] / "bench" / "ship_generators.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run, base, vae = module.locate(source)
    assert (run, base, vae) == (source / "law", source / "base", source / "vae" / "model" / "vae")
    dest = tmp_path / "dest"
    monkeypatch.setattr("sys.argv", ["ship", f"tiny/law={source}", "--dest", str(dest), "--check-count", "2",
                                     "--tolerance", "255"])
    module.main()
    assert "tiny/law: float16" in capsys.readouterr().out
    meta = find_generator("tiny/law", dest).meta
    assert meta["metrics"] == {"recovery_dice_mg1": 0.61} and "generator session" in meta["notes"]
    assert meta["fp16_check"]["masks"] == 2
    assert load_pretrained("tiny/law", dest).generate(np.ones((1, 16, 16)), seed=0).shape == (1, 3, 16, 16)


@pytest.mark.slow
def test_wheel_ships_generators_and_they_load_outside_the_repo(tmp_path):
    """Build the wheel from a copy of the project with a random generator added to the package's
    weights, install it into a bare folder and generate from outside the repository with no
    LAWORDER_PRETRAINED_DIR (about 5 s of CPU; the build's wall time depends on the machine's load)."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    from test_demo import random_generator  # tests/ is on sys.path (rootdir conftest)

    repo = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    shutil.copytree(repo / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, project / name)
    random_generator(project / "src" / "laworder" / "pretrained", "tiny/law")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, timeout=300, capture_output=True)
    wheel = next((tmp_path / "dist").glob("laworder-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "laworder/pretrained/synth/tiny-law/meta.json" in names
    modules = project / "src" / "laworder" / "pretrained" / "synth" / "_modules"  # the shipped ones + tiny/law's
    assert {n for n in names if n.startswith("laworder/pretrained/synth/_modules/")} == \
        {f"laworder/pretrained/synth/_modules/{p.name}" for p in modules.iterdir()}
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LAWORDER_PRETRAINED_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    code = ("import laworder, numpy as np; from laworder.synth import load_pretrained, list_generators; "
            "assert laworder.__file__.startswith(%r), laworder.__file__; "
            "print([g.name for g in list_generators()]); g = load_pretrained('tiny/law'); "
            "m = np.zeros((2, 16, 16)); m[:, 4:9, 3:12] = 1; a = g.generate(m, seed=3); "
            "print(tuple(a.shape), bool((a == g.generate(m, seed=3)).all()))") % str(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=300,
                         capture_output=True, text=True).stdout
    assert "'tiny/law'" in out and "(2, 3, 16, 16) True" in out


def test_cli_lists_and_samples_shipped_generators(env, runs, tmp_path, capsys):
    from laworder.cli import main

    assert main(["synth", "list"]) == 0
    listing = capsys.readouterr().out
    assert "shipped generators" in listing and "tiny/law" in listing and "16x16, law weighting, float16" in listing
    masks = runs["data"] / "TestDataset" / "Held" / "masks"
    pool = tmp_path / "pool"
    # steps and guidance not given: the card's (SAMPLING)
    assert main(["synth", "sample", "--pretrained", "tiny/uniform", str(masks), str(pool), "--no-progress"]) == 0
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["checkpoint"] == "pretrained:tiny/uniform" and manifest["method"] == "uniform"
    assert (manifest["steps"], manifest["guidance_scale"], manifest["mask_guidance"]) == (3, 3.0, 1.0)
    assert main(["synth", "sample", "--pretrained", "tiny/uniform", str(masks), str(tmp_path / "p2"), "--steps", "2",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "p2" / "manifest.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(["synth", "sample", "--pretrained", "tiny/nosuch", str(masks), str(tmp_path / "p3")]) == 2
    assert "known: tiny/law, tiny/uniform" in capsys.readouterr().err and not (tmp_path / "p3").exists()

"""``laworder demo`` end to end at toy size: every stage runs, the report is written, and it says
what its images can carry (issue 25 item 7)."""

import json

import pytest

from laworder.cli import main as cli
from laworder.models.pretrained import ENV_DIR


def random_generator(root, name: str) -> None:
    """A shipped generator with random weights (16², tiny VAE + UNet + ControlNet) under ``root``."""
    import torch
    from diffusers import AutoencoderKL

    from laworder.synth.backbones import create_backbone
    from laworder.synth.ship import save_generator

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4, sample_size=16)
    backbone = create_backbone("builtin", resolution=16, preset="tiny", vae=vae)
    save_generator(backbone, root, name, {"preset": "tiny"}, {"objective": "law", "sampling": {"steps": 2}})


def test_demo_runs_whole_loop_and_writes_report(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "weights"
    random_generator(weights, "polyps/law")
    monkeypatch.setenv(ENV_DIR, str(weights))
    out = tmp_path / "demo"
    overrides = ["image_size=32", "num_train=24", "num_test=8", "seg_epochs=1", "seg_batch_size=8",
                 "synth_steps=2", "synth_batch_size=4", "sample_steps=2", "augment_pool_size=8",
                 "synth_backbone_kwargs={preset: tiny}", "shipped_masks=3"]
    args = ["demo", "-o", str(out), "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    assert cli(args) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    synthesis = report["synthesis"]
    assert set(synthesis["objectives"]) == {"uniform", "law"}
    assert set(synthesis["augmentation"]) == {"real", "real+law"}
    assert synthesis["augmentation"]["real+law"]["num_extra"] == 8
    pool_stems = {p.stem for p in (out / "pools" / "law_train" / "masks").iterdir()}
    test_stems = {p.stem for p in (out / "data" / "test" / "masks").iterdir()}
    assert pool_stems and not pool_stems & test_stems, "the augmentation pool must not use test masks"
    for figure in ("seg_curves.png", "seg_qualitative.png", "synth_curves.png", "synth_pool_samples.png"):
        assert (out / "figures" / figure).stat().st_size > 0
    assert "![pool samples](figures/synth_pool_samples.png)" in markdown
    # two training steps cannot follow masks: labelled, and the augmentation rows claim nothing
    for row in synthesis["objectives"].values():
        assert 0 <= row["chance"]["chance_dice"] <= 1 and not row["chance"]["follows_masks"]
    assert "Synthesis plumbing check" in markdown and "Not a comparison of the objectives" in markdown
    assert "Augmentation plumbing check (not a result)" in markdown and "Downstream augmentation" not in markdown
    assert "real+law (synthetic images at chance: plumbing)" in markdown
    # a segmenter trained for one epoch learns nothing, and the report says so
    assert any(r["test"]["dice"] < 0.1 for r in report["segmentation"].values()) == ("learned nothing" in markdown)
    assert set(report["shipped"]["generators"]) == {"polyps/law"}  # polyps/uniform is not there: left out
    assert (out / "figures" / "shipped_samples.png").stat().st_size > 0
    assert "![shipped generators](figures/shipped_samples.png)" in markdown
    assert report["segmentation"]["mk_unet"]["model_kwargs"] == {"head_init": "balanced"}


def test_demo_without_shipped_generators_says_so(tmp_path, monkeypatch):
    from laworder.experiments.demo import DemoConfig
    from laworder.experiments.demo_synth import shipped_section

    monkeypatch.setenv(ENV_DIR, str(tmp_path / "empty"))
    section = shipped_section(DemoConfig(), tmp_path, tmp_path / "unused")
    assert section["generators"] == {}
    assert "No shipped generator in this install" in "\n".join(section["markdown"])


def test_beats_chance_rule():
    from laworder.experiments.demo_synth import beats_chance

    follows = [{"dice": 0.8 + 0.01 * i, "chance_dice": 0.2} for i in range(10)]
    noise = [{"dice": 0.2 + 0.05 * (-1) ** i, "chance_dice": 0.2} for i in range(10)]
    assert beats_chance(follows)["follows_masks"] and not beats_chance(noise)["follows_masks"]
    assert beats_chance(follows)["chance_dice"] == pytest.approx(0.2)

"""``laworder synth train / sample / list`` on the built-in backbone (tiny preset, 32²)."""

from __future__ import annotations

import json

import pytest
import torch

from laworder.cli import main




def test_synth_train_then_sample_from_the_command_line(tmp_path, capsys):
    from laworder.data.procedural import generate_procedural

    data = generate_procedural(tmp_path / "data", num_images=4, size=32, seed=0)
    run = tmp_path / "run"
    assert main(["synth", "train", "--data", str(data), "--objective", "ratio", "--resolution", "32",
                 "--set", "backbone_kwargs.preset=tiny", "--max-steps", "2", "--batch-size", "2",
                 "--lr", "1e-3", "-o", str(run), "--no-progress"]) == 0
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    pool = tmp_path / "pool"
    assert main(["synth", "sample", str(run), str(data), str(pool), "--steps", "2", "--limit", "2", "--no-progress"]) == 0
    manifest = json.loads((pool / "manifest.json").read_text())
    assert manifest["method"] == "ratio" and manifest["count"] == 2
    assert main(["synth", "sample", str(run), str(data), str(tmp_path / "bad"), "--guidance", "-0.5"]) == 2
    assert "guidance_scale must be" in capsys.readouterr().err
    assert main(["synth", "sample", str(run), str(data), str(tmp_path / "bad"), "--mask-guidance", "-1"]) == 2
    assert "mask_guidance must be a finite number >= 0" in capsys.readouterr().err


def test_synth_list_names_objectives_and_backbones(capsys):
    assert main(["synth", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("uniform", "fixed", "ratio", "law", "adaptive_distillation", "noise_consistency", "builtin", "sd15"):
        assert name in listing


def test_latent_mask_from_the_command_line_reaches_the_objective(tmp_path, monkeypatch):
    from laworder.data.procedural import generate_procedural
    from laworder.synth.weighting import base

    seen: list[str] = []
    resize = base.mask_at_prediction_resolution

    def spy(mask, eps_pred, mode="nearest"):
        seen.append(mode)
        return resize(mask, eps_pred, mode)

    monkeypatch.setattr(base, "mask_at_prediction_resolution", spy)
    data = generate_procedural(tmp_path / "data", num_images=4, size=32, seed=0)
    run = tmp_path / "run"
    assert main(["synth", "train", "--data", str(data), "--objective", "law", "--resolution", "32",
                 "--set", "backbone_kwargs.preset=tiny", "--set", "objective_kwargs.latent_mask=area",
                 "--set", "validation_masks=0", "--max-steps", "1", "--batch-size", "2", "-o", str(run),
                 "--no-progress"]) == 0
    assert seen and set(seen) == {"area"}
    assert "latent_mask: area" in (run / "config.yaml").read_text()

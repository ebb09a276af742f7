"""What LAW learned: δ with own vs another image's ε̂, δ per region, weight contrast references."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from laworder.errors import ConfigError
from laworder.experiments.law_analysis import pooled_contrast, weights_if_delta_is_mask, write_law_analysis
from laworder.synth.config import SynthConfig, default_loop
from laworder.synth.task import train_synth


def test_law_with_delta_equal_to_the_mask_is_a_clamped_ratio_prior_of_contrast_about_five():
    masks = torch.zeros(1, 1, 10, 10)
    masks[..., :2, :1] = 1  # r = 0.02
    weights = weights_if_delta_is_mask(masks, gamma=0.2, w_min=1e-3, w_max=2.0)
    assert weights[masks > 0.5].unique().tolist() == [2.0]  # lesion weight clamped at w_max
    r = 0.02
    assert pooled_contrast(weights, masks) == pytest.approx(4 * (1 - r) / (1 - 0.2), rel=1e-5)  # ≈ 4.9, not (1−r)/r = 49


def tiny_run(tmp_path, objective: str, **kwargs):
    loop = replace(default_loop(), output_dir=str(tmp_path / objective), max_steps=4, batch_size=2, checkpoint_every=0,
                   snapshot_every=0, log_every=1, progress=False)
    return train_synth(SynthConfig(data="procedural:6:32:0:3", objective=objective, resolution=32,
                                   backbone_kwargs={"preset": "tiny"}, objective_kwargs=kwargs, loop=loop))


def test_law_analysis_writes_numbers_and_a_figure(tmp_path):
    run = tiny_run(tmp_path, "law")
    result = write_law_analysis(run, tmp_path / "out", count=3, timesteps=(200, 700), train_masks=6)
    saved = json.loads((tmp_path / "out" / "law_analysis.json").read_text())
    assert saved["delta"]["true"].keys() == {"lesion", "boundary", "background"}
    assert 0.0 <= result["delta_other_image"]["mean_abs_difference"] <= 1.0
    assert [row["step"] for row in saved["contrast"]["curve"]] == [1, 2, 3, 4]
    references = saved["contrast"]["references"]
    assert references["ratio_pooled"] > references["law_delta_equals_mask_pooled"] > 1.0
    assert (tmp_path / "out" / "law_analysis.png").stat().st_size > 1000
    import shutil

    from laworder.cli import main

    shutil.rmtree(run / "model")  # the contrast needs no weights: config.yaml + metrics.jsonl
    assert main(["exp", "law-analysis", str(run), "--out", str(tmp_path / "contrast"), "--contrast-only",
                 "--train-masks", "6"]) == 0
    only = json.loads((tmp_path / "contrast" / "law_analysis.json").read_text())
    assert "delta" not in only and only["contrast"]["references"] == references
    from laworder.config import save_config

    for objective, kwargs in (("uniform", {}), ("law", {"use_delta": False})):
        other = tmp_path / f"{objective}_{len(kwargs)}"
        save_config(SynthConfig(objective=objective, objective_kwargs=kwargs), other / "config.yaml")
        with pytest.raises(ConfigError, match="no δ"):
            write_law_analysis(other, tmp_path / "nothing")

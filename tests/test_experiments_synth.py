"""Tables 3 and 6: tiny mask-recovery and LAW-ablation runs that train and sample real (tiny) diffusion models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from laworder.errors import NonFiniteLossError
from laworder.experiments.report import read_results
from laworder.experiments.runner import run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "exp"
QUIET = {"seg": {"loop": {"progress": False}}, "synth": {"loop": {"progress": False}}}




def test_mask_recovery_tiny_trains_samples_and_scores_each_pool(tmp_path):
    run_dir = run_experiment(CONFIGS / "table3_mask_recovery_tiny.yaml", QUIET, output_dir=tmp_path / "t3", progress=False)
    results = read_results(run_dir)["results"]
    rows = {r["label"]: r for r in results["rows"]}
    assert list(rows) == ["ControlNet (Uniform)", "LAW (ours)"]
    for label, row in rows.items():
        pool = Path(row["pools"][0]["path"])
        manifest = json.loads((pool / "manifest.json").read_text())
        assert manifest["split"] == "test" and manifest["count"] == row["count"] == 16
        assert manifest["method"] == ("uniform" if "Uniform" in label else "law")
        assert 0.0 <= row["dice"]["mean"] <= 1.0 and row["spread"] == "images"
        assert len(row["runs"][0]["per_image"]) == 16
        assert len(list(Path(row["qualitative_dir"]).glob("*.png"))) == 3
    assert results["segmenter"] == str(run_dir / "segmenter")
    assert "procedural" in results["reference"]["subsets"]
    assert [f["min_dice"] for f in results["filtered"]] == [0.5, 0.5]
    for entry in results["filtered"]:
        kept = json.loads((Path(entry["path"]) / "manifest.json").read_text())
        assert kept["filter"]["kept"] == entry["kept"] and kept["filter"]["source_count"] == 16
    report = (run_dir / "report.md").read_text()
    assert "| LAW (ours) |" in report and "Mask-recovery filter" in report and "frozen segmenter" in report.lower()
    assert (run_dir / "figures" / "pool_law_ours.png").is_file()


def test_law_ablation_tiny_marks_a_diverged_run_unstable(tmp_path, monkeypatch):
    from laworder.experiments import synth_tables

    real_train = synth_tables.train_pool_model

    def train_or_diverge(context, label, synth, data):
        if label == "+ Delta map (no norm)":
            raise NonFiniteLossError("loss is nan at step 3")
        return real_train(context, label, synth, data)

    monkeypatch.setattr(synth_tables, "train_pool_model", train_or_diverge)
    overrides = {**QUIET, "variants": {
        "+ Delta map (no norm)": {"objective": "law", "objective_kwargs": {"normalise": False, "dice": False}},
        "+ Dice regularizer (LAW)": {"objective": "law"}}}
    run_dir = run_experiment(CONFIGS / "table6_law_ablation_tiny.yaml", overrides, output_dir=tmp_path / "t6", progress=False)
    rows = {r["label"]: r for r in read_results(run_dir)["results"]["rows"]}
    assert rows["+ Delta map (no norm)"]["stable"] is False and "nan" in rows["+ Delta map (no norm)"]["error"]
    law = rows["+ Dice regularizer (LAW)"]
    assert law["stable"] is True and law["objective"] == "law" and 0.0 <= law["dice"]["mean"] <= 1.0
    report = (run_dir / "report.md").read_text()
    assert "| + Delta map (no norm) | – | – | – | – | Unstable |" in report
    assert "| + Dice regularizer (LAW) | – | – |" in report and "Stable |" in report
    assert (run_dir / "figures" / "delta_dice_regularizer_law.png").is_file()  # the weight-map snapshot

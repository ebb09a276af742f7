"""Experiment runner: tiny seg_compare and runtime configs end to end, reports, config errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from laworder.cli import main as cli
from laworder.errors import ConfigError, MissingWeightsError, RunDirError
from laworder.experiments.report import read_results, write_report
from laworder.experiments.runner import list_experiments, load_experiment, run_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "exp"
TABLES = ["table3_mask_recovery", "table4_augmentation", "table5_dose_response", "table6_law_ablation",
          "table7_8_seg_compare", "table9_runtime", "table10_skip_placement"]




QUIET = {"seg": {"loop": {"progress": False}}}


@pytest.mark.parametrize("table", TABLES)
def test_every_paper_table_has_a_config_and_a_tiny_variant_that_load(table):
    for name in (table, f"{table}_tiny"):
        kind, experiment, config = load_experiment(CONFIGS / f"{name}.yaml")
        assert kind in list_experiments() and type(config) is experiment.config_class
    kind, _, tiny = load_experiment(CONFIGS / f"{table}_tiny.yaml")
    if hasattr(tiny, "seg"):
        assert tiny.seg.data.startswith("procedural:") and tiny.seg.image_size <= 64


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*_cpu.yaml")), ids=lambda p: p.stem)
def test_cpu_scale_configs_behind_committed_results_load(path):
    kind, experiment, config = load_experiment(path)
    assert kind in list_experiments() and type(config) is experiment.config_class
    assert config.output_dir.startswith("bench/results/") and config.seg.model in ("order", "mk_unet")


def test_seg_compare_tiny_runs_each_variant_over_seeds_and_reports(tmp_path):
    run_dir = run_experiment(CONFIGS / "table7_8_seg_compare_tiny.yaml", QUIET, output_dir=tmp_path / "exp",
                             progress=False, command="pytest seg_compare")
    record = read_results(run_dir)
    rows = record["results"]["rows"]
    assert [r["label"] for r in rows] == ["MK-UNet", "ORDER[0,1]", "nnU-Net 2D (tiny)"]
    for row in rows:
        assert (Path(row["run_dir"]) / "seed0" / "model" / "best" / "model.safetensors").is_file()
        assert 0.0 <= row["protocol"]["summary"]["mean/dice"]["mean"] <= 1.0 and row["params"] > 0
    assert rows[0]["params"] == 27_353 and rows[1]["model_kwargs"] == {"skip_indices": [0, 1]}
    assert record["command"] == "pytest seg_compare" and record["config"]["kind"] == "seg_compare"
    report = (run_dir / "report.md").read_text()
    assert "pytest seg_compare" in report and "| ORDER[0,1] | 42,957 |" in report
    assert (run_dir / "figures" / "training_curves.png").is_file() and (run_dir / "figures" / "gate_values.png").is_file()
    assert (run_dir / "experiment.yaml").is_file()
    page = (run_dir / "report.html").read_text()  # the same tables and figures, as one page
    assert "<td>ORDER[0,1]</td>" in page and '<img alt=' in page and 'src="figures/training_curves.png"' in page
    assert page.count("<table>") == report.count("\n|---") >= 1

    # the report is rebuilt from the JSON alone (figures too)
    shutil.rmtree(run_dir / "figures")
    (run_dir / "report.md").unlink()
    assert cli(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report and (run_dir / "figures" / "training_curves.png").is_file()
    assert (run_dir / "report.html").read_text() == page


def test_markdown_page_keeps_tables_figures_and_code_without_external_references():
    from laworder.experiments.report import markdown_page

    page = markdown_page("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![cap](figures/x.png)\n\n```yaml\nk: v\n```\n", "T")
    assert "<table>" in page and "<td>1</td>" in page and '<img alt="cap" src="figures/x.png"' in page
    assert "<pre><code class=\"language-yaml\">k: v" in page and "http" not in page


def test_finished_experiment_is_refused_and_resume_reuses_the_seed_runs(tmp_path):
    overrides = {**QUIET, "variants": [{"name": "MK-UNet", "model": "mk_unet"}]}
    run_dir = run_experiment(CONFIGS / "table7_8_seg_compare_tiny.yaml", overrides, output_dir=tmp_path / "exp", progress=False)
    weights = run_dir / "rows" / "mk_unet" / "seed0" / "model" / "best" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    with pytest.raises(RunDirError, match="--resume"):
        run_experiment(CONFIGS / "table7_8_seg_compare_tiny.yaml", overrides, output_dir=run_dir, progress=False)
    run_experiment(CONFIGS / "table7_8_seg_compare_tiny.yaml", overrides, output_dir=run_dir, resume=True, progress=False)
    assert weights.stat().st_mtime_ns == stamp


def test_runtime_tiny_profiles_each_variant(tmp_path):
    assert cli(["exp", "run", str(CONFIGS / "table9_runtime_tiny.yaml"), "-o", str(tmp_path / "rt"), "--no-progress"]) == 0
    record = read_results(tmp_path / "rt")
    rows = record["results"]["rows"]
    assert [r["label"] for r in rows] == ["MK-UNet", "ORDER[0,1]"]
    assert all(r["params"] > 0 and r["ms_per_img"] > 0 and r["flops_full"] >= r["flops_conv_linear"] > 0 for r in rows)
    assert record["command"].startswith("laworder exp run") and "table9_runtime_tiny.yaml" in record["command"]
    report = (tmp_path / "rt" / "report.md").read_text()
    assert "Latency relative to MK-UNet" in report and "| ORDER[0,1] | 42,957 |" in report


def test_config_errors_name_the_offending_value_and_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_experiment({"kind": "table_of_dreams"}, output_dir=tmp_path / "a")
    assert "seg_compare" in str(err.value) and "dose_response" in str(err.value)
    with pytest.raises(ConfigError, match="kind"):
        run_experiment({"seeds": [0]}, output_dir=tmp_path / "b")
    with pytest.raises(ConfigError) as err:
        run_experiment(CONFIGS / "table7_8_seg_compare_tiny.yaml",
                       {"variants": [{"name": "x", "model": "unet_of_dreams"}]}, output_dir=tmp_path / "c")
    assert "unet_of_dreams" in str(err.value) and "mk_unet" in str(err.value) and "nnunet2d" in str(err.value)
    with pytest.raises(ConfigError) as err:
        run_experiment(CONFIGS / "table4_augmentation_tiny.yaml", {"pools": {"X": {"synth": {"objective": "magic"}}}},
                       output_dir=tmp_path / "d")
    assert "magic" in str(err.value) and "law" in str(err.value) and "uniform" in str(err.value)
    with pytest.raises(ConfigError, match="normalize"):
        run_experiment(CONFIGS / "table6_law_ablation_tiny.yaml",
                       {"variants": {"typo": {"objective": "law", "objective_kwargs": {"normalize": False}}}},
                       output_dir=tmp_path / "e")
    with pytest.raises(ConfigError, match="unknown key"):
        run_experiment(CONFIGS / "table9_runtime_tiny.yaml", {"repeat": 3}, output_dir=tmp_path / "f")
    with pytest.raises(MissingWeightsError, match="no_such_run"):
        run_experiment(CONFIGS / "table3_mask_recovery_tiny.yaml", {"segmenter": str(tmp_path / "no_such_run")},
                       output_dir=tmp_path / "g")
    with pytest.raises(ConfigError, match="mask_guidance must be"):
        run_experiment(CONFIGS / "table4_augmentation_tiny.yaml", {"sample": {"mask_guidance": -1.0}},
                       output_dir=tmp_path / "h")
    assert not any((tmp_path / name).exists() for name in "abcdefgh"), "nothing may be written for a bad config"


def test_fmt_shows_a_single_run_without_a_fake_spread():
    from laworder.experiments.base import fmt

    assert fmt(0.741, 0.008) == "74.1 ± 0.8"
    assert fmt(0.741, math.nan) == "74.1"
    assert fmt(0.825, 0.003, 1.0, 3) == "0.825 ± 0.003"
    assert fmt(None) == "–"


def test_report_refuses_a_folder_without_results(tmp_path):
    assert cli(["report", str(tmp_path)]) == 2
    with pytest.raises(Exception, match="results.json"):
        write_report(tmp_path)
    assert json.loads(json.dumps(list_experiments()))


def test_an_empty_mapping_override_clears_a_section():
    from laworder.config import deep_merge, parse_overrides

    base = {"pools": {"LAW": "a", "Uniform": "b"}, "seg": {"loop": {"epochs": 20, "lr": 1e-3}}}
    merged = deep_merge(base, parse_overrides(["pools={}", "seg.loop.epochs=29"]))
    assert merged == {"pools": {}, "seg": {"loop": {"epochs": 29, "lr": 1e-3}}}
    _, _, config = load_experiment(CONFIGS / "table4_augmentation_cpu.yaml", parse_overrides(["pools={}"]))
    assert config.pools == {} and config.real_only

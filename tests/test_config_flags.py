"""A config means what it says: defaults <- YAML <- --set <- explicit flags, and a flag not given
changes nothing (issue 24, item 1). ``seg config`` / ``synth config`` print what ``train`` uses."""

from __future__ import annotations

import pytest
import yaml

from laworder.cli import main
from laworder.config import deep_merge, load_yaml, packaged_configs, to_dict

SEG_CONFIGS = sorted(name for name, path in packaged_configs().items() if path.parent.name == "seg")

# Flags that touch only the loop section, with the value they set: each run alone must change
# exactly that key and keep every other value of the YAML.
LOOP_FLAGS: list[tuple[list[str], str, object]] = [
    ([], "", None),
    (["--no-progress"], "progress", False),
    (["--cpu"], "cpu", True),
    (["--seed", "7"], "seed", 7),
    (["--epochs", "3"], "epochs", 3),
    (["--lr", "0.5"], "lr", 0.5),
    (["--batch-size", "5"], "batch_size", 5),
    (["--keep-checkpoints", "2"], "keep_checkpoints", 2),
    (["--output", "elsewhere"], "output_dir", "elsewhere"),
]


def _printed(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_packaged_seg_configs_exist():
    assert {"tiny", "polyps_paper", "brisc_paper"} <= set(SEG_CONFIGS)


@pytest.mark.parametrize("name", SEG_CONFIGS)
@pytest.mark.parametrize("flags,key,value", LOOP_FLAGS, ids=[" ".join(f[0]) or "none" for f in LOOP_FLAGS])
def test_seg_config_keeps_the_yaml_whatever_flag_is_given(name, flags, key, value, capsys):
    from laworder.seg.config import SegTrainConfig

    expected = deep_merge(to_dict(SegTrainConfig()), load_yaml(name))
    if key:
        expected["loop"][key] = value
    printed = _printed(["seg", "config", "--config", name, *flags], capsys)
    assert printed == expected


def test_tiny_prints_its_own_epochs_and_lr(capsys):
    printed = _printed(["seg", "config", "--config", "tiny"], capsys)
    assert printed["loop"]["epochs"] == 10
    assert printed["loop"]["lr"] == pytest.approx(0.003)


def test_set_then_flag_order(capsys, tmp_path):
    """--set beats the YAML; an explicit flag beats --set."""
    printed = _printed(["seg", "config", "--config", "tiny", "--set", "loop.lr=0.25"], capsys)
    assert printed["loop"]["lr"] == 0.25 and printed["loop"]["epochs"] == 10
    printed = _printed(["seg", "config", "--config", "tiny", "--set", "loop.lr=0.25", "--lr", "0.125"], capsys)
    assert printed["loop"]["lr"] == 0.125


def test_explicit_set_of_an_empty_section_still_clears_it(capsys):
    printed = _printed(["seg", "config", "--config", "tiny", "--set", "model_kwargs={}"], capsys)
    assert printed["model_kwargs"] == {}


def test_synth_config_without_loop_flags_keeps_the_synth_loop(capsys):
    from laworder.synth.config import SynthConfig

    defaults = to_dict(SynthConfig())["loop"]
    printed = _printed(["synth", "config", "--data", "procedural:8:32:0", "--objective", "law"], capsys)
    assert printed["loop"] == defaults
    with_flag = _printed(["synth", "config", "--data", "procedural:8:32:0", "--objective", "law", "--no-progress"],
                         capsys)
    assert {k: v for k, v in with_flag["loop"].items() if k != "progress"} == \
        {k: v for k, v in defaults.items() if k != "progress"}


@pytest.mark.parametrize("flags,key,value", LOOP_FLAGS, ids=[" ".join(f[0]) or "none" for f in LOOP_FLAGS])
def test_synth_yaml_loop_section_survives_every_flag(flags, key, value, capsys, tmp_path):
    from laworder.synth.config import SynthConfig

    config = tmp_path / "synth.yaml"
    config.write_text("data: procedural:8:32:0\nobjective: law\nloop:\n  max_steps: 77\n  lr: 0.0042\n"
                      "  output_dir: runs/mine\n")
    expected = deep_merge(to_dict(SynthConfig()), load_yaml(config))
    if key:
        expected["loop"][key] = value
    printed = _printed(["synth", "config", "--config", str(config), *flags], capsys)
    assert printed == expected

"""Every ``laworder`` sub-command answers ``--help``; the package runs as ``python -m laworder``."""

import argparse
import subprocess
import sys

import pytest

from laworder.cli import build_parser


def _leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix
        return
    for name, sub in actions[0].choices.items():
        yield from _leaf_commands(sub, prefix + (name,))


COMMANDS = list(_leaf_commands(build_parser()))


def test_core_commands_are_present():
    names = {" ".join(c) for c in COMMANDS}
    for expected in ("data check", "data procedural", "data prepare-kits19", "seg train", "seg protocol",
                     "seg evaluate", "seg predict", "seg profile", "seg export", "seg list", "demo"):
        assert expected in names


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: laworder" in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_help_has_a_runnable_looking_example(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert "example:\n  laworder " + " ".join(command) in out, f"add an example to laworder.cli.help_text.EXAMPLES for {command}"


def test_top_level_help_reads_cleanly(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "{data,seg" not in out
    assert "typical session:" in out and "laworder seg train --config polyps_paper" in out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "laworder", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "laworder" in out.stdout


def test_data_check_reports_problems_with_exit_code(tmp_path, capsys):
    from laworder.cli import main
    from laworder.data.procedural import generate_procedural

    data = generate_procedural(tmp_path / "d", num_images=4, size=32, seed=0)
    assert main(["data", "check", str(data)]) == 0
    (data / "masks" / sorted(p.name for p in (data / "masks").iterdir())[0]).write_bytes(b"not a png")
    assert main(["data", "check", str(data)]) == 1
    assert "unreadable" in capsys.readouterr().out.lower()


def test_help_and_the_parser_do_not_import_torch():
    """Building the parser (every subcommand) stays light: `laworder --help` answers without torch."""
    import subprocess
    import sys

    code = ("import sys; from laworder.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'accelerate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

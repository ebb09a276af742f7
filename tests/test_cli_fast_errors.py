"""A wrong command is answered before torch, diffusers or MONAI are imported (issue 24 item 7).

One subprocess runs ``laworder.cli.main`` on each case in turn and reports, after each, its exit
code, its stderr and which heavy packages are loaded: the checks must answer from the arguments,
the config and the file system alone (``bench/cli_latency.py`` times the same cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "diffusers", "monai", "accelerate", "transformers")

SCRIPT = r"""
import contextlib, io, json, sys
from laworder.cli import main
heavy = sys.argv[1].split(",")
report = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    report.append({"argv": argv, "code": code, "stderr": err.getvalue(),
                   "heavy": [name for name in heavy if name in sys.modules]})
print(json.dumps(report))
"""


def test_bad_values_and_missing_folders_exit_2_without_torch(tmp_path):
    missing = str(tmp_path / "no_such_data")
    cases = [
        (["seg", "train", "--set", "loop.lr=abc"], "loop.lr: expected a number"),
        (["seg", "train", "--lr", "-1", "-o", str(tmp_path / "r")], "loop.lr=-1.0 is out of range"),
        (["seg", "train", "--set", "loop.epochs=0", "-o", str(tmp_path / "r")], "loop.epochs=0"),
        (["seg", "train", "--data", missing, "-o", str(tmp_path / "r")], "dataset not found"),
        (["seg", "protocol", "--data", missing, "-o", str(tmp_path / "r")], "dataset not found"),
        (["seg", "config", "--set", "nosuch=1"], "nosuch"),
        (["synth", "train", "--set", "loop.lr=abc"], "loop.lr: expected a number"),
        (["synth", "train", "--data", missing, "-o", str(tmp_path / "r")], "dataset not found"),
        (["synth", "config", "--set", "loop.batch_size=x"], "loop.batch_size"),
        (["data", "check", missing], "no such dataset folder"),
        (["seg", "train", "--bogus"], "unrecognized arguments: --bogus"),
    ]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(HEAVY), json.dumps([argv for argv, _ in cases])],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    for (argv, expected), result in zip(cases, report):
        lines = result["stderr"].splitlines()
        assert result["code"] == 2, result
        assert len(lines) == 1 and lines[0].startswith("laworder: error: ") and expected in lines[0], result
        assert result["heavy"] == [], f"{argv} imported {result['heavy']} before answering"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even the run folder

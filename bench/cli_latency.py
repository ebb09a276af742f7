"""How fast a wrong command is answered: each case as a whole ``python -m laworder`` process.

    .venv/bin/python bench/cli_latency.py                 # 7 runs per case, min reported
    .venv/bin/python bench/cli_latency.py --runs 15

Cases: ``--help``, a bad flag, a bad value (``seg train --set loop.lr=abc``: 5.5 s before the
command line checked values before importing the training code), a missing data folder (``seg
train``, ``synth train``, ``data check``); beside them a bare ``python -c pass`` (the interpreter's
own start) and, for scale, ``python -c "import torch"``. Cases run interleaved in rounds (case 1,
2, ..., case 1, 2, ...) so the machine's load hits all alike; the minimum over rounds is the figure
(the least disturbed run), the median is listed too. Each case also records whether torch was
imported (``-X importtime`` run once) and its exit code and stderr line.
Writes bench/results/cli_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(name, argv after ``python``) for every case."""
    missing = str(tmp / "no_such_data")
    laworder = ["-m", "laworder"]
    return [
        ("python -c pass (interpreter start)", ["-c", "pass"]),
        ("--help", laworder + ["--help"]),
        ("bad flag: seg train --bogus", laworder + ["seg", "train", "--bogus"]),
        ("bad value: seg train --set loop.lr=abc", laworder + ["seg", "train", "--set", "loop.lr=abc"]),
        ("bad value: seg train --lr -1", laworder + ["seg", "train", "--lr", "-1"]),
        ("missing data: seg train --data MISSING", laworder + ["seg", "train", "--data", missing, "-o", str(tmp / "run")]),
        ("missing data: synth train --data MISSING", laworder + ["synth", "train", "--data", missing, "-o", str(tmp / "run")]),
        ("missing data: data check MISSING", laworder + ["data", "check", missing]),
        ("for scale: python -c 'import torch'", ["-c", "import torch"]),
    ]


def run_once(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, done


def imports_torch(argv: list[str], env: dict, cwd: Path) -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    return any(line.rstrip().endswith("| torch") for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds (each case once per round)")
    parser.add_argument("--out", default=str(HERE / "results" / "cli_latency"), help="path stem of the .json/.md")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        todo = cases(tmp)
        times: dict[str, list[float]] = {name: [] for name, _ in todo}
        last: dict[str, subprocess.CompletedProcess] = {}
        load_before = os.getloadavg()
        for _ in range(args.runs):
            for name, argv in todo:
                seconds, done = run_once(argv, env, tmp)
                times[name].append(seconds)
                last[name] = done
        load_after = os.getloadavg()
        torch_imported = {name: imports_torch(argv, env, tmp) for name, argv in todo}
        leftovers = sorted(p.name for p in tmp.iterdir())

    rows = []
    for name, argv in todo:
        done = last[name]
        stderr = done.stderr.strip().splitlines()
        rows.append({
            "case": name,
            "command": shlex.join(["python", *argv]).replace(str(tmp), "$TMP"),
            "min_s": round(min(times[name]), 3),
            "median_s": round(statistics.median(times[name]), 3),
            "runs": len(times[name]),
            "exit_code": done.returncode,
            "stderr_lines": len(stderr),
            "stderr": stderr[-1].replace(str(tmp), "$TMP") if stderr else "",
            "imports_torch": torch_imported[name],
        })
    result = {
        "command": shlex.join(["python", "bench/cli_latency.py", *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "files_left_in_cwd": leftovers,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# How fast a wrong command is answered",
        "",
        f"`{result['command']}` — each case a whole process, {args.runs} interleaved rounds; min (and median) "
        f"wall time. Python {result['python']}, {result['machine']}; 1-minute load average "
        f"{result['load_average_1min']['before']} before, {result['load_average_1min']['after']} after "
        "(a shared machine: the minimum is the least disturbed run).",
        "",
        "| case | min s | median s | exit | torch imported | stderr |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['case']} | {row['min_s']:.3f} | {row['median_s']:.3f} | {row['exit_code']} | "
                     f"{'yes' if row['imports_torch'] else 'no'} | {row['stderr'][:90].replace('|', '/')} |")
    lines += ["", "Commands:", ""] + [f"- {row['case']}: `{row['command']}`" for row in rows] + [""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

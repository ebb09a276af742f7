"""Property-based fuzz of the config layer and the command line (issue 24 item 8), with hypothesis.

Random flags and values, ``--set`` keys of the real config dataclasses (and made-up ones) with
random strings, numbers, YAML snippets and unicode, on cheap commands only: ``seg config`` /
``synth config`` (print the resolved config), ``data check`` on a tiny folder, and ``seg train`` /
``synth train`` held to fail in validation (``loop.keep_checkpoints=0`` is always set last, and
the fuzz never draws that key or flag). The promise checked for every example:

- exit code 0 (or 1 for a ``data check`` that found problems) or 2 — never a traceback, never
  "unexpected <Exception>";
- on exit 2: exactly one stderr line ``laworder: error: ...``;
- no file outside the command's own output changes: the commands run inside a small tree whose
  every file is hashed before and after (the config commands and failed trains write nothing);
- ``seg config`` / ``synth config``: what they print reads back (``--config printed.yaml``) to the
  very same config.

Bounded for CI: ``max_examples`` and ``deadline`` below keep the file well under 30 s; everything
runs in-process and imports no torch (``tests/test_cli_fast_errors.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import typing
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from laworder.cli import main  # noqa: E402
from laworder.seg.config import SegTrainConfig  # noqa: E402
from laworder.synth.config import SynthConfig  # noqa: E402

FUZZ = settings(max_examples=20, deadline=10_000, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every ``--set`` key of a config dataclass, nested sections included (``loop.lr``)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            paths += field_paths(kind, f"{prefix}{field.name}.")
        else:
            paths.append(prefix + field.name)
    return paths


GUARD_KEY = "loop.keep_checkpoints"  # set to 0 last on train commands: they must fail in validation
SEG_KEYS = [k for k in field_paths(SegTrainConfig) if k != GUARD_KEY]
SYNTH_KEYS = [k for k in field_paths(SynthConfig) if k != GUARD_KEY]

# argv can hold any text but NUL (the OS cannot pass it) and lone surrogates (not UTF-8 text)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
SNIPPETS = st.sampled_from([
    "", " ", "null", "~", "true", "no", "yes", "on", "[]", "{}", "[1, 2]", "[[1]]", "{a: 1}", "{loop: {}}",
    "nan", ".nan", ".inf", "-.inf", "inf", "1e999", "-1e999", "1e-400", "0x1F", "0o17", "0b11", "1_000",
    "2026-01-01", "12:30:00", "&a [*a, *a]", "!!python/object/apply:os.system ['true']", "!!binary aGk=",
    "'", '"', "[", "{", "- a", ": b", "a: b", "? x", "%YAML 1.2", "---", "...", "#",
    "procedural", "procedural:2:32:0", "procedural:x", "procedural:-1", "tiny", "polyps_paper",
    "order", "mk_unet", "adamw", "cosine", "law", "uniform", "builtin", "sd15", "fp16", "cpu", "cuda",
    "ünïcødé", "日本語", "🙂", "a\tb", "a\nb", "\\", "../..", "/", ".", "-", "--", "-1", "--help",
])
NUMBERS = st.one_of(st.integers(min_value=-(2**80), max_value=2**80).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))
VALUES = st.one_of(SNIPPETS, NUMBERS, TEXT)


def overrides(keys: list[str]) -> st.SearchStrategy[list[str]]:
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k + ".x"), TEXT,
                    st.sampled_from(["", ".", "loop.", ".lr", "loop..lr", "a.b.c.d", "=", "loop=1"]))
    return st.lists(st.tuples(key, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}") | TEXT, max_size=4)


RUN_FLAGS = {  # flag -> values (the run options every training command shares); None: a switch
    "--epochs": NUMBERS | SNIPPETS, "--max-steps": NUMBERS | SNIPPETS, "--batch-size": NUMBERS | SNIPPETS,
    "--lr": NUMBERS | SNIPPETS, "--seed": NUMBERS | SNIPPETS, "--num-workers": NUMBERS | SNIPPETS,
    "--mixed-precision": SNIPPETS, "--report-to": SNIPPETS | st.sampled_from(["csv", "tensorboard", "all"]),
    "--cpu": None, "--no-progress": None, "--overwrite": None, "--resume": None, "--config": SNIPPETS,
}
SEG_FLAGS = {**RUN_FLAGS, "--data": SNIPPETS | TEXT, "--model": SNIPPETS | TEXT, "--image-size": NUMBERS | SNIPPETS}
SYNTH_FLAGS = {**RUN_FLAGS, "--data": SNIPPETS | TEXT, "--objective": SNIPPETS | TEXT, "--backbone": SNIPPETS,
               "--resolution": NUMBERS | SNIPPETS, "--prompt": TEXT, "--probe-every": NUMBERS | SNIPPETS,
               "--gradient-checkpointing": None}


def flags(table: dict[str, typing.Any]) -> st.SearchStrategy[list[str]]:
    def one(flag: str) -> st.SearchStrategy[list[str]]:
        values = table[flag]
        return st.just([flag]) if values is None else values.map(lambda v: [flag, v])

    pair = st.sampled_from(sorted(table)).flatmap(one)
    return st.lists(pair | TEXT.map(lambda t: ["--" + t]), max_size=4).map(lambda groups: sum(groups, []))


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A small tree the commands run in: a 4-pair dataset, a YAML config, a stray file."""
    from laworder.data.procedural import generate_procedural

    root = tmp_path_factory.mktemp("fuzz")
    generate_procedural(root / "data", num_images=4, size=32, seed=0)
    (root / "my.yaml").write_text("loop:\n  epochs: 3\n")
    (root / "notes.txt").write_text("the user's own file\n")
    return root


def run(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as done:  # --help / --version: argparse prints and exits 0
                code = done.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


UNEXPECTED = re.compile(r"laworder: error: unexpected \w+:")  # ``one_line`` for an exception nobody foresaw


def check_answer(argv: list[str], code: int, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    assert code in allowed, f"{argv!r}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err and not UNEXPECTED.search(err), f"{argv!r}: {err!r}"
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("laworder: error: "), f"{argv!r}: {err!r}"


def check_config_command(tree: Path, command: str, argv: list[str]) -> None:
    before = tree_hashes(tree)
    code, out, err = run(argv, tree)
    check_answer(argv, code, err)
    assert tree_hashes(tree) == before, f"{argv!r} changed files"
    if code == 0:  # what it printed reads back to the same config
        printed = tree / ".printed.yaml"
        printed.write_text(out, encoding="utf-8")
        try:
            again = run([command.split()[0], command.split()[1], "--config", str(printed)], tree)
        finally:
            printed.unlink()
        assert again[0] == 0 and again[1] == out, f"{argv!r}: the printed config does not read back: {again[2]!r}"


@FUZZ
@given(sets=overrides(SEG_KEYS), extra=flags(SEG_FLAGS))
def test_seg_config_fuzz(tree, sets, extra):
    argv = ["seg", "config", *extra] + [word for item in sets for word in ("--set", item)]
    check_config_command(tree, "seg config", argv)


@FUZZ
@given(sets=overrides(SYNTH_KEYS), extra=flags(SYNTH_FLAGS))
def test_synth_config_fuzz(tree, sets, extra):
    argv = ["synth", "config", *extra] + [word for item in sets for word in ("--set", item)]
    check_config_command(tree, "synth config", argv)


NO_GUARD_FLAG = {k: v for k, v in SEG_FLAGS.items() if k not in ("--config",)}


@FUZZ
@given(command=st.sampled_from(["seg train", "seg protocol", "synth train", "synth pretrain"]),
       sets=overrides(SEG_KEYS + SYNTH_KEYS), extra=st.data())
def test_train_commands_fail_in_validation_with_one_line(tree, command, sets, extra):
    table = SYNTH_FLAGS if command.startswith("synth") else SEG_FLAGS
    if command == "synth pretrain":
        table = {k: v for k, v in table.items() if k not in ("--objective", "--probe-every")}
    drawn = extra.draw(flags({k: v for k, v in table.items() if k != "--config"}))
    argv = [*command.split(), *drawn] + [word for item in sets for word in ("--set", item)]
    argv += ["--set", f"{GUARD_KEY}=0"]
    before = tree_hashes(tree)
    code, _, err = run(argv, tree)
    check_answer(argv, code, err, allowed=(2,))
    assert tree_hashes(tree) == before, f"{argv!r} changed files"


@FUZZ
@given(extra=st.lists(st.one_of(st.sampled_from(["--layout"]).flatmap(lambda f: (SNIPPETS | TEXT).map(lambda v: [f, v])),
                                TEXT.map(lambda t: ["--" + t])), max_size=2).map(lambda g: sum(g, [])),
       target=st.sampled_from(["data", "data/images", "notes.txt", "missing", "procedural:2:32:0"])
       | SNIPPETS.filter(lambda s: not s.startswith("procedural")) | TEXT.filter(lambda s: not s.startswith("procedural")))
def test_data_check_fuzz(tree, extra, target):
    """(A bare ``procedural`` would generate the default 200-image set: not a cheap command.)"""
    argv = ["data", "check", target, *extra]
    before = tree_hashes(tree)
    code, _, err = run(argv, tree)
    check_answer(argv, code, err, allowed=(0, 1, 2))
    assert tree_hashes(tree) == before, f"{argv!r} changed files"

"""Every CLI command against a table of bad inputs: exit code 2, one line on stderr, no traceback,
nothing created or changed.

The table runs in one helper process (``tests/helpers/bad_inputs_harness.py``: one torch import
for all cases, a file snapshot before and after each); a few cases also run as their own
``python -m laworder.cli`` subprocess, the way a user meets them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers"
SRC = Path(__file__).resolve().parents[1] / "src"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SEG_TRAIN = ["seg", "train", "--data", "{data}", "--model", "mk_unet", "--image-size", "32", "--epochs", "1",
             "-o", "{root}/new_seg"]
SYNTH_TRAIN = ["synth", "train", "--data", "{data}", "--resolution", "32", "--set", "backbone_kwargs.preset=tiny",
               "--max-steps", "1", "-o", "{root}/new_synth"]
SAMPLE = ["synth", "sample", "{synthrun}", "{data}", "{root}/new_pool", "--steps", "1", "--device", "cpu"]
PREDICT = ["seg", "predict", "{segrun}"]
NNUNET = ["export", "nnunet", "{data}", "{root}/new_raw", "--id", "501", "--name", "Polyps"]
RECOVERY = ["exp", "mask-recovery", "{segrun}"]

# (id, argv, env): every row must exit 2 with one stderr line, no traceback, nothing written
CASES: list[tuple[str, list[str], dict[str, str]]] = [
    # argument parsing, every level
    ("no-command", [], {}),
    ("unknown-command", ["nosuch"], {}),
    ("seg-no-action", ["seg"], {}),
    ("seg-unknown-action", ["seg", "trian"], {}),
    ("unknown-option", ["seg", "list", "--bogus"], {}),
    ("max-pixels-not-int", ["--max-image-pixels", "many", "seg", "list"], {}),
    ("max-pixels-zero", ["--max-image-pixels", "0", "seg", "predict", "{segrun}", "{images}", "{root}/o"], {}),
    # data
    ("data-check-unknown-layout", ["data", "check", "{data}", "--layout", "nosuch"], {}),
    ("data-check-missing", ["data", "check", "{missing}"], {}),
    ("procedural-zero-images", ["data", "procedural", "{root}/p", "--num-images", "0"], {}),
    ("procedural-tiny-size", ["data", "procedural", "{root}/p", "--size", "4"], {}),
    ("procedural-size-not-int", ["data", "procedural", "{root}/p", "--size", "big"], {}),
    ("procedural-out-is-file", ["data", "procedural", "{file}", "--num-images", "2", "--size", "32"], {}),
    ("kits19-missing-source", ["data", "prepare-kits19", "{missing}", "{root}/k"], {}),
    # seg train: types, ranges, names, files, folders
    ("seg-lr-not-number", SEG_TRAIN + ["--set", "loop.lr=abc"], {}),
    ("seg-lr-negative", SEG_TRAIN + ["--set", "loop.lr=-1"], {}),
    ("seg-epochs-not-int", SEG_TRAIN[:-2] + ["--epochs", "x"], {}),
    # an explicit flag beats --set (defaults <- YAML <- --set <- flags), so each is tested alone
    ("seg-epochs-zero", [a if i != SEG_TRAIN.index("--epochs") + 1 else "0" for i, a in enumerate(SEG_TRAIN)], {}),
    ("seg-set-epochs-zero", [a for i, a in enumerate(SEG_TRAIN) if i not in (SEG_TRAIN.index("--epochs"), SEG_TRAIN.index("--epochs") + 1)]
     + ["--set", "loop.epochs=0"], {}),
    ("seg-batch-zero", SEG_TRAIN + ["--batch-size", "0"], {}),
    ("seg-max-steps-zero", SEG_TRAIN + ["--max-steps", "0"], {}),
    ("seg-image-size-not-divisible", SEG_TRAIN + ["--image-size", "50"], {}),
    ("seg-image-size-zero", SEG_TRAIN + ["--image-size", "0"], {}),
    ("seg-unknown-model", SEG_TRAIN + ["--model", "nosuch"], {}),
    ("seg-unknown-optimizer", SEG_TRAIN + ["--set", "loop.optimizer=sgdx"], {}),
    ("seg-unknown-scheduler", SEG_TRAIN + ["--set", "loop.scheduler=wavy"], {}),
    ("seg-bad-precision", SEG_TRAIN + ["--set", "loop.mixed_precision=fp8"], {}),
    ("seg-channels-2", SEG_TRAIN + ["--set", "channels=2"], {}),
    ("seg-val-fraction-above-1", SEG_TRAIN + ["--set", "val_fraction=1.5"], {}),
    ("seg-threshold-zero", SEG_TRAIN + ["--set", "threshold=0"], {}),
    ("seg-ema-decay-2", SEG_TRAIN + ["--set", "loop.ema_decay=2"], {}),
    ("seg-monitor-mode", SEG_TRAIN + ["--set", "loop.monitor_mode=up"], {}),
    ("seg-bool-not-bool", SEG_TRAIN + ["--set", "cache=maybe"], {}),
    ("seg-list-not-list", SEG_TRAIN + ["--set", "extra_train=5"], {}),
    ("seg-unknown-key", SEG_TRAIN + ["--set", "nosuch=1"], {}),
    ("seg-unknown-loop-key", SEG_TRAIN + ["--set", "loop.nosuch=1"], {}),
    ("seg-override-without-equals", SEG_TRAIN + ["--set", "loop.lr"], {}),
    ("seg-override-bad-yaml", SEG_TRAIN + ["--set", "model_kwargs={a: [1"], {}),
    ("seg-bad-model-kwargs", SEG_TRAIN + ["--set", "model_kwargs={nosuch: 1}"], {}),
    ("seg-missing-data", SEG_TRAIN + ["--data", "{missing}"], {}),
    ("seg-empty-data-folder", SEG_TRAIN + ["--data", "{empty}"], {}),
    ("seg-corrupt-data", SEG_TRAIN + ["--data", "{corrupt_data}"], {}),
    ("seg-missing-extra-pool", SEG_TRAIN + ["--set", "extra_train=[{missing}]"], {}),
    ("seg-missing-config", SEG_TRAIN + ["--config", "{missing}.yaml"], {}),
    ("seg-config-not-mapping", SEG_TRAIN + ["--config", "{yaml}/list.yaml"], {}),
    ("seg-config-broken-yaml", SEG_TRAIN + ["--config", "{yaml}/broken.yaml"], {}),
    ("seg-existing-run", SEG_TRAIN + ["-o", "{segrun}"], {}),
    ("seg-output-is-file", SEG_TRAIN + ["-o", "{file}"], {}),
    ("seg-locked-overwrite", SEG_TRAIN + ["-o", "{locked}", "--overwrite"], {}),
    ("seg-locked-resume", SEG_TRAIN + ["-o", "{locked}", "--resume"], {}),
    ("seg-resume-not-a-checkpoint", SEG_TRAIN + ["-o", "{segrun}", "--resume", "{missing}"], {}),
    ("seg-report-to-choice", SEG_TRAIN + ["--report-to", "mlflowx"], {}),
    ("seg-report-to-set", SEG_TRAIN + ["--set", "loop.report_to=mlflowx"], {}),
    ("seg-mixed-precision-choice", SEG_TRAIN + ["--mixed-precision", "fp8"], {}),
    ("seg-num-workers-negative", SEG_TRAIN + ["--num-workers", "-1"], {}),
    ("seg-keep-checkpoints-zero", SEG_TRAIN + ["--keep-checkpoints", "0"], {}),
    ("seg-unknown-packaged-config", SEG_TRAIN + ["--config", "nosuch_paper"], {}),
    ("seg-config-bad-value", ["seg", "config", "--set", "loop.lr=abc"], {}),
    ("seg-config-unknown-key", ["seg", "config", "--set", "nosuch=1"], {}),
    ("predict-unknown-pretrained", ["seg", "predict", "--pretrained", "nosuch", "{images}", "{root}/o"], {}),
    ("predict-run-and-pretrained", ["seg", "predict", "{segrun}", "--pretrained", "nosuch", "{images}", "{root}/o"], {}),
    # seg protocol / evaluate / export / profile
    ("protocol-seeds-not-int", ["seg", "protocol", "--seeds", "x"], {}),
    ("protocol-image-size", ["seg", "protocol", "--data", "{data}", "--model", "mk_unet", "--image-size", "33",
                             "--seeds", "0", "-o", "{root}/prot"], {}),
    ("protocol-missing-test-data", ["seg", "protocol", "--data", "{data}", "--model", "mk_unet", "--image-size", "32",
                                    "--seeds", "0", "--test-data", "{missing}", "-o", "{root}/prot"], {}),
    ("evaluate-missing-run", ["seg", "evaluate", "{missing}"], {}),
    ("evaluate-not-a-run", ["seg", "evaluate", "{empty}"], {}),
    ("evaluate-which", ["seg", "evaluate", "{segrun}", "--which", "middle"], {}),
    ("evaluate-corrupt-weights", ["seg", "evaluate", "{bad_weights_run}"], {}),
    ("evaluate-weights-of-other-model", ["seg", "evaluate", "{wrong_weights_run}"], {}),
    ("evaluate-missing-data", ["seg", "evaluate", "{segrun}", "--data", "{missing}", "--out", "{root}/ev"], {}),
    ("export-missing-run", ["seg", "export", "{missing}", "{root}/m.onnx"], {}),
    ("export-out-is-folder", ["seg", "export", "{segrun}", "{empty}"], {}),
    ("export-out-exists", ["seg", "export", "{segrun}", "{file}"], {}),
    ("protocol-unknown-subset", ["seg", "protocol", "--data", "{data}", "--model", "mk_unet", "--image-size", "32",
                                 "--seeds", "0", "--subset", "nosuch", "-o", "{root}/prot"], {}),
    ("evaluate-unknown-subset", ["seg", "evaluate", "{segrun}", "--subset", "nosuch", "--out", "{root}/ev"], {}),
    ("export-image-size", ["seg", "export", "{segrun}", "{root}/m.onnx", "--image-size", "50"], {}),
    ("profile-unknown-model", ["seg", "profile", "--models", "nosuch", "--repeats", "1"], {}),
    ("profile-image-size", ["seg", "profile", "--models", "mk_unet", "--image-size", "33", "--repeats", "1"], {}),
    ("profile-out-is-folder", ["seg", "profile", "--models", "mk_unet", "--image-size", "32", "--out", "{empty}"], {}),
    ("profile-batch-zero", ["seg", "profile", "--models", "mk_unet", "--batch-size", "0", "--repeats", "1"], {}),
    # seg predict: inputs before outputs
    ("predict-missing-run", ["seg", "predict", "{missing}", "{images}", "{root}/o"], {}),
    ("predict-missing-source", PREDICT + ["{missing}", "{root}/o"], {}),
    ("predict-no-images", PREDICT + ["{empty}", "{root}/o"], {}),
    ("predict-truncated-image", PREDICT + ["{corrupt_images}", "{root}/o"], {}),
    ("predict-output-not-empty", PREDICT + ["{images}", "{nonempty}"], {}),
    ("predict-output-is-file", PREDICT + ["{images}", "{file}"], {}),
    ("predict-pixel-cap", ["--max-image-pixels", "100"] + PREDICT + ["{images}", "{root}/o"], {}),
    ("predict-pixel-cap-env", PREDICT + ["{images}", "{root}/o"], {"LAWORDER_MAX_IMAGE_PIXELS": "100"}),
    ("predict-decompression-bomb", PREDICT + ["{bomb}", "{root}/o"], {}),
    ("predict-missing-onnx", PREDICT + ["{images}", "{root}/o", "--onnx", "{missing}.onnx"], {}),
    ("predict-resize-choice", PREDICT + ["{images}", "{root}/o", "--resize", "stretch"], {}),
    # synth train
    ("synth-unknown-objective", SYNTH_TRAIN + ["--objective", "nosuch"], {}),
    ("synth-unknown-backbone", SYNTH_TRAIN + ["--backbone", "nosuch"], {}),
    ("synth-lr-not-number", SYNTH_TRAIN + ["--lr", "fast"], {}),
    ("synth-cond-drop-above-1", SYNTH_TRAIN + ["--set", "cond_drop_prob=2"], {}),
    ("synth-image-channels", SYNTH_TRAIN + ["--set", "image_channels=2"], {}),
    ("synth-missing-data", SYNTH_TRAIN + ["--data", "{missing}"], {}),
    ("synth-existing-run", SYNTH_TRAIN + ["-o", "{synthrun}"], {}),
    ("synth-sd15-missing-weights", ["synth", "train", "--data", "{data}", "--backbone", "sd15", "--pretrained", "{missing}",
                                    "-o", "{root}/new_synth"], {}),
    ("synth-unknown-objective-kwarg", SYNTH_TRAIN + ["--set", "objective_kwargs={nosuch: 1}"], {}),
    ("synth-unknown-backbone-kwarg", SYNTH_TRAIN + ["--set", "backbone_kwargs.nosuch=1"], {}),
    ("synth-locked", SYNTH_TRAIN + ["-o", "{locked}", "--overwrite"], {}),
    ("synth-config-bad-value", ["synth", "config", "--set", "cond_drop_prob=often"], {}),
    ("pretrain-vae-missing-data", ["synth", "pretrain-vae", "--data", "{missing}", "-o", "{root}/vae"], {}),
    ("pretrain-vae-lr", ["synth", "pretrain-vae", "--data", "{data}", "--lr", "x", "-o", "{root}/vae"], {}),
    ("pretrain-existing-run", ["synth", "pretrain", "--data", "{data}", "--resolution", "32", "-o", "{synthrun}"], {}),
    ("pretrain-batch-zero", ["synth", "pretrain", "--data", "{data}", "--batch-size", "0", "-o", "{root}/base"], {}),
    ("vae-dice-missing-vae", ["synth", "vae-dice", "{missing}", "{segrun}"], {}),
    # synth sample
    ("sample-missing-run", ["synth", "sample", "{missing}", "{data}", "{root}/new_pool"], {}),
    ("sample-steps-zero", SAMPLE + ["--steps", "0"], {}),
    ("sample-guidance-negative", SAMPLE + ["--guidance", "-1"], {}),
    ("sample-batch-zero", SAMPLE + ["--batch-size", "0"], {}),
    ("sample-limit-zero", SAMPLE + ["--limit", "0"], {}),
    ("sample-unknown-split", SAMPLE + ["--split", "nosuch"], {}),
    ("sample-unknown-device", SAMPLE + ["--device", "tpu9"], {}),
    ("sample-corrupt-masks", ["synth", "sample", "{synthrun}", "{corrupt_masks}", "{root}/new_pool", "--steps", "1"], {}),
    ("sample-output-not-empty", ["synth", "sample", "{synthrun}", "{data}", "{nonempty}", "--steps", "1"], {}),
    ("sample-existing-pool", ["synth", "sample", "{synthrun}", "{data}", "{pool}", "--steps", "1", "--limit", "2"], {}),
    ("sample-resume-other-settings", ["synth", "sample", "{synthrun}", "{data}", "{pool}", "--steps", "3",
                                      "--limit", "2", "--resume"], {}),
    ("sample-locked", ["synth", "sample", "{synthrun}", "{data}", "{locked}", "--steps", "1", "--overwrite"], {}),
    # experiments
    ("exp-missing-config", ["exp", "run", "{missing}.yaml"], {}),
    ("exp-config-without-kind", ["exp", "run", "{yaml}/nokind.yaml"], {}),
    ("exp-unknown-kind", ["exp", "run", "{yaml}/badkind.yaml"], {}),
    ("exp-unknown-key", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "nosuch=1"], {}),
    ("exp-bad-type", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "seeds=many"], {}),
    ("exp-seg-image-size", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "seg.image_size=50"], {}),
    ("exp-seg-lr", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "seg.loop.lr=-3"], {}),
    ("exp-missing-data", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "seg.data={missing}"], {}),
    ("exp-unknown-variant-model", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "variants=[{name: A, model: nosuch}]"], {}),
    ("exp-locked", ["exp", "run", "{yaml}/seg_compare.yaml", "--output", "{locked}", "--resume"], {}),
    ("recovery-missing-segmenter", ["exp", "mask-recovery", "{missing}", "{pool}"], {}),
    ("recovery-missing-pool", RECOVERY + ["{missing}"], {}),
    ("recovery-not-a-pool", RECOVERY + ["{data}"], {}),
    ("recovery-filter-without-out", RECOVERY + ["{pool}", "--filter-min-dice", "0.5"], {}),
    ("recovery-filter-out-of-range", RECOVERY + ["{pool}", "--filter-min-dice", "3", "--filter-out", "{root}/f"], {}),
    ("recovery-image-size", RECOVERY + ["{pool}", "--image-size", "33"], {}),
    ("recovery-out-exists", RECOVERY + ["{pool}", "--out", "{existing_json}"], {}),
    ("recovery-corrupt-pool", RECOVERY + ["{corrupt_pool}", "--out", "{root}/s.json"], {}),
    ("law-analysis-missing-run", ["exp", "law-analysis", "{missing}", "--out", "{root}/la"], {}),
    ("law-analysis-not-law", ["exp", "law-analysis", "{synthrun}", "--out", "{root}/la", "--contrast-only"], {}),
    ("report-missing", ["report", "{missing}"], {}),
    ("report-not-an-experiment", ["report", "{empty}"], {}),
    # nnU-Net export
    ("nnunet-id-zero", NNUNET[:4] + ["--id", "0", "--name", "Polyps"], {}),
    ("nnunet-id-not-int", NNUNET[:4] + ["--id", "x", "--name", "Polyps"], {}),
    ("nnunet-bad-name", NNUNET[:4] + ["--id", "501", "--name", "my polyps"], {}),
    ("nnunet-channels-2", NNUNET + ["--channels", "2"], {}),
    ("nnunet-missing-real", ["export", "nnunet", "{missing}", "{root}/new_raw", "--id", "501", "--name", "Polyps"], {}),
    ("nnunet-corrupt-real", ["export", "nnunet", "{corrupt_data}", "{root}/new_raw", "--id", "501", "--name", "P"], {}),
    ("nnunet-missing-extra", NNUNET + ["--extra", "{missing}"], {}),
    ("nnunet-existing-dataset", ["export", "nnunet", "{data}", "{nnunet_existing}", "--id", "501", "--name", "Polyps"], {}),
    ("nnunet-image-size-zero", NNUNET + ["--image-size", "0"], {}),
    # demo
    ("demo-unknown-key", ["demo", "--set", "nosuch=1", "-o", "{root}/demo"], {}),
    ("demo-bad-value", ["demo", "--set", "image_size=abc", "-o", "{root}/demo"], {}),
    ("seg-extra-limit-above-pool", SEG_TRAIN + ["--set", "extra_train=[{pool}]", "--set", "extra_limit=99"], {}),
    ("demo-missing-config", ["demo", "--config", "{missing}.yaml", "-o", "{root}/demo"], {}),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """Fixtures built once, a second process holding the lock of ``locked/``, then every case."""
    base = tmp_path_factory.mktemp("bad_inputs")
    root = base / "root"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cases_file, results_file = base / "cases.json", base / "results.json"
    cases_file.write_text(json.dumps([{"id": i, "argv": a, "env": e} for i, a, e in CASES]))
    build = subprocess.run([sys.executable, str(HELPERS / "bad_inputs_harness.py"), str(root), str(cases_file),
                            str(results_file), "--fixtures-only"], env=env, capture_output=True, text=True, cwd=base)
    assert build.returncode == 0, build.stderr[-3000:]
    holder = hold_lock(root / "locked", env)
    try:
        started = time.time()
        run = subprocess.run([sys.executable, str(HELPERS / "bad_inputs_harness.py"), str(root), str(cases_file),
                              str(results_file)], env=env, capture_output=True, text=True, cwd=base)
        assert run.returncode == 0, run.stderr[-3000:]
        print(f"{len(CASES)} bad-input cases in {time.time() - started:.1f} s (one process)")
    finally:
        holder.kill()
        holder.wait()
    return {r["id"]: r for r in json.loads(results_file.read_text())}, root, env


def hold_lock(folder: Path, env: dict) -> subprocess.Popen:
    """A separate live process holding ``folder``'s run lock until killed."""
    code = ("import sys, time; from laworder.runlock import acquire; acquire(sys.argv[1], 'test holder'); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_table_is_large_and_ids_unique():
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(harness, case_id):
    results, _, _ = harness
    result = results[case_id]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, f"{result['argv']}: exit {result['code']}, stderr {result['stderr']!r}"
    assert len(lines) == 1 and lines[0].startswith("laworder: error: "), result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["changed"] == [], f"{result['argv']} changed {result['changed']}"


@pytest.mark.parametrize("argv, expected", [
    (["seg", "train", "--set", "loop.lr=abc", "-o", "run"], "loop.lr: expected a number"),
    (["seg", "train", "--data", "procedural:4:32", "--image-size", "50", "-o", "run"], "multiple of 32"),
    (["synth", "sample", "nosuch", "masks", "pool"], "dataset not found: masks"),
])
def test_separate_process_gives_one_line_and_exit_2(tmp_path, argv, expected):
    """The real entry point, in its own process (no in-process state can hide a traceback)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "laworder.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and expected in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_flag_shows_the_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "laworder.cli", "seg", "train", "--set", "loop.lr=abc", "--debug"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" in run.stderr and run.stderr.rstrip().endswith("got 'abc'")

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
    ("predict-garbage-onnx", ["seg", "predict", "--onnx", "{file}", "{images}", "{root}/o"], {}),
    ("predict-garbage-onnx-with-run", PREDICT + ["{images}", "{root}/o", "--onnx", "{file}"], {}),
    ("evaluate-nsd-tolerance-negative", ["seg", "evaluate", "{segrun}", "--nsd-tolerance", "-1"], {}),
    ("export-unknown-pretrained", ["seg", "export", "--pretrained", "nosuch", "{root}/m.onnx"], {}),
    ("export-run-and-pretrained", ["seg", "export", "--pretrained", "nosuch", "{segrun}", "{root}/m.onnx"], {}),
    # gallery
    ("gallery-missing-source", ["gallery", "{missing}", "-o", "{root}/g.html"], {}),
    ("gallery-neither-pool-nor-predictions", ["gallery", "{empty}", "-o", "{root}/g.html"], {}),
    ("gallery-out-exists", ["gallery", "{pool}", "-o", "{file}"], {}),
    ("gallery-out-is-folder", ["gallery", "{pool}", "-o", "{empty}"], {}),
    ("gallery-truth-for-a-pool", ["gallery", "{pool}", "-o", "{root}/g.html", "--truth", "{empty}"], {}),
    ("gallery-unreadable-scores", ["gallery", "{pool}", "-o", "{root}/g.html", "--scores", "{file}"], {}),
    ("gallery-thumb-too-small", ["gallery", "{pool}", "-o", "{root}/g.html", "--thumb", "4"], {}),
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
    ("synth-bad-latent-mask", SYNTH_TRAIN + ["--set", "objective_kwargs.latent_mask=bilinear"], {}),
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
    ("sample-mask-augment-zero", SAMPLE + ["--mask-augment", "0"], {}),
    ("sample-mask-augment-negative", SAMPLE + ["--mask-augment", "-3"], {}),
    ("sample-mask-augment-not-int", SAMPLE + ["--mask-augment", "two"], {}),
    ("sample-locked", ["synth", "sample", "{synthrun}", "{data}", "{locked}", "--steps", "1", "--overwrite"], {}),
    ("sample-pretrained-unknown", ["synth", "sample", "--pretrained", "nosuch/law", "{data}", "{root}/new_pool"], {}),
    ("sample-pretrained-and-run", ["synth", "sample", "--pretrained", "polyps/law", "{synthrun}", "{data}",
                                   "{root}/new_pool"], {}),
    ("sample-missing-out", ["synth", "sample", "{synthrun}", "{data}"], {}),
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
    ("fid-missing-pool", ["exp", "fid", "{missing}", "{data}"], {}),
    ("fid-not-a-pool", ["exp", "fid", "{data}", "{data}"], {}),
    ("fid-missing-weights", ["exp", "fid", "{pool}", "{data}", "--split", "train", "--fid-weights", "{missing}"], {}),
    ("fid-wrong-split", ["exp", "fid", "{pool}", "{data}", "--split", "test"], {}),
    ("fid-unknown-split", ["exp", "fid", "{pool}", "{data}", "--split", "nosuch"], {}),
    ("fid-batch-zero", ["exp", "fid", "{pool}", "{data}", "--split", "train", "--batch-size", "0"], {}),
    ("fid-out-exists", ["exp", "fid", "{pool}", "{data}", "--split", "train", "--out", "{existing_json}"], {}),
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

HUGE = str(2**70)
# Issue 24 items 4-6: bounds before allocation, inputs read right, foreseeable input that ended in
# "unexpected <Exception>" (exit 1). Same contract: exit 2, one line, nothing written.
INPUT_CASES: list[tuple[str, list[str], dict[str, str]]] = [
    # seeds: the range every RNG accepts (0 .. 2**32-1)
    ("seed-negative", SEG_TRAIN + ["--seed", "-1"], {}),
    ("seed-huge", SEG_TRAIN + ["--seed", HUGE], {}),
    ("seed-set-float-huge", SEG_TRAIN + ["--set", "loop.seed=1e30"], {}),
    ("seed-yaml-huge", SEG_TRAIN + ["--config", "{yaml}/seed_huge.yaml"], {}),
    ("seed-2-to-the-32", SEG_TRAIN + ["--seed", str(2**32)], {}),
    ("split-seed-huge", SEG_TRAIN + ["--set", f"split_seed={HUGE}"], {}),
    ("split-seed-negative", SEG_TRAIN + ["--set", "split_seed=-4"], {}),
    ("synth-seed-negative", SYNTH_TRAIN + ["--seed", "-5"], {}),
    ("synth-seed-huge", SYNTH_TRAIN + ["--seed", HUGE], {}),
    ("sample-seed-negative", SAMPLE + ["--seed", "-1"], {}),
    ("sample-seed-huge", SAMPLE + ["--seed", HUGE], {}),
    ("seg-config-seed-huge", ["seg", "config", "--seed", HUGE], {}),
    ("synth-config-seed-negative", ["synth", "config", "--seed", "-1"], {}),
    ("procedural-seed-negative", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32", "--seed", "-1"], {}),
    ("procedural-seed-huge", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32", "--seed", HUGE], {}),
    ("data-spec-seed-huge", SEG_TRAIN + ["--data", f"procedural:4:32:{HUGE}"], {}),
    ("protocol-seed-negative", ["seg", "protocol", "--data", "{data}", "--model", "mk_unet", "--image-size", "32",
                                "--seeds", "0", "-3", "-o", "{root}/prot"], {}),
    ("protocol-seed-huge", ["seg", "protocol", "--data", "{data}", "--model", "mk_unet", "--image-size", "32",
                            "--seeds", HUGE, "-o", "{root}/prot"], {}),
    ("exp-seed-negative", ["exp", "run", "{yaml}/seg_compare.yaml", "--set", "seeds=[-1]"], {}),
    ("demo-seed-huge", ["demo", "--set", f"seed={HUGE}", "-o", "{root}/demo"], {}),
    ("demo-data-seed-negative", ["demo", "--set", "data_seed=-2", "-o", "{root}/demo"], {}),
    # bounds before allocation: batch, image size, workers, classes, steps
    ("batch-size-huge", SEG_TRAIN + ["--batch-size", "100000000"], {}),
    ("image-size-huge", SEG_TRAIN + ["--image-size", "1048576"], {}),
    ("image-size-huge-batch-1", SEG_TRAIN + ["--image-size", "262144", "--batch-size", "1"], {}),
    ("workers-huge", SEG_TRAIN + ["--num-workers", "100000"], {}),
    ("synth-batch-huge", SYNTH_TRAIN + ["--batch-size", "100000000"], {}),
    ("synth-resolution-huge", SYNTH_TRAIN + ["--resolution", "1048576"], {}),
    ("synth-workers-huge", SYNTH_TRAIN + ["--num-workers", "100000"], {}),
    ("profile-batch-huge", ["seg", "profile", "--models", "mk_unet", "--image-size", "4096", "--batch-size", "100000",
                            "--repeats", "1"], {}),
    ("profile-image-size-huge", ["seg", "profile", "--models", "mk_unet", "--image-size", "1048576", "--repeats", "1"], {}),
    ("recovery-image-size-huge", RECOVERY + ["{pool}", "--image-size", "1048576"], {}),
    ("nnunet-image-size-huge", NNUNET + ["--image-size", "1000000"], {}),
    ("procedural-classes-1", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32", "--classes", "1"], {}),
    ("procedural-classes-0", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32", "--classes", "0"], {}),
    ("procedural-classes-negative", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32",
                                     "--classes", "-3"], {}),
    ("procedural-classes-257", ["data", "procedural", "{root}/p", "--num-images", "2", "--size", "32",
                                "--classes", "257"], {}),
    ("procedural-size-huge", ["data", "procedural", "{root}/p", "--num-images", "1", "--size", "1048576"], {}),
    ("procedural-num-images-huge", ["data", "procedural", "{root}/p", "--num-images", HUGE, "--size", "32"], {}),
    ("data-spec-classes-1", SEG_TRAIN + ["--data", "procedural:4:32:0:1:1"], {}),
    ("data-spec-size-huge", SEG_TRAIN + ["--data", "procedural:4:1048576"], {}),
    ("data-spec-count-huge", SEG_TRAIN + ["--data", f"procedural:{HUGE}:32"], {}),
    ("labels-300-classes", SEG_TRAIN + ["--data", "{many_classes}"], {}),
    ("labels-16-bit-above-255", SEG_TRAIN + ["--data", "{wide_labels}"], {}),
    ("labels-not-utf8", SEG_TRAIN + ["--data", "{bad_labels}"], {}),
    ("groups-not-a-mapping", SEG_TRAIN + ["--data", "{bad_groups}"], {}),
    # YAML: aliases bounded, encodings, nesting, tags, size
    ("yaml-alias-bomb-config", ["seg", "config", "--config", "{yaml}/bomb.yaml"], {}),
    ("yaml-alias-bomb-train", SEG_TRAIN + ["--config", "{yaml}/bomb.yaml"], {}),
    ("yaml-alias-bomb-set", ["seg", "config", "--set", "model_kwargs={bomb_value}"], {}),
    ("yaml-alias-bomb-exp", ["exp", "run", "{yaml}/bomb_exp.yaml"], {}),
    ("yaml-alias-bomb-run-config", ["seg", "evaluate", "{run_bomb}"], {}),
    ("yaml-recursive-alias", ["seg", "config", "--config", "{yaml}/recursive.yaml"], {}),
    ("yaml-nested-too-deep", ["seg", "config", "--config", "{yaml}/deep.yaml"], {}),
    ("yaml-too-large", ["seg", "config", "--config", "{yaml}/huge.yaml"], {}),
    ("yaml-python-tag", ["seg", "config", "--config", "{yaml}/python_tag.yaml"], {}),
    ("yaml-latin1-seg", SEG_TRAIN + ["--config", "{yaml}/latin1.yaml"], {}),
    ("yaml-latin1-synth", SYNTH_TRAIN + ["--config", "{yaml}/latin1.yaml"], {}),
    ("yaml-latin1-exp", ["exp", "run", "{yaml}/latin1_exp.yaml"], {}),
    ("yaml-latin1-demo", ["demo", "--config", "{yaml}/latin1.yaml", "-o", "{root}/demo"], {}),
    ("yaml-config-is-folder", ["seg", "config", "--config", "{yaml}"], {}),
    # run folders whose config.yaml was edited
    ("run-image-size-50-evaluate", ["seg", "evaluate", "{run_size50}"], {}),
    ("run-image-size-50-predict", ["seg", "predict", "{run_size50}", "{images}", "{root}/o"], {}),
    ("run-image-size-50-export", ["seg", "export", "{run_size50}", "{root}/m.onnx"], {}),
    ("run-image-size-50-recovery", ["exp", "mask-recovery", "{run_size50}", "{pool}"], {}),
    ("run-image-size-text", ["seg", "evaluate", "{run_size_text}"], {}),
    ("run-image-size-zero", ["seg", "predict", "{run_size_zero}", "{images}", "{root}/o"], {}),
    ("run-image-size-huge", ["seg", "predict", "{run_size_huge}", "{images}", "{root}/o"], {}),
    ("run-channels-2", ["seg", "evaluate", "{run_channels2}"], {}),
    ("run-threshold-7", ["seg", "predict", "{run_threshold}", "{images}", "{root}/o"], {}),
    ("run-unknown-model", ["seg", "evaluate", "{run_unknown_model}"], {}),
    ("run-config-latin1", ["seg", "evaluate", "{run_latin1}"], {}),
    ("run-config-empty", ["seg", "evaluate", "{run_empty_config}"], {}),
    # report: malformed results.json
    ("report-results-garbage", ["report", "{results_garbage}"], {}),
    ("report-results-list", ["report", "{results_list}"], {}),
    ("report-results-no-kind", ["report", "{results_no_kind}"], {}),
    ("report-results-unknown-kind", ["report", "{results_unknown_kind}"], {}),
    ("report-results-deep", ["report", "{results_deep}"], {}),
    ("report-results-latin1", ["report", "{results_latin1}"], {}),
    # symlink loops in data folders
    ("symloop-file-train", SEG_TRAIN + ["--data", "{symloop_file}"], {}),
    ("symloop-dir-train", SEG_TRAIN + ["--data", "{symloop_dir}"], {}),
    ("symloop-predict", PREDICT + ["{symloop_images}", "{root}/o"], {}),
    ("symloop-predict-as-source", PREDICT + ["{symloop_images}/b.png", "{root}/o"], {}),
    ("symloop-sample-masks", ["synth", "sample", "{synthrun}", "{symloop_file}", "{root}/new_pool", "--steps", "1"], {}),
    ("symloop-nnunet", ["export", "nnunet", "{symloop_file}", "{root}/new_raw", "--id", "501", "--name", "P"], {}),
    ("symloop-synth-train", SYNTH_TRAIN + ["--data", "{symloop_file}"], {}),
    ("symloop-output-seg", SEG_TRAIN + ["-o", "{symloop_dir}/images"], {}),
    ("symloop-output-synth", SYNTH_TRAIN + ["-o", "{symloop_dir}/masks"], {}),
    ("symloop-output-procedural", ["data", "procedural", "{symloop_dir}/images", "--num-images", "2", "--size", "32"], {}),
    # non-finite pixels
    ("nan-image-train", SEG_TRAIN + ["--data", "{nan_data}"], {}),
    ("nan-image-predict", PREDICT + ["{nan_images}", "{root}/o"], {}),
    ("nan-image-synth-train", SYNTH_TRAIN + ["--data", "{nan_data}"], {}),
    ("inf-mask-train", SEG_TRAIN + ["--data", "{inf_masks}"], {}),
    ("inf-mask-sample", ["synth", "sample", "{synthrun}", "{inf_masks}", "{root}/new_pool", "--steps", "1"], {}),
    # environment variables validated like their flags
    ("env-max-pixels-text", PREDICT + ["{images}", "{root}/o"], {"LAWORDER_MAX_IMAGE_PIXELS": "abc"}),
    ("env-max-pixels-zero", PREDICT + ["{images}", "{root}/o"], {"LAWORDER_MAX_IMAGE_PIXELS": "0"}),
    ("env-max-pixels-negative", SEG_TRAIN, {"LAWORDER_MAX_IMAGE_PIXELS": "-5"}),
    ("env-max-pixels-float", ["data", "check", "{data}"], {"LAWORDER_MAX_IMAGE_PIXELS": "1.5e6"}),
    ("env-cache-dir-is-file", SEG_TRAIN + ["--data", "procedural:4:32"], {"LAWORDER_CACHE_DIR": "{file}"}),
    ("env-world-size-text", SEG_TRAIN, {"WORLD_SIZE": "two"}),
    ("env-rank-above-world", SEG_TRAIN, {"WORLD_SIZE": "2", "RANK": "5"}),
    ("env-fid-weights-missing", ["seg", "list"], {"LAWORDER_FID_WEIGHTS": "{missing}"}),
    ("env-pretrained-dir-is-file", ["seg", "list"], {"LAWORDER_PRETRAINED_DIR": "{file}"}),
    ("env-pretrained-dir-missing", ["seg", "predict", "--pretrained", "order/polyps", "{images}", "{root}/o"],
     {"LAWORDER_PRETRAINED_DIR": "{missing}"}),
]
CASES += INPUT_CASES

# Issue 24 item 2: never destroy what laworder did not write. Each row aims a writer at an input,
# at a folder laworder did not write, or at names that collide; the harness hashes every file
# under the fixture root before and after, so "nothing changed" covers every input file.
SAMPLE_TO = ["synth", "sample", "{synthrun}", "{data}"]
S1 = ["--steps", "1", "--limit", "2", "--device", "cpu"]
FILTER = RECOVERY + ["{pool}", "--filter-min-dice", "0"]
NEVER_DESTROY: list[tuple[str, list[str], dict[str, str]]] = [
    # synth sample: the pool over, inside, around or beside its own masks / run / foreign files
    ("sample-into-its-dataset", SAMPLE_TO + ["{data}", "--overwrite"] + S1, {}),
    ("sample-into-its-dataset-no-overwrite", SAMPLE_TO + ["{data}"] + S1, {}),
    ("sample-inside-its-dataset", SAMPLE_TO + ["{data}/pool"] + S1, {}),
    ("sample-into-its-masks-folder", ["synth", "sample", "{synthrun}", "{data}/masks", "{data}/masks", "--overwrite"] + S1, {}),
    ("sample-masks-folder-into-parent", ["synth", "sample", "{synthrun}", "{data}/masks", "{data}", "--overwrite"] + S1, {}),
    ("sample-into-its-run", SAMPLE_TO + ["{synthrun}", "--overwrite"] + S1, {}),
    ("sample-around-its-run", SAMPLE_TO + ["{root}", "--overwrite"] + S1, {}),
    ("sample-into-symlinked-dataset", SAMPLE_TO + ["{data_link}", "--overwrite"] + S1, {}),
    ("sample-via-symlink-into-dataset", ["synth", "sample", "{synthrun}", "{data_link}", "{data}", "--overwrite"] + S1, {}),
    ("sample-overwrite-foreign-folder", SAMPLE_TO + ["{nonempty}", "--overwrite"] + S1, {}),
    ("sample-overwrite-predictions", SAMPLE_TO + ["{pred_out}", "--overwrite"] + S1, {}),
    ("sample-overwrite-nnunet-folder", SAMPLE_TO + ["{nnunet_existing}", "--overwrite"] + S1, {}),
    ("sample-resume-foreign-folder", SAMPLE_TO + ["{nonempty}", "--resume"] + S1, {}),
    # seg predict: ground truth, sources and other commands' outputs are never replaced
    ("predict-into-dataset-overwrite", PREDICT + ["{data}/images", "{data}", "--overwrite"], {}),
    ("predict-into-dataset", PREDICT + ["{data}/images", "{data}"], {}),
    ("predict-dataset-into-itself", PREDICT + ["{data}", "{data}", "--overwrite"], {}),
    ("predict-inside-source", PREDICT + ["{images}", "{images}/preds"], {}),
    ("predict-into-source", PREDICT + ["{images}", "{images}", "--overwrite"], {}),
    ("predict-one-file-into-its-folder", PREDICT + ["{images}/a.png", "{images}", "--overwrite"], {}),
    ("predict-overwrite-foreign-folder", PREDICT + ["{images}", "{nonempty}", "--overwrite"], {}),
    ("predict-into-run", PREDICT + ["{images}", "{segrun}", "--overwrite"], {}),
    ("predict-around-run", PREDICT + ["{images}", "{root}", "--overwrite"], {}),
    ("predict-duplicate-stems", PREDICT + ["{dupes}", "{root}/o"], {}),
    ("predict-duplicate-stems-overwrite", PREDICT + ["{dupes}", "{pred_out}", "--overwrite"], {}),
    ("predict-into-symlinked-dataset", PREDICT + ["{data}/images", "{data_link}", "--overwrite"], {}),
    ("predict-overwrite-pool", PREDICT + ["{images}", "{pool}", "--overwrite"], {}),
    ("predict-overwrite-procedural", PREDICT + ["{images}", "{proc}", "--overwrite"], {}),
    ("predict-overwrite-eval-folder", PREDICT + ["{images}", "{eval_out}", "--overwrite"], {}),
    ("predict-existing-without-overwrite", PREDICT + ["{images}", "{pred_out}"], {}),
    # export nnunet: the source inside the target, the target inside the source, foreign folders
    ("nnunet-source-inside-target", ["export", "nnunet", "{raw_src}/Dataset501_Polyps", "{raw_src}", "--id", "501",
                                     "--name", "Polyps", "--overwrite"], {}),
    ("nnunet-target-inside-source", ["export", "nnunet", "{data}", "{data}/raw", "--id", "501", "--name", "Polyps"], {}),
    ("nnunet-target-inside-extra", NNUNET[:3] + ["{pool}", "--id", "501", "--name", "Polyps", "--extra", "{pool}"], {}),
    ("nnunet-extra-inside-target", NNUNET[:3] + ["{raw_pool}", "--id", "502", "--name", "P", "--extra",
                                                 "{raw_pool}/Dataset502_P", "--overwrite"], {}),
    ("nnunet-overwrite-foreign-dataset", ["export", "nnunet", "{data}", "{nnunet_existing}", "--id", "501",
                                          "--name", "Polyps", "--overwrite"], {}),
    ("nnunet-via-symlink", ["export", "nnunet", "{data_link}", "{data}", "--id", "501", "--name", "Polyps"], {}),
    # exp mask-recovery: --filter-out and --out against the pool and foreign files
    ("recovery-filter-into-pool", FILTER + ["--filter-out", "{pool}", "--overwrite"], {}),
    ("recovery-filter-inside-pool", FILTER + ["--filter-out", "{pool}/kept"], {}),
    ("recovery-filter-around-pool", FILTER + ["--filter-out", "{root}", "--overwrite"], {}),
    ("recovery-filter-overwrite-foreign", FILTER + ["--filter-out", "{nonempty}", "--overwrite"], {}),
    ("recovery-filter-into-dataset", FILTER + ["--filter-out", "{data}", "--overwrite"], {}),
    ("recovery-filter-overwrite-predictions", FILTER + ["--filter-out", "{pred_out}", "--overwrite"], {}),
    ("recovery-out-is-pool-manifest", RECOVERY + ["{pool}", "--out", "{pool}/manifest.json", "--overwrite"], {}),
    ("recovery-out-inside-pool", RECOVERY + ["{pool}", "--out", "{pool}/scores.json"], {}),
    ("recovery-out-inside-filter-out", FILTER + ["--filter-out", "{root}/kept", "--out", "{root}/kept/s.json"], {}),
    ("recovery-out-is-folder", RECOVERY + ["{pool}", "--out", "{nonempty}", "--overwrite"], {}),
    # seg export: the model and its sidecar collide with each other, foreign files, the run
    ("export-model-named-like-sidecar", ["seg", "export", "{segrun}", "{root}/m.json"], {}),
    ("export-sidecar-foreign", ["seg", "export", "{segrun}", "{root}/scores.onnx"], {}),
    ("export-sidecar-foreign-overwrite", ["seg", "export", "{segrun}", "{root}/scores.onnx", "--overwrite"], {}),
    ("export-sidecar-is-folder", ["seg", "export", "{segrun}", "{sidedir}"], {}),
    ("export-over-run-config", ["seg", "export", "{segrun}", "{segrun}/config.yaml", "--overwrite"], {}),
    ("export-over-run-weights", ["seg", "export", "{segrun}", "{segrun}/model/best/model.safetensors", "--overwrite"], {}),
    ("export-over-run-folder", ["seg", "export", "{segrun}", "{segrun}", "--overwrite"], {}),
    # training: the run folder over or inside its data, or a foreign folder with run-like names
    ("seg-train-into-data", SEG_TRAIN + ["-o", "{data}", "--overwrite"], {}),
    ("seg-train-inside-data", SEG_TRAIN + ["-o", "{data}/run"], {}),
    ("seg-train-overwrite-foreign", SEG_TRAIN + ["-o", "{fake_run}", "--overwrite"], {}),
    ("seg-train-around-extra-pool", SEG_TRAIN + ["--set", "extra_train=[{pool}]", "-o", "{root}", "--overwrite"], {}),
    ("seg-train-into-symlinked-data", SEG_TRAIN + ["-o", "{data_link}", "--overwrite"], {}),
    ("synth-train-into-data", SYNTH_TRAIN + ["-o", "{data}", "--overwrite"], {}),
    ("synth-train-inside-data", SYNTH_TRAIN + ["-o", "{data}/synth"], {}),
    ("synth-train-overwrite-foreign", SYNTH_TRAIN + ["-o", "{fake_run}", "--overwrite"], {}),
    # seg evaluate --out and data procedural: no silent overwrite, never over data
    ("evaluate-out-exists", ["seg", "evaluate", "{segrun}", "--out", "{eval_out}", "--no-progress"], {}),
    ("evaluate-out-foreign", ["seg", "evaluate", "{segrun}", "--out", "{nonempty}", "--overwrite"], {}),
    ("evaluate-out-is-data", ["seg", "evaluate", "{segrun}", "--data", "{data}", "--out", "{data}", "--overwrite"], {}),
    ("evaluate-out-inside-data", ["seg", "evaluate", "{segrun}", "--data", "{data}", "--out", "{data}/ev"], {}),
    ("evaluate-out-over-predictions", ["seg", "evaluate", "{segrun}", "--out", "{pred_out}", "--overwrite"], {}),
    ("evaluate-out-is-file", ["seg", "evaluate", "{segrun}", "--out", "{file}", "--overwrite"], {}),
    ("procedural-existing", ["data", "procedural", "{proc}", "--num-images", "2", "--size", "32"], {}),
    ("procedural-overwrite-foreign", ["data", "procedural", "{nonempty}", "--num-images", "2", "--size", "32",
                                      "--overwrite"], {}),
    ("procedural-overwrite-dataset", ["data", "procedural", "{data}", "--num-images", "2", "--size", "32",
                                      "--overwrite"], {}),
    ("procedural-overwrite-predictions", ["data", "procedural", "{pred_out}", "--num-images", "2", "--size", "32",
                                          "--overwrite"], {}),
]

# Issue 24 item 3: a failed command leaves everything as it was (validated before the first write).
LEFT_AS_IT_WAS: list[tuple[str, list[str], dict[str, str]]] = [
    ("seg-resume-other-model", SEG_TRAIN[:-2] + ["-o", "{segrun}", "--resume", "--model", "order"], {}),
    ("seg-resume-empty-trainer-state", SEG_TRAIN[:-2] + ["-o", "{damaged_state_empty}", "--resume"], {}),
    ("seg-resume-garbage-trainer-state", SEG_TRAIN[:-2] + ["-o", "{damaged_state_garbage}", "--resume"], {}),
    ("seg-resume-trainer-state-other-step", SEG_TRAIN[:-2] + ["-o", "{damaged_state_step}", "--resume"], {}),
    ("seg-resume-garbage-optimizer", SEG_TRAIN[:-2] + ["-o", "{damaged_optimizer}", "--resume"], {}),
    ("seg-resume-missing-rng", SEG_TRAIN[:-2] + ["-o", "{damaged_rng_missing}", "--resume"], {}),
    ("sample-device-cuda", SAMPLE + ["--device", "cuda"], {}),
    ("sample-device-cuda-index", SAMPLE + ["--device", "cuda:7"], {}),
    ("sample-device-unknown-kind", SAMPLE + ["--device", "meta"], {}),
]

# A full disk (every write raises ENOSPC after the first N files): one line naming the path, no
# partial or 0-byte file, no lock, and the same command afterwards succeeds (checked by the harness).
def _full(after: int) -> dict[str, str]:
    return {"_full_disk_after": str(after)}


FULL_DISK: list[tuple[str, list[str], dict[str, str]]] = [
    ("full-disk-predict-first-write", PREDICT + ["{images}", "{root}/fd_pred", "--no-progress"], _full(0)),
    ("full-disk-predict-midway", PREDICT + ["{images}", "{root}/fd_pred", "--no-progress"], _full(3)),
    ("full-disk-predict-overwrite", PREDICT + ["{images}", "{pred_out}", "--overwrite", "--no-progress"], _full(2)),
    ("full-disk-export-sidecar", ["seg", "export", "{segrun}", "{root}/fd.onnx", "--no-progress"], _full(0)),
    ("full-disk-sample-first-write", SAMPLE + ["--limit", "2", "--no-progress"], _full(0)),
    ("full-disk-sample-midway", SAMPLE + ["--limit", "3", "--batch-size", "1", "--no-progress"], _full(3)),
    ("full-disk-nnunet-first-write", NNUNET, _full(0)),
    ("full-disk-nnunet-midway", NNUNET, _full(6)),
    ("full-disk-recovery-out", RECOVERY + ["{pool}", "--out", "{root}/fd_scores.json"], _full(0)),
    ("full-disk-recovery-filter-out", FILTER + ["--filter-out", "{root}/fd_kept", "--out", "{root}/fd_s.json"], _full(1)),
    ("full-disk-procedural", ["data", "procedural", "{root}/fd_proc", "--num-images", "3", "--size", "32"], _full(0)),
    ("full-disk-procedural-midway", ["data", "procedural", "{root}/fd_proc", "--num-images", "3", "--size", "32"], _full(4)),
    ("full-disk-evaluate", ["seg", "evaluate", "{segrun}", "--out", "{root}/fd_eval", "--no-progress"], _full(1)),
    ("full-disk-seg-train-config", SEG_TRAIN + ["--no-progress"], _full(0)),
]

CASES += NEVER_DESTROY + LEFT_AS_IT_WAS + FULL_DISK


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
    assert len(CASES) >= 60 and len(NEVER_DESTROY) >= 60 and len(FULL_DISK) >= 10
    assert len({case[0] for case in CASES}) == len(CASES)


# The first test that asks for ``harness`` pays for the fixtures and every case (one process):
# minutes on a loaded 2-core machine, so these tests get more than the suite's default timeout.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("case_id", [case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(harness, case_id):
    results, _, _ = harness
    result = results[case_id]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, f"{result['argv']}: exit {result['code']}, stderr {result['stderr']!r}"
    assert len(lines) == 1 and lines[0].startswith("laworder: error: "), result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["changed"] == [], f"{result['argv']} changed {result['changed']}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("case_id", [case[0] for case in FULL_DISK])
def test_full_disk_names_the_path_and_the_rerun_succeeds(harness, case_id):
    """ENOSPC: one line with the OS's words and the path; then, with room again, the same command works."""
    results, root, _ = harness
    result = results[case_id]
    assert "No space left on device" in result["stderr"] and str(root) in result["stderr"], result["stderr"]
    assert result["rerun_code"] == 0, f"rerun blocked: {result['rerun_stderr']!r}"


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


# --- issue 24 items 4-5 at the library level: what must be read right, not only refused ---------
def _pairs(root: Path, count: int = 2, size: int = 32) -> Path:
    from laworder.data.procedural import generate_procedural

    return generate_procedural(root, num_images=count, size=size, seed=0)


def _exif(orientation: int):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("turn", [3, 6, 8])
def test_exif_orientation_applies_to_images_and_masks_alike(tmp_path, turn):
    """A camera JPEG stored sideways with its EXIF turn, its mask drawn as the image is shown: the
    pair is read aligned (it was "size mismatch"), and a mask carrying the same EXIF turns with it."""
    import numpy as np
    from PIL import Image, ImageOps

    from laworder.data.check import check_dataset
    from laworder.data.dataset import load_pair
    from laworder.data.io import read_image, read_mask
    from laworder.data.records import PairRecord

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    stored = np.zeros((24, 40, 3), np.uint8)  # H×W as stored: 40 wide, 24 high
    stored[:8, :10] = 255  # a bright corner to follow through the turn
    Image.fromarray(stored).save(tmp_path / "images" / "a.jpg", exif=_exif(turn), quality=100)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "a.jpg")).convert("L")) > 128
    Image.fromarray(shown.astype(np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    mask_stored = Image.fromarray((stored[..., 0] > 128).astype(np.uint8) * 255)
    mask_stored.save(tmp_path / "masks" / "b.png", exif=_exif(turn))  # a mask stored like its image
    Image.fromarray(stored).save(tmp_path / "images" / "b.jpg", exif=_exif(turn), quality=100)
    image = read_image(tmp_path / "images" / "a.jpg")
    assert image.shape[:2] == shown.shape
    assert np.array_equal(image[..., 0] > 128, shown)
    assert np.array_equal(read_mask(tmp_path / "masks" / "b.png"), shown)
    report = check_dataset(tmp_path)
    assert report.ok, report.format()
    assert sorted(p.kind for p in report.warnings) == ["exif_orientation"] * 3
    for stem in ("a", "b"):
        pixels, mask = load_pair(PairRecord(stem, tmp_path / "images" / f"{stem}.jpg", tmp_path / "masks" / f"{stem}.png"))
        assert np.array_equal(pixels[..., 0] > 128, mask)


def test_nan_pixel_is_reported_by_data_check_and_refused_when_read(tmp_path):
    import numpy as np
    from PIL import Image

    from laworder.cli import main
    from laworder.data.check import check_dataset
    from laworder.data.io import read_image
    from laworder.errors import DataError

    data = _pairs(tmp_path / "d")
    first = sorted((data / "images").iterdir())[0]
    pixels = np.asarray(Image.open(first).convert("L"), dtype=np.float32) / 255
    pixels[5, 7] = np.nan
    first.unlink()
    Image.fromarray(pixels, mode="F").save(first.with_suffix(".tif"))
    report = check_dataset(data)
    assert not report.ok and [p.kind for p in report.errors] == ["non_finite"]
    with pytest.raises(DataError, match="1 of 1024 pixels .* NaN or infinite"):
        read_image(first.with_suffix(".tif"))
    assert main(["data", "check", str(data)]) == 1  # a failed check, not "OK"


def test_hidden_files_are_skipped_by_every_scanner(tmp_path):
    """``._a.png`` (macOS), ``.DS_Store``, ``Thumbs.db``: not counted by predict, sample, metrics or the loaders."""
    from laworder.data.io import list_image_files
    from laworder.data.scan import scan_pair_folder
    from laworder.metrics.image_sources import count_images
    from laworder.seg.predict import list_images
    from laworder.synth.sampler import collect_masks

    data = _pairs(tmp_path / "d")
    for sub in ("images", "masks"):
        (data / sub / "._proc_00000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (data / sub / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (data / sub / "Thumbs.db").write_bytes(b"\xd0\xcf")
        (data / sub / ".hidden").mkdir()
    assert [p.name for p in list_image_files(data / "images")] == ["proc_00000.png", "proc_00001.png"]
    assert len(list_images(data)) == 2
    assert [item.stem for item in collect_masks(data / "masks")] == ["proc_00000", "proc_00001"]
    assert count_images(data / "images") == 2
    scan = scan_pair_folder(data / "images", data / "masks")
    assert scan.consistent and len(scan.pairs) == 2 and scan.ignored == []


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_config_in_any_unicode_encoding_with_a_bom_loads(tmp_path, encoding):
    from laworder.config import load_config
    from laworder.seg.config import SegTrainConfig

    path = tmp_path / "c.yaml"
    path.write_bytes("# réglages\nimage_size: 64\nloop: {lr: 0.01}\n".encode(encoding))
    config = load_config(SegTrainConfig, path)
    assert config.image_size == 64 and config.loop.lr == 0.01


def test_yaml_anchors_within_the_bound_still_work(tmp_path):
    from laworder.config import MAX_YAML_NODES, safe_load_bounded
    from laworder.errors import ConfigError

    text = "base: &b {lr: 0.1, epochs: 2}\nloop: *b\nmore: [*b, *b]\n"
    assert safe_load_bounded(text, "t")["more"][1] == {"lr": 0.1, "epochs": 2}
    wide = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 90) + "]\n"  # 91 000 values
    assert len(safe_load_bounded(wide, "t")["b"]) == 90
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES}"):
        safe_load_bounded(wide.replace(", ".join(["*a"] * 90), ", ".join(["*a"] * 110)), "t")


@pytest.mark.parametrize("env, expected", [
    ({"LAWORDER_MAX_IMAGE_PIXELS": "abc"}, "LAWORDER_MAX_IMAGE_PIXELS='abc' is not an integer"),
    ({"LAWORDER_MAX_IMAGE_PIXELS": "0"}, "out of range"),
    ({"LAWORDER_MAX_IMAGE_PIXELS": "1e8"}, "not an integer"),
    ({"LAWORDER_CACHE_DIR": "{file}"}, "is a file, not a folder"),
    ({"LAWORDER_PRETRAINED_DIR": "{file}"}, "is a file"),
    ({"LAWORDER_FID_WEIGHTS": "{missing}"}, "no such file"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "out of range"),
    ({"RANK": "-1"}, "out of range"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is out of range for WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "7"}, "LOCAL_RANK=7"),
])
def test_environment_variables_are_validated_like_flags(tmp_path, env, expected):
    from laworder.environment import check_environment
    from laworder.errors import ConfigError

    (tmp_path / "f").write_text("x")
    filled = {k: v.replace("{file}", str(tmp_path / "f")).replace("{missing}", str(tmp_path / "nope")) for k, v in env.items()}
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("?", r"\?")):
        check_environment(filled)


@pytest.mark.parametrize("env", [{}, {"LAWORDER_MAX_IMAGE_PIXELS": " "}, {"LAWORDER_MAX_IMAGE_PIXELS": "500"},
                                 {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, {"LAWORDER_CACHE_DIR": "{new}"}])
def test_good_environment_passes(tmp_path, env):
    from laworder.environment import check_environment

    check_environment({k: v.replace("{new}", str(tmp_path / "cache")) for k, v in env.items()})


@pytest.mark.parametrize("seed, ok", [(0, True), (2**32 - 1, True), (2**32, False), (-1, False), (2**70, False),
                                      (1.0, False), (True, False), ("3", False), (None, False)])
def test_seed_range(seed, ok):
    from laworder.config import check_seed
    from laworder.errors import ConfigError

    if ok:
        check_seed("seed", seed)
    else:
        with pytest.raises(ConfigError, match="seed"):
            check_seed("seed", seed)


def test_memory_estimate_is_in_the_message():
    from laworder.errors import ConfigError
    from laworder.resources import check_batch

    check_batch("b", 16, 256, available=10 * 1024**3)  # 16 MiB of inputs: fine
    with pytest.raises(ConfigError, match=r"a batch of 100000000 at 32×32 .* needs at least 1.5 TiB .* 1.0 GiB is available"):
        check_batch("loop.batch_size", 100_000_000, 32, available=1024**3)


def test_label_declaration_above_256_classes_is_refused():
    from laworder.data.labels import parse_labels
    from laworder.errors import DataError

    assert len(parse_labels({f"c{i}": i for i in range(256)}, "labels.json")) == 256
    with pytest.raises(DataError, match="257 classes declared; at most 256"):
        parse_labels({f"c{i}": i for i in range(257)}, "labels.json")


def test_ctrl_c_during_training_saves_prints_resume_and_exits_130(tmp_path):
    """A real SIGINT to ``laworder seg train`` in its own process: exit 130, the checkpoint at the
    interrupt, no temporary folder, the resume command on stderr; running that command finishes."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "LAWORDER_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["seg", "train", "--data", "procedural:40:32", "--model", "mk_unet", "--image-size", "32",
            "--batch-size", "2", "--epochs", "3", "--no-progress", "--set", "loop.log_every=1",
            "--set", "loop.checkpoint_every=1000", "-o", "run"]
    import signal

    from laworder.training.checkpoint import list_checkpoints

    # a terminal's Ctrl-C: the child gets the default disposition even where this test process
    # inherited SIGINT ignored (a background job), which the child would inherit and keep
    process = subprocess.Popen([sys.executable, "-m", "laworder.cli", *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 500  # a loaded machine imports torch and MONAI slowly
    while time.time() < deadline and process.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(checkpoints) == 1 and f"checkpoint saved at the interrupt: run/checkpoints/{checkpoints[0].name}" in stderr
    assert [p for p in (tmp_path / "run").rglob("*") if p.name.startswith((".tmp-", ".old-"))] == []
    resume = next(line for line in stderr.splitlines() if "--resume" in line)
    command = resume[resume.index("laworder seg train"):].split()
    assert command[-1] == "--resume" and command[1:-1] == argv
    step = int(checkpoints[0].name.removeprefix("step_"))
    finish = subprocess.run([sys.executable, "-m", "laworder.cli", *command[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["global_step"] == state["total_steps"] > step

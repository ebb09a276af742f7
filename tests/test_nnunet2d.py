"""nnunet2d (MONAI DynUNet in an nnU-Net 2D plan) and `laworder export nnunet` (nnU-Net v2 raw layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import DynUNet
from PIL import Image

from laworder.cli import main as cli
from laworder.data.io import write_mask
from laworder.data.procedural import generate_procedural
from laworder.errors import ConfigError, DataError, RunDirError
from laworder.interop.nnunet import export_nnunet_dataset, verify_nnunet_dataset
from laworder.models import create_model, list_models
from laworder.models.nnunet2d import NNUNet2D, plan_filters
from laworder.seg.config import SegTrainConfig
from laworder.seg.evaluate import evaluate_records, evaluation_subsets
from laworder.seg.loading import load_segmenter
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig

TINY = {"strides": [1, 2, 2, 2], "base_filters": 4}




@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_procedural(tmp_path_factory.mktemp("data") / "proc", num_images=20, size=32, seed=0)


def _pool(root: Path, count: int = 6, seed: int = 7) -> Path:
    generate_procedural(root, num_images=count, size=32, seed=seed)
    (root / "manifest.json").write_text(json.dumps({"method": "law", "count": count}))
    return root


# --- the model ----------------------------------------------------------------------------------
def test_nnunet2d_is_registered_with_the_nnunet_2d_plan():
    assert "nnunet2d" in list_models()
    model = create_model("nnunet2d")
    assert isinstance(model, NNUNet2D) and isinstance(model.net, DynUNet)
    assert model.strides == (1, 2, 2, 2, 2, 2) and model.input_divisor == 32
    assert model.filters == (32, 64, 128, 256, 512, 512) == plan_filters(6)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"InstanceNorm2d", "LeakyReLU", "ConvTranspose2d"} <= kinds and "BatchNorm2d" not in kinds
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))


def test_nnunet2d_returns_logits_b1hw_and_deep_supervision_only_on_request():
    model = create_model("nnunet2d", base_filters=8).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    supervised = create_model("nnunet2d", deep_supervision=True, deep_supr_num=2, base_filters=4).train()
    outputs = supervised(torch.rand(2, 3, 64, 64))
    assert isinstance(outputs, list) and len(outputs) == 3 and all(o.shape == (2, 1, 64, 64) for o in outputs)


def test_nnunet2d_rejects_inputs_that_leave_a_1x1_bottleneck_and_bad_plans():
    with pytest.raises(ValueError, match="bottleneck"):
        create_model("nnunet2d", base_filters=4)(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        create_model("nnunet2d", base_filters=4)(torch.rand(1, 3, 48, 48))
    with pytest.raises(ConfigError):
        create_model("nnunet2d", strides=[2, 2, 2])
    with pytest.raises(ConfigError):
        create_model("nnunet2d", strides=[1, 2, 2], filters=[4, 8])


def test_nnunet2d_trains_through_the_training_core_and_reloads(tiny_data, tmp_path):
    loop = LoopConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=6, lr=1e-3, optimizer="adamw",
                      progress=False, monitor="val_dice", cpu=True)
    run = train_segmenter(SegTrainConfig(data=str(tiny_data), model="nnunet2d", model_kwargs=TINY, image_size=32, loop=loop))
    assert run.fit.global_step >= 1 and (run.run_dir / "model" / "best" / "model.safetensors").is_file()
    model, config = load_segmenter(run.run_dir)
    assert isinstance(model, NNUNet2D) and config.model_kwargs == TINY
    result = evaluate_records(model, evaluation_subsets(str(tiny_data)), 32)
    assert 0.0 <= result.mean["dice"] <= 1.0


def test_nnunet2d_exports_to_onnx_with_parity(tmp_path):
    from laworder.seg.export import export_onnx

    report = export_onnx(create_model("nnunet2d", **TINY).eval(), tmp_path / "nnunet2d.onnx", input_size=32)
    assert report.path.is_file() and report.max_abs_diff < 1e-4


# --- nnU-Net v2 export ----------------------------------------------------------------------------
def test_export_writes_an_nnunet_v2_raw_dataset_that_passes_its_checks(tiny_data, tmp_path):
    pool = _pool(tmp_path / "pool")
    folder = export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 501, "Polyps", extra=[str(pool)])
    assert folder.name == "Dataset501_Polyps" and verify_nnunet_dataset(folder) == []
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "lesion": 1} and meta["file_ending"] == ".png"
    assert meta["numTraining"] == 26 and meta["laworder"]["num_synthetic"] == 6
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(images) == len(labels) == 26 and all(name.endswith("_0000.png") for name in images)
    assert sum(name.startswith("syn_") for name in labels) == 6
    rgb = Image.open(folder / "imagesTr" / images[0])
    label = np.asarray(Image.open(folder / "labelsTr" / labels[0]))
    assert rgb.mode == "RGB" and label.ndim == 2 and set(np.unique(label)) <= {0, 1} and label.max() == 1
    folds = json.loads((folder / "laworder_splits_final.json").read_text())
    assert len(folds) == 5 and all(not any(c.startswith("syn_") for c in f["val"]) for f in folds)
    assert sorted(c for f in folds for c in f["val"]) == sorted(n[:-4] for n in labels if not n.startswith("syn_"))


def test_export_refuses_an_existing_folder_bad_ids_and_a_too_large_extra_limit(tiny_data, tmp_path):
    pool = _pool(tmp_path / "pool")
    export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 502, "Tiny")
    with pytest.raises(RunDirError):
        export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 502, "Tiny")
    with pytest.raises(ConfigError):
        export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 1000, "Tiny")
    with pytest.raises(ConfigError):
        export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 503, "with space")
    with pytest.raises(DataError, match="extra_limit=99"):
        export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 504, "Tiny", extra=[str(pool)], extra_limit=99)


def test_verify_reports_what_nnunet_would_reject(tiny_data, tmp_path):
    folder = export_nnunet_dataset(str(tiny_data), tmp_path / "raw", 505, "Broken", include_test=False)
    labels = sorted((folder / "labelsTr").iterdir())
    labels[0].unlink()  # a case without a label
    Image.fromarray(np.full((32, 32), 2, dtype=np.uint8)).save(labels[1])  # a label value not in dataset.json
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(folder / "labelsTr" / "orphan.png")  # label without images
    Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8)).save(folder / "imagesTr" / "four_0000.png")  # RGBA: 4 channels
    write_mask(folder / "labelsTr" / "four.png", np.ones((32, 32), dtype=bool))  # written 0/255
    problems = "\n".join(verify_nnunet_dataset(folder))
    assert "numTraining is 20 but imagesTr holds 21 cases" in problems
    assert "cases without a label" in problems and labels[0].stem in problems
    assert "labels without images" in problems and "orphan" in problems
    assert "label values [2]" in problems
    assert "case four: 4 image channels" in problems and "label values [255]" in problems
    (folder / "dataset.json").write_text(json.dumps({"labels": {}}))
    assert "required key(s)" in verify_nnunet_dataset(folder)[0]


def test_export_cli(tiny_data, tmp_path, capsys):
    pool = _pool(tmp_path / "pool")
    assert cli(["export", "nnunet", str(tiny_data), str(tmp_path / "raw"), "--id", "506", "--name", "Cli",
                "--extra", str(pool), "--extra-limit", "3"]) == 0
    folder = tmp_path / "raw" / "Dataset506_Cli"
    assert "passes nnU-Net" in capsys.readouterr().out
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 23
    assert cli(["export", "nnunet", str(tiny_data), str(tmp_path / "raw"), "--id", "506", "--name", "Cli"]) == 2

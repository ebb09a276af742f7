"""Multi-class label maps: declarations, procedural K classes, data check, train/evaluate/predict,
nnU-Net export and KiTS19 kidney + tumour; binary stays the default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from laworder.cli import main as cli
from laworder.data.check import check_dataset, ensure_valid
from laworder.data.dataset import PairDataset
from laworder.data.io import read_image, write_image
from laworder.data.labels import find_labels, parse_labels, read_label_map
from laworder.data.layouts import load_dataset
from laworder.data.procedural import generate_procedural, procedural_pair
from laworder.errors import DataError
from laworder.seg.classes import per_class_scores, score_rows
from laworder.seg.config import AugmentConfig
from laworder.seg.losses import bce_dice_loss
from laworder.seg.task import SegTask

NAMES = ["background", "lesion_1", "lesion_2"]


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    return generate_procedural(tmp_path_factory.mktemp("mc") / "proc3", num_images=16, size=32, seed=0, num_classes=3)


def test_label_declarations_in_both_formats(tmp_path):
    assert parse_labels({"background": 0, "kidney": 1, "tumour": 2}, "x") == ["background", "kidney", "tumour"]
    assert parse_labels({"0": "background", "1": "kidney"}, "x") == ["background", "kidney"]  # nnU-Net v1
    for bad in ({"background": 0, "tumour": 2}, {"a": 0, "b": 0}, {"a": 1, "b": 2}, {"a": 0, "b": [1, 2]}, {"a": 0}):
        with pytest.raises(DataError):
            parse_labels(bad, "labels.json")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}, "numTraining": 3}))
    assert find_labels([tmp_path]) == (["background", "lesion"], tmp_path / "dataset.json")
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0, "polyp": 1}))
    assert find_labels([tmp_path])[0] == ["background", "polyp"]  # labels.json is read first


def test_procedural_classes_keep_the_binary_images_geometry():
    for index in range(3):
        image2, mask = procedural_pair(index, 48, seed=1)
        again, same = procedural_pair(index, 48, seed=1, num_classes=2)
        assert np.array_equal(image2, again) and np.array_equal(mask, same)  # binary unchanged
        image3, labels = procedural_pair(index, 48, seed=1, num_classes=3)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        np.testing.assert_array_equal(labels > 0, mask)  # same lesions, now with kinds


def test_three_class_dataset_loads_with_its_labels(three_class):
    collection = load_dataset(three_class)
    assert collection.labels == NAMES
    item = PairDataset(collection.train, 32, num_classes=3)[0]
    expected = read_label_map(collection.train[0].mask)
    assert item["mask"].dtype == torch.float32 and torch.equal(item["mask"][0], torch.from_numpy(expected).float())
    assert load_dataset(generate_procedural(three_class.parent / "binary", 2, 32)).labels is None


def test_data_check_names_an_undeclared_label_value(three_class, tmp_path):
    assert check_dataset(three_class).ok
    bad = generate_procedural(tmp_path / "bad", num_images=3, size=32, seed=0, num_classes=3)
    labels = read_label_map(bad / "masks" / "proc_00001.png")
    labels[:4, :4] = 7
    write_image(bad / "masks" / "proc_00001.png", labels)
    report = check_dataset(bad)
    problems = [p for p in report.errors if p.kind == "undeclared_label"]
    assert len(problems) == 1 and problems[0].path.endswith("proc_00001.png")
    assert "[7]" in problems[0].message and "labels.json" in problems[0].message
    with pytest.raises(DataError, match="undeclared_label"):
        ensure_valid(bad)


def test_per_class_scores_and_their_mean():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    target[0, 0, 2:, 2:] = 2
    pred = target.clone()
    pred[0, 0, 3, 3] = 0  # class 2: 3 of 4 pixels
    row = score_rows(per_class_scores(pred, target, NAMES))[0]
    assert row["dice_lesion_1"] == 1.0 and row["dice_lesion_2"] == pytest.approx(6 / 7)
    assert row["iou_lesion_2"] == pytest.approx(3 / 4) and row["dice"] == pytest.approx((1 + 6 / 7) / 2)
    assert "hd95" not in row  # boundary metrics only when a tolerance is given
    pred[0, 0, :2, :2] = 0  # class 1 missed: HD95 = diagonal √32, NSD 0; class 2 within 1 px
    row = score_rows(per_class_scores(pred, target, NAMES, nsd_tolerance=2.0))[0]
    assert row["hd95_lesion_1"] == pytest.approx(32 ** 0.5) and row["nsd_lesion_1"] == 0.0
    assert row["nsd_lesion_2"] == 1.0 and row["nsd"] == pytest.approx(0.5)


def test_binary_keeps_its_loss_and_head():
    from laworder.seg.classes import model_class_kwargs

    model = torch.nn.Conv2d(3, 1, 1)
    logits, masks = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    for labels in (None, [], ["background", "lesion"]):
        task = SegTask(model, AugmentConfig(), labels=labels)
        assert task.labels is None and model_class_kwargs(labels) == {}
        assert torch.equal(task.loss_fn(logits, masks), bce_dice_loss()(logits, masks))
    assert model_class_kwargs(NAMES) == {"num_classes": 3}


def test_three_class_train_evaluate_predict(three_class, tmp_path):
    run = tmp_path / "run"
    assert cli(["seg", "train", "--data", str(three_class), "--model", "mk_unet", "--image-size", "32", "--epochs", "2",
                "--batch-size", "4", "-o", str(run), "--no-progress", "--cpu"]) == 0
    assert "lesion_2" in (run / "config.yaml").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_dice_lesion_2" in m for m in metrics)
    assert cli(["seg", "evaluate", str(run), "--no-progress"]) == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    subset = result["subsets"]["proc3"]
    assert subset["n"] == 16 and {"dice_lesion_1", "iou_lesion_1", "dice_lesion_2", "iou_lesion_2"} <= set(subset)
    assert subset["dice"] == pytest.approx((subset["dice_lesion_1"] + subset["dice_lesion_2"]) / 2)
    assert "lesion_2 Dice" in (run / "eval" / "eval.md").read_text()

    write_image(tmp_path / "in" / "odd.png", read_image(three_class / "images" / "proc_00003.png")[:, :27])
    out = tmp_path / "pred"
    assert cli(["seg", "predict", str(run), str(tmp_path / "in"), str(out), "--resize", "pad", "--tta",
                "--save-probabilities", "--no-progress"]) == 0
    labels = read_label_map(out / "masks" / "odd.png")
    probs = np.load(out / "probabilities" / "odd.npz")["probabilities"]
    assert labels.shape == (32, 27) and probs.shape == (3, 32, 27)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    assert json.loads((out / "labels.json").read_text()) == {"background": 0, "lesion_1": 1, "lesion_2": 2}
    assert read_image(out / "overlays" / "odd.png").shape == (32, 27, 3)


def test_nnunet_export_writes_the_declared_labels(three_class, tmp_path):
    from laworder.interop.nnunet import export_nnunet_dataset, verify_nnunet_dataset

    folder = export_nnunet_dataset(str(three_class), tmp_path / "raw", 503, "Three")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion_1": 1, "lesion_2": 2}
    assert verify_nnunet_dataset(folder) == []
    values = set()
    for path in (folder / "labelsTr").iterdir():
        values |= set(np.unique(read_label_map(path)).tolist())
    assert values == {0, 1, 2}


def test_kits19_keeps_kidney_and_tumour(tmp_path):
    from laworder.data.kits19 import prepare_kits19
    from test_data_pipeline import _write_case

    _, labels = _write_case(tmp_path / "raw", "case_00000", [2, 3])
    out = prepare_kits19(tmp_path / "raw", tmp_path / "out", keep_kidney=True)
    np.testing.assert_array_equal(read_label_map(out / "masks" / "case_00000_z002.png"), labels[2])
    assert load_dataset(out).labels == ["background", "kidney", "tumour"]
    assert check_dataset(out).ok
    with pytest.raises(DataError, match="not empty"):  # a binary preparation is not the kidney one
        prepare_kits19(tmp_path / "raw", tmp_path / "out")

"""Shipped weights: create_model(..., pretrained=...), seg predict/evaluate --pretrained, seg list.

Every test builds its own tiny weights in tmp_path and points LAWORDER_PRETRAINED_DIR at them,
so nothing here needs the real shipped files, except the last test, which checks those.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from laworder.cli import main as cli
from laworder.data.io import read_mask
from laworder.data.procedural import generate_procedural
from laworder.errors import ConfigError
from laworder.models import create_model
from laworder.models.pretrained import ENV_DIR, PACKAGE_DIR, find_pretrained, list_pretrained
from laworder.seg.config import SegTrainConfig
from laworder.seg.ship import ship_run
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(weights dir with order/tiny and mk_unet/tiny, the data, order's run folder)."""
    root = tmp_path_factory.mktemp("pretrained")
    data = generate_procedural(root / "proc", num_images=16, size=32, seed=0)
    weights = root / "weights"
    runs = {}
    for model in ("order", "mk_unet"):
        loop = LoopConfig(output_dir=str(root / model), epochs=1, batch_size=4, lr=3e-3, progress=False,
                          monitor="val_dice", cpu=True)
        config = SegTrainConfig(data=str(data), model=model, image_size=32, loop=loop)
        runs[model] = train_segmenter(config).run_dir
        ship_run(runs[model], weights, dataset="tiny", kind="test", description="a two-step test run",
                 command=f"pytest tests/test_pretrained.py ({model})")
    return weights, data, runs["order"]


@pytest.fixture
def weights_env(shipped, monkeypatch) -> Path:
    monkeypatch.setenv(ENV_DIR, str(shipped[0]))
    return shipped[0]


def test_create_model_pretrained_loads_the_run_weights(shipped, weights_env):
    _, data, run = shipped
    from laworder.seg.loading import load_segmenter

    trained, _ = load_segmenter(run)
    model = create_model("order", pretrained="tiny")
    assert not model.training and model.pretrained.name == "order/tiny" and model.pretrained.image_size == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    assert torch.equal(create_model("order", pretrained="order/tiny")(x), model(x))
    meta = json.loads((weights_env / "order-tiny" / "meta.json").read_text())
    assert meta["kind"] == "test" and meta["image_size"] == 32 and meta["split"]["num_val"] >= 1
    assert set(meta["test"]["subsets"]) == {"proc"} and 0 <= meta["test"]["mean"]["dice"] <= 1
    assert "research" in meta["terms"] or "terms" in meta["terms"]
    card = (weights_env / "order-tiny" / "card.md").read_text()
    assert "pytest tests/test_pretrained.py (order)" in card and "Not the paper's protocol" in card


def test_unknown_names_list_the_known_ones(weights_env):
    with pytest.raises(ConfigError, match="known: mk_unet/tiny, order/tiny"):
        create_model("order", pretrained="kvasir")
    with pytest.raises(ConfigError, match="are for model 'mk_unet', not 'order'"):
        create_model("order", pretrained="mk_unet/tiny")
    with pytest.raises(ConfigError, match="unknown model 'orderx'"):
        create_model("orderx", pretrained="tiny")
    with pytest.raises(ConfigError, match="must be <model>/<dataset>"):
        find_pretrained("tiny")


def test_other_channels_or_classes_are_refused_clearly(weights_env):
    with pytest.raises(ConfigError, match=r"trained with in_channels=3, got in_channels=1"):
        create_model("order", pretrained="tiny", in_channels=1)
    with pytest.raises(ConfigError, match=r"trained with num_classes=1, got num_classes=2"):
        create_model("mk_unet", pretrained="tiny", num_classes=2)
    assert create_model("order", pretrained="tiny", in_channels=3).in_channels == 3  # repeating is fine


def test_weights_that_do_not_fit_the_architecture_name_the_file(shipped, tmp_path):
    bad = tmp_path / "weights"
    shutil.copytree(shipped[0] / "order-tiny", bad / "order-tiny")
    shutil.copyfile(shipped[0] / "mk_unet-tiny" / "model.safetensors", bad / "order-tiny" / "model.safetensors")
    with pytest.raises(ConfigError, match=r"order-tiny/model.safetensors do not fit ORDER"):
        create_model("order", pretrained="tiny", directory=bad)


def test_predict_and_evaluate_with_pretrained_and_other_sizes(shipped, weights_env, tmp_path, capsys):
    _, data, run = shipped
    # a 48×40 image: predict resizes to the weights' 32² and the mask comes back at 48×40
    from laworder.data.io import read_image, write_image

    src = tmp_path / "imgs"
    image = read_image(sorted((data / "images").iterdir())[0], 3)
    write_image(src / "odd.png", np.ascontiguousarray(np.resize(image, (40, 48, 3))))
    assert cli(["seg", "predict", "--pretrained", "order/tiny", str(src), str(tmp_path / "out")]) == 0
    assert read_mask(tmp_path / "out" / "masks" / "odd.png").shape == (40, 48)
    assert cli(["seg", "predict", "--pretrained", "order/tiny", str(data), str(tmp_path / "a")]) == 0
    assert cli(["seg", "predict", str(run), str(data), str(tmp_path / "b")]) == 0
    for mask in sorted((tmp_path / "a" / "masks").iterdir()):  # same weights, same masks
        assert np.array_equal(read_mask(mask), read_mask(tmp_path / "b" / "masks" / mask.name))
    assert cli(["seg", "evaluate", "--pretrained", "order/tiny", "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["subsets"]["proc"]["n"] == 16
    capsys.readouterr()
    assert cli(["seg", "predict", "--pretrained", "order/nope", str(data), str(tmp_path / "c")]) == 2
    assert "known: mk_unet/tiny, order/tiny" in capsys.readouterr().err
    assert cli(["seg", "predict", "--pretrained", "order/tiny", str(run), str(data), str(tmp_path / "d")]) == 2
    assert "RUN or --pretrained" in capsys.readouterr().err


def test_seg_list_shows_shipped_weights(weights_env, capsys):
    assert cli(["seg", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "order/tiny" in x)
    assert "32²" in line and "test Dice" in line and "proc" in line and "[test]" in line


def test_seg_list_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "empty"))
    assert cli(["seg", "list"]) == 0 and "(none)" in capsys.readouterr().out


def test_multiclass_weights_keep_their_label_map(tmp_path, monkeypatch):
    data = generate_procedural(tmp_path / "proc3", num_images=12, size=32, seed=0, num_classes=3)
    loop = LoopConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=4, progress=False, monitor="val_dice", cpu=True)
    run = train_segmenter(SegTrainConfig(data=str(data), model="order", image_size=32, loop=loop)).run_dir
    weights = ship_run(run, tmp_path / "weights", dataset="proc3", kind="test", description="3 classes", command="pytest")
    assert weights.num_classes == 3 and weights.meta["labels"] == ["background", "lesion_1", "lesion_2"]
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "weights"))
    assert create_model("order", pretrained="proc3")(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert cli(["seg", "predict", "--pretrained", "order/proc3", str(data), str(tmp_path / "pred")]) == 0
    values = set(np.unique(read_mask_values(next((tmp_path / "pred" / "masks").iterdir()))))
    assert values <= {0, 1, 2}


def read_mask_values(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_every_shipped_weight_file_loads_into_its_model(monkeypatch):
    """The weights inside the package (src/laworder/pretrained): each loads strictly into its model,
    runs at its resolution, is small, and its card says how it was made and under which terms."""
    monkeypatch.delenv(ENV_DIR, raising=False)
    shipped = list_pretrained(PACKAGE_DIR)
    assert {"order/polyps", "order/brisc"} <= {w.name for w in shipped}
    for weights in shipped:
        assert weights.weights.stat().st_size < 1_000_000
        model = create_model(weights.model, pretrained=weights.dataset)
        size = weights.image_size
        with torch.no_grad():
            logits = model(torch.rand(1, weights.in_channels, size, size))
        assert logits.shape == (1, weights.num_classes, size, size) and torch.isfinite(logits).all()
        card = (weights.folder / "card.md").read_text()
        assert weights.meta["command"] in card and "research" in weights.meta["terms"]
        assert weights.kind in ("protocol", "short-cpu")
        assert (weights.kind == "protocol") != ("Not the paper's protocol" in card)
        assert 0.0 < weights.test_dice <= 1.0


def test_same_flags_for_run_and_pretrained_and_onnx_without_a_run(shipped, weights_env, tmp_path, capsys):
    """evaluate --pretrained needs no --out (prints; writes only when asked), export takes
    --pretrained, and the exported file predicts alone like the PyTorch model; an ONNX file from
    another model is refused beside RUN/--pretrained, a garbage file in one line (issue 27 item 5)."""
    _, data, run = shipped
    capsys.readouterr()
    assert cli(["seg", "evaluate", "--pretrained", "order/tiny", "--data", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "HD95 (px)" in out and "NSD at 2 px" in out and "nothing written" in out
    # without --data: the dataset the card records (here it exists), like a run folder's
    assert cli(["seg", "evaluate", "--pretrained", "order/tiny", "--no-progress", "--nsd-tolerance", "1"]) == 0
    assert "NSD at 1 px" in capsys.readouterr().out
    onnx_path = tmp_path / "order.onnx"
    assert cli(["seg", "export", "--pretrained", "order/tiny", str(onnx_path), "--no-progress"]) == 0
    assert cli(["seg", "predict", "--onnx", str(onnx_path), str(data), str(tmp_path / "onnx"), "--no-progress"]) == 0
    assert cli(["seg", "predict", "--pretrained", "order/tiny", str(data), str(tmp_path / "torch"), "--no-progress"]) == 0
    agree = [np.mean(read_mask(mask) == read_mask(tmp_path / "torch" / "masks" / mask.name))
             for mask in sorted((tmp_path / "onnx" / "masks").iterdir())]
    assert len(agree) == 16 and min(agree) > 0.999
    # another model's file is refused beside --pretrained (a run folder: tests/test_seg_app.py)
    capsys.readouterr()
    assert cli(["seg", "predict", "--pretrained", "mk_unet/tiny", "--onnx", str(onnx_path), str(data),
                str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "exported from another model" in err and err.count("\n") == 1 and not (tmp_path / "other").exists()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01garbage" * 20)
    assert cli(["seg", "predict", "--onnx", str(garbage), str(data), str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "not an ONNX model" in err and err.count("\n") == 1 and not (tmp_path / "g").exists()

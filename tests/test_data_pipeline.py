"""Data layer: procedural data, PairDataset, group-aware splits, batch augmentation, KiTS19."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from laworder.data import (
    PairDataset, PairRecord, augment_batch, generate_procedural, load_dataset, load_split, prepare_kits19,
    procedural_pair, read_image, read_mask, save_split, train_val_split, write_image, write_mask,
)
from laworder.errors import DataError

# ---------------------------------------------------------------- procedural


def test_procedural_same_seed_gives_byte_identical_files(tmp_path):
    first = generate_procedural(tmp_path / "a", num_images=4, size=32, seed=3)
    second = generate_procedural(tmp_path / "b", num_images=4, size=32, seed=3)
    other = generate_procedural(tmp_path / "c", num_images=4, size=32, seed=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert len(files) == 8
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "images/proc_00000.png").read_bytes() != (other / "images/proc_00000.png").read_bytes()


def test_procedural_refuses_folder_with_foreign_files(tmp_path):
    write_image(tmp_path / "images" / "someone_else.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="another dataset"):
        generate_procedural(tmp_path, num_images=2, size=32)


def test_procedural_lesion_area_mostly_small_and_visible():
    areas, contrasts = [], []
    for index in range(120):
        image, mask = procedural_pair(index, size=96, seed=0)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3) and mask.any()
        areas.append(mask.mean())
        contrasts.append(np.abs(image[mask].mean(0) - image[~mask].mean(0)).max())
    areas = np.asarray(areas)
    assert np.mean(areas < 0.10) >= 0.9
    assert np.mean((areas > 0.01) & (areas < 0.03)) >= 0.2
    assert areas.max() < 0.2
    assert np.median(contrasts) > 8  # the lesion's colour differs visibly (in 0..255 units)


def test_procedural_spec_loads_train_and_disjoint_test_from_cache(tmp_path):
    collection = load_dataset("procedural:6:32:1", cache_dir=tmp_path)
    assert collection.layout == "procedural"
    assert collection.counts() == {"train": 6, "procedural": 1}
    train_stems = {r.stem for r in collection.train}
    assert not train_stems & {r.stem for r in collection.test["procedural"]}
    again = load_dataset("procedural:6:32:1", cache_dir=tmp_path)
    assert again.train == collection.train  # generated once, then read from the cache
    image = read_image(collection.train[0].image)
    np.testing.assert_array_equal(image, procedural_pair(0, 32, 1)[0])
    with pytest.raises(Exception, match="procedural"):
        load_dataset("procedural:x", layout="procedural", cache_dir=tmp_path)


# ---------------------------------------------------------------- PairDataset


def _records(tmp_path, count=3, size=(30, 40)):
    records = []
    rng = np.random.default_rng(0)
    for i in range(count):
        image_path, mask_path = tmp_path / "images" / f"{i}.png", tmp_path / "masks" / f"{i}.png"
        write_image(image_path, rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
        mask = np.zeros(size, bool)
        mask[5:15, 10:30] = True
        write_mask(mask_path, mask)
        records.append(PairRecord(str(i), image_path, mask_path, "train"))
    return records


def test_pair_dataset_items_have_documented_shapes_and_ranges(tmp_path):
    dataset = PairDataset(_records(tmp_path), size=(16, 24))
    item = dataset[1]
    assert item["index"] == 1 and len(dataset) == 3
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].shape == (1, 16, 24) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert PairDataset(_records(tmp_path), size=8, channels=1)[0]["image"].shape == (1, 8, 8)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 24)


def test_pair_dataset_cache_keeps_resized_arrays(tmp_path):
    records = _records(tmp_path)
    dataset = PairDataset(records, size=16, cache=True)
    first = dataset[0]["image"]
    records[0].image.unlink()
    assert torch.equal(dataset[0]["image"], first)
    with pytest.raises(DataError, match="0.png: file not found"):
        PairDataset(records, size=16)[0]


def test_pair_dataset_size_mismatch_names_both_files(tmp_path):
    records = _records(tmp_path, count=1)
    write_mask(records[0].mask, np.zeros((10, 10), bool))
    with pytest.raises(DataError, match=r"images/0.png.*masks/0.png"):
        PairDataset(records)[0]


# ---------------------------------------------------------------- splits


def _clinicdb_like_records():
    records = [PairRecord(str(frame), _dummy(frame), _dummy(frame), "train", f"clinicdb_seq_{frame // 25}")
               for frame in range(1, 201)]
    return records + [PairRecord(f"kvasir{i}", _dummy(i), _dummy(i), "train", "") for i in range(100)]


def _dummy(name):
    from pathlib import Path

    return Path(f"/nonexistent/{name}.png")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_keeps_every_group_on_one_side(seed):
    records = _clinicdb_like_records()
    train, val = train_val_split(records, val_fraction=0.1, seed=seed)
    assert len(train) + len(val) == len(records) and val and train
    train_groups = {r.group for r in train if r.group}
    assert not train_groups & {r.group for r in val if r.group}
    assert 25 <= len(val) <= 30 + 25  # target 30, at most one sequence of overshoot


def test_split_is_deterministic_and_seed_dependent():
    records = _clinicdb_like_records()
    assert train_val_split(records, seed=5) == train_val_split(records, seed=5)
    assert train_val_split(records, seed=5)[1] != train_val_split(records, seed=6)[1]
    assert train_val_split(list(reversed(records)), seed=5)[1] == list(reversed(train_val_split(records, seed=5)[1]))


def test_split_val_never_empty_and_single_group_refused():
    two = [PairRecord("a", _dummy("a"), _dummy("a")), PairRecord("b", _dummy("b"), _dummy("b"))]
    train, val = train_val_split(two, val_fraction=0.01)
    assert len(train) == 1 and len(val) == 1
    same = [PairRecord(s, _dummy(s), _dummy(s), group="case_1") for s in "abc"]
    with pytest.raises(DataError, match="2 groups"):
        train_val_split(same)
    with pytest.raises(ValueError):
        train_val_split(two, val_fraction=1.0)


def test_split_save_load_roundtrip(tmp_path):
    records = _clinicdb_like_records()
    train, val = train_val_split(records, seed=1)
    save_split(tmp_path / "split.json", train, val, {"seed": 1})
    assert load_split(tmp_path / "split.json", records) == (train, val)
    assert json.loads((tmp_path / "split.json").read_text())["meta"] == {"seed": 1}
    with pytest.raises(DataError, match="not in the dataset"):
        load_split(tmp_path / "split.json", records[:10])


# ---------------------------------------------------------------- augmentation


def _batch(batch=4, height=24, width=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, height, width, generator=generator)
    masks = torch.zeros(batch, 1, height, width)
    masks[:, :, 6:14, 8:20] = 1.0
    return images, masks


def test_augment_is_deterministic_given_the_generator():
    images, masks = _batch()
    first = augment_batch(images, masks, torch.Generator().manual_seed(7))
    second = augment_batch(images, masks, torch.Generator().manual_seed(7))
    other = augment_batch(images, masks, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == images.shape and first[1].shape == masks.shape


def test_augment_masks_stay_exactly_binary_and_keep_their_area():
    images, masks = _batch(batch=8, height=48, width=48)
    masks[:] = 0
    masks[:, :, 18:30, 18:30] = 1.0  # centred, so rotation keeps it inside the frame
    _, out = augment_batch(images, masks, torch.Generator().manual_seed(1), rotate_degrees=180)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(out.sum(dim=(1, 2, 3)).numpy(), 144, rtol=0.15)


def test_augment_flips_only_are_exact_and_switches_work():
    images, masks = _batch(batch=16)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(3), vflip=False, rotate_degrees=0)
    flipped = 0
    for i in range(16):
        if torch.allclose(out[i], images[i], atol=1e-5):
            continue
        assert torch.allclose(out[i], images[i].flip(-1), atol=1e-5)
        assert torch.equal(out_masks[i], masks[i].flip(-1))
        flipped += 1
    assert 0 < flipped < 16
    same, _ = augment_batch(images, masks, torch.Generator(), hflip=False, vflip=False, rotate_degrees=0)
    assert torch.allclose(same, images, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_uses_cpu_generator_and_matches_cpu():
    images, masks = _batch()
    on_cpu = augment_batch(images, masks, torch.Generator().manual_seed(2))
    on_gpu = augment_batch(images.cuda(), masks.cuda(), torch.Generator().manual_seed(2))
    assert on_gpu[0].device.type == "cuda"
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], atol=1e-4, rtol=0)
    assert set(on_gpu[1].unique().tolist()) <= {0.0, 1.0}
    assert (on_gpu[1].cpu() != on_cpu[1]).float().mean() < 0.01  # nearest-neighbour ties may differ


def test_augment_rejects_bad_shapes():
    images, masks = _batch()
    with pytest.raises(ValueError, match="B×1×H×W"):
        augment_batch(images, masks.repeat(1, 2, 1, 1), torch.Generator())
    with pytest.raises(ValueError, match="differ"):
        augment_batch(images, masks[:2], torch.Generator())


# ---------------------------------------------------------------- KiTS19

# KiTS19's own affine: voxel axis 0 runs inferior (axial), 1 posterior, 2 left.
KITS_AFFINE = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def _write_case(root, name, tumour_slices, segmentation=True, shape=(6, 20, 24)):
    case = root / name
    case.mkdir(parents=True)
    hu = np.linspace(-200, 500, np.prod(shape)).reshape(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(hu, KITS_AFFINE), case / "imaging.nii.gz")
    labels = np.zeros(shape, np.uint8)
    labels[:, 2:18, 2:10] = 1  # kidney on every slice
    for z in tumour_slices:
        labels[z, 5:9, 4:12] = 2
    if segmentation:
        nib.save(nib.Nifti1Image(labels, KITS_AFFINE), case / "segmentation.nii.gz")
    return hu, labels


def test_prepare_kits19_writes_tumour_slices_grouped_by_case(tmp_path):
    hu, labels = _write_case(tmp_path / "raw", "case_00000", [2, 3])
    _write_case(tmp_path / "raw", "case_00001", [4])
    _write_case(tmp_path / "raw", "case_00210", [1], segmentation=False)  # a test case: skipped
    out = prepare_kits19(tmp_path / "raw", tmp_path / "out")
    groups = json.loads((out / "groups.json").read_text())
    assert groups == {"case_00000_z002": "case_00000", "case_00000_z003": "case_00000",
                      "case_00001_z004": "case_00001"}
    np.testing.assert_array_equal(read_mask(out / "masks/case_00000_z002.png"), labels[2] == 2)
    image = read_image(out / "images/case_00000_z003.png", channels=1)[..., 0]
    expected = np.round((np.clip(hu[3], -79, 304) + 79) * 255 / 383).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert prepare_kits19(tmp_path / "raw", tmp_path / "out") == out  # same parameters: reused
    with pytest.raises(DataError, match="not empty"):
        prepare_kits19(tmp_path / "raw", tmp_path / "out", window=(-100, 200))
    collection = load_dataset(out)
    assert {r.group for r in collection.train} == {"case_00000", "case_00001"}


def test_kits19_layout_on_raw_folder_prepares_into_cache(tmp_path):
    _write_case(tmp_path / "kits19" / "data", "case_00000", [1])
    _write_case(tmp_path / "kits19" / "data", "case_00001", [2, 3])
    collection = load_dataset(tmp_path / "kits19", cache_dir=tmp_path / "cache")
    assert collection.layout == "kits19" and len(collection.train) == 3
    train, val = train_val_split(collection.train, val_fraction=0.3, seed=0)
    assert {r.group for r in train}.isdisjoint({r.group for r in val})


def test_kits19_orientation_is_read_from_the_affine(tmp_path):
    _, labels = _write_case(tmp_path / "kits", "case_00000", [2])
    canonical = tmp_path / "ras" / "case_00000"
    canonical.mkdir(parents=True)
    for name in ("imaging", "segmentation"):
        nib.save(nib.as_closest_canonical(nib.load(tmp_path / "kits/case_00000" / f"{name}.nii.gz")),
                 canonical / f"{name}.nii.gz")
    a = prepare_kits19(tmp_path / "kits", tmp_path / "a")
    b = prepare_kits19(tmp_path / "ras", tmp_path / "b")
    for sub in ("images", "masks"):
        np.testing.assert_array_equal(read_image(a / sub / "case_00000_z002.png"),
                                      read_image(b / sub / "case_00000_z003.png"))

"""Data layer: the image/mask loader, dataset layouts and the dataset check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laworder.data import (
    check_dataset, detect_layout, ensure_valid, load_dataset, read_image, read_mask, train_val_split, write_image,
    write_mask,
)
from laworder.data.layouts import clinicdb_group
from laworder.errors import DataError

RNG = np.random.default_rng(0)


def _photo(height: int = 12, width: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _blob(height: int = 12, width: int = 16) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4: height // 2, width // 4: width // 2] = True
    return mask


def _write_pairs(images: Path, masks: Path, stems, image_ext: str = ".png", size=(12, 16)) -> None:
    for stem in stems:
        write_image(images / f"{stem}{image_ext}", _photo(*size))
        write_mask(masks / f"{stem}.png", _blob(*size))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- images


def test_read_image_rgb_roundtrip(tmp_path):
    pixels = _photo()
    write_image(tmp_path / "a.png", pixels)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, pixels)


def test_read_image_grayscale_is_repeated_to_three_channels(tmp_path):
    gray = _photo()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (12, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)
    assert read_image(tmp_path / "g.png", channels=1).shape == (12, 16, 1)


def test_read_image_rgba_drops_alpha_and_palette_converts(tmp_path):
    rgba = np.dstack([_photo(), np.full((12, 16), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    Image.fromarray(_photo()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (12, 16, 3)


def test_read_image_16bit_is_stretched_to_full_range(tmp_path):
    values = np.linspace(1000, 4000, 12 * 16).reshape(12, 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "w.png")
    out = read_image(tmp_path / "w.png", channels=1)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_read_image_rejects_bad_channels(tmp_path):
    write_image(tmp_path / "a.png", _photo())
    with pytest.raises(ValueError, match="channels"):
        read_image(tmp_path / "a.png", channels=2)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_raises_data_error_naming_file(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    write_image(path, RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    _truncate(path)
    with pytest.raises(DataError, match=f"cut{suffix}.*(truncated|unreadable)"):
        read_image(path)


def test_missing_and_garbage_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png"):
        read_mask(tmp_path / "junk.png")


def test_write_image_float_and_bad_input(tmp_path):
    write_image(tmp_path / "f.png", np.full((4, 5, 3), 0.5))
    assert read_image(tmp_path / "f.png")[0, 0, 0] == 128
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_image(tmp_path / "bad.png", np.full((4, 5), 3.0))
    with pytest.raises(DataError, match="extension"):
        write_image(tmp_path / "bad.gif", _photo())


# ---------------------------------------------------------------- masks


def test_mask_0_255_roundtrip_and_lossy_format_refused(tmp_path):
    write_mask(tmp_path / "m.png", _blob())
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), _blob())
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png")))) == {0, 255}
    with pytest.raises(DataError, match="losslessly"):
        write_mask(tmp_path / "m.jpg", _blob())
    with pytest.raises(ValueError, match="0/1"):
        write_mask(tmp_path / "m2.png", _blob().astype(np.uint8) * 255)


def test_mask_0_1_values_foreground_is_one(tmp_path):
    Image.fromarray(_blob().astype(np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), _blob())


def test_mask_palette_index_above_zero_is_lesion(tmp_path):
    index = _blob().astype(np.uint8) * 3  # palette index 3; its colour does not matter
    image = Image.fromarray(index, "P")
    image.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 1, 2, 3] + [0] * (256 * 3 - 12))
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), _blob())


def test_mask_coloured_rgb_lesion_counts(tmp_path):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[_blob()] = (255, 0, 0)  # pure red: luma 76, still a lesion
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), _blob())


def test_mask_jpeg_noisy_three_channel_binarises_at_128(tmp_path):
    mask = np.zeros((64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    mask[(yy - 30) ** 2 + (xx - 34) ** 2 < 15**2] = True
    rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "m.jpg", quality=90)
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert ((raw > 0) & (raw < 255)).any(), "the JPEG should be noisy for this test to mean anything"
    assert np.mean(read_mask(tmp_path / "m.jpg") != mask) < 0.01


def test_mask_16bit_and_mode_1(tmp_path):
    Image.fromarray(_blob().astype(np.uint16) * 65535).save(tmp_path / "w.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "w.png"), _blob())
    Image.fromarray(_blob()).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), _blob())


# ---------------------------------------------------------------- layouts


def test_pairs_layout_matches_by_stem_in_natural_order_with_groups(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", ["10", "2", "b"], image_ext=".jpg")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "groups.json").write_text(json.dumps({"2": "case_a", "10": "case_a"}))
    collection = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "pairs" and collection.layout == "pairs"
    assert [r.stem for r in collection.train] == ["2", "10", "b"]
    assert [r.group for r in collection.train] == ["case_a", "case_a", ""]
    assert collection.train[0].image.suffix == ".jpg" and collection.test == {}


def test_pairs_layout_lists_unmatched_stems_on_both_sides(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b"])
    write_image(tmp_path / "images" / "only_image.png", _photo())
    write_mask(tmp_path / "masks" / "only_mask.png", _blob())
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path)
    assert "only_image.png" in str(error.value) and "only_mask.png" in str(error.value)


def test_duplicate_stems_and_empty_dataset_raise(tmp_path):
    _write_pairs(tmp_path / "dup" / "images", tmp_path / "dup" / "masks", ["a"])
    write_image(tmp_path / "dup" / "images" / "a.jpg", _photo())
    with pytest.raises(DataError, match="'a' has several files"):
        load_dataset(tmp_path / "dup")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        load_dataset(tmp_path / "empty")


def test_unknown_or_missing_folder_raises(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(Exception, match="unknown dataset layout 'nope'"):
        load_dataset(tmp_path, layout="nope")


def test_clinicdb_frames_map_to_video_sequences():
    assert clinicdb_group("1") == clinicdb_group("25") == "clinicdb_seq_1"
    assert clinicdb_group("26") == "clinicdb_seq_2"
    assert clinicdb_group("68") == clinicdb_group("78") == "clinicdb_seq_4"
    assert clinicdb_group("612") == "clinicdb_seq_29"
    assert clinicdb_group("613") == "613" and clinicdb_group("cju0qkwl35piu0993l0dewei2") == "cju0qkwl35piu0993l0dewei2"


def test_pranet_layout_reads_train_and_test_subsets_with_groups(tmp_path):
    train = tmp_path / "TrainDataset"
    _write_pairs(train / "image", train / "mask", ["1", "25", "26", "cjuhash"])
    for subset, stems in {"CVC-ClinicDB": ["68", "70"], "Kvasir": ["cjuother"]}.items():
        _write_pairs(tmp_path / "TestDataset" / subset / "images", tmp_path / "TestDataset" / subset / "masks", stems)
    collection = load_dataset(tmp_path)
    assert collection.layout == "pranet"
    assert {r.stem: r.group for r in collection.train} == {
        "1": "clinicdb_seq_1", "25": "clinicdb_seq_1", "26": "clinicdb_seq_2", "cjuhash": "cjuhash"}
    assert list(collection.test) == ["Kvasir", "CVC-ClinicDB"]  # canonical order, not alphabetical
    assert {r.group for r in collection.test["CVC-ClinicDB"]} == {"clinicdb_seq_4"}
    assert collection.test["Kvasir"][0].subset == "Kvasir" and collection.train[0].subset == "train"


def test_pranet_split_keeps_clinicdb_sequences_together(tmp_path):
    frames = [str(frame) for frame in range(1, 80)]  # sequences 1-5 (1-25, 26-50, 51-67, 68-78, 79-)
    hashes = [f"cju{i:03d}" for i in range(40)]
    _write_pairs(tmp_path / "TrainDataset" / "image", tmp_path / "TrainDataset" / "mask", frames + hashes, size=(4, 4))
    records = load_dataset(tmp_path).train
    for seed in range(5):
        train, val = train_val_split(records, val_fraction=0.3, seed=seed)
        train_sequences = {r.group for r in train if r.group.startswith("clinicdb_seq_")}
        val_sequences = {r.group for r in val if r.group.startswith("clinicdb_seq_")}
        assert train_sequences.isdisjoint(val_sequences) and val


@pytest.mark.parametrize("prefix", ["", "segmentation_task"])
def test_brisc_layout_both_release_shapes(tmp_path, prefix):
    root = tmp_path / prefix if prefix else tmp_path
    _write_pairs(root / "train" / "images", root / "train" / "masks", ["brisc2025_train_00001_gl_ax_t1"], ".jpg")
    _write_pairs(root / "test" / "images", root / "test" / "masks", ["brisc2025_test_00001_me_co_t1"], ".jpg")
    collection = load_dataset(tmp_path)
    assert collection.layout == "brisc" and collection.counts() == {"train": 1, "BRISC": 1}


# ---------------------------------------------------------------- check


def _broken_dataset(root: Path) -> dict[str, str]:
    """A pair folder with one problem of every kind; returns kind -> offending file name."""
    images, masks = root / "images", root / "masks"
    _write_pairs(images, masks, ["good", "cut", "sizes", "photo", "empty", "dup"])
    write_image(images / "lonely.png", _photo())
    write_mask(masks / "orphan.png", _blob())
    write_image(images / "cut.png", RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    write_mask(masks / "cut.png", np.zeros((64, 64), bool) | _blob(64, 64))
    _truncate(images / "cut.png")
    write_mask(masks / "sizes.png", _blob(20, 20))
    write_image(masks / "photo.png", _photo())
    write_mask(masks / "empty.png", np.zeros((12, 16), bool))
    write_image(images / "dup.jpg", _photo())
    (images / "notes.txt").write_text("hello")
    return {"unmatched_image": "lonely.png", "unmatched_mask": "orphan.png", "unreadable": "cut.png",
            "size_mismatch": "sizes.png", "not_binary": "photo.png", "empty_mask": "empty.png",
            "duplicate_stem": "dup.jpg", "ignored_file": "notes.txt"}


def test_check_reports_every_problem_at_once(tmp_path):
    expected = _broken_dataset(tmp_path)
    report = check_dataset(tmp_path)
    found = {(p.kind, Path(p.path).name) for p in report.problems}
    assert set(expected.items()) <= found
    assert not report.ok
    assert {p.kind for p in report.warnings} == {"empty_mask", "ignored_file"}
    text = report.format()
    for name in expected.values():
        assert name in text
    assert "looks like a photo, not a mask" in text
    with pytest.raises(DataError) as error:
        ensure_valid(tmp_path)
    assert "lonely.png" in str(error.value) and "orphan.png" in str(error.value)


def test_check_passes_clean_data_with_empty_mask_warning_and_summary(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", ["a", "b", "c"])
    write_mask(tmp_path / "masks" / "c.png", np.zeros((12, 16), bool))
    report = ensure_valid(tmp_path)
    assert report.ok and [p.kind for p in report.problems] == ["empty_mask"]
    stats = report.summary["parts"]["train"]
    assert stats["pairs"] == 3 and stats["empty_masks"] == 1
    assert stats["lesion_area"]["max"] == pytest.approx(_blob().mean())
    assert report.summary["common_image_sizes"] == [[16, 12, 3]]


def test_check_reports_empty_dataset_and_bad_path(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert [p.kind for p in check_dataset(tmp_path).problems] == ["empty_dataset"]
    report = check_dataset(tmp_path / "absent")
    assert not report.ok and report.problems[0].kind == "layout"


def test_check_flags_label_map_masks(tmp_path):
    _write_pairs(tmp_path / "images", tmp_path / "masks", ["a"])
    Image.fromarray(_blob().astype(np.uint8) * 2).save(tmp_path / "masks" / "a.png")
    report = check_dataset(tmp_path)
    assert report.ok and [p.kind for p in report.problems] == ["low_mask_values"]


def test_check_runs_on_layouts_and_procedural_specs(tmp_path):
    report = check_dataset("procedural:4:32:0", cache_dir=tmp_path)
    assert report.ok and report.layout == "procedural" and report.summary["pairs"] == 5
    assert "procedural" in report.format()

"""New pairs from existing masks (``laworder.synth.mask_augment``, ``sample_pool(mask_augment=N)``):
lesions kept whole and in frame, seeded transforms, pools identical whatever the batching, records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from laworder.data.io import read_image, read_mask, write_mask
from laworder.errors import ConfigError
from laworder.synth.mask_augment import MaskJitter, MaskTransform, check_copies, draw_transform, transform_seed
from laworder.synth.sampler import load_mask_tensor, sample_pool
from test_synth_sampler import fake_run  # tests/ is on sys.path (rootdir conftest)


def _components(mask: np.ndarray) -> int:
    return ndimage.label(mask != 0, structure=np.ones((3, 3), int))[1]


def test_a_tiny_lesion_at_the_border_survives_every_copy_in_frame():
    mask = np.zeros((32, 32), np.float32)
    mask[0, 28:31] = 1  # 3 pixels on the top edge, near the corner
    mask[12:26, 6:20] = 1  # and a large lesion
    jitter = MaskJitter(max_shift=0.2, max_rotation=30.0, max_scale=0.3)  # wide: many draws are rejected
    moved = 0
    for copy in range(40):
        transform = draw_transform(mask, transform_seed(7, "case", copy), jitter)
        out = transform.apply(mask)
        labels, count = ndimage.label(out != 0, structure=np.ones((3, 3), int))
        assert count == 2, (copy, transform)  # neither lesion erased (nor split)
        sizes = sorted(np.bincount(labels.ravel())[1:])
        assert sizes[0] >= max(1, int(0.75 * transform.scale**2 * 3)), (copy, transform)
        # in frame: every source lesion pixel centre lands inside the image
        rows, cols = np.nonzero(mask)
        landed = transform.forward_points(rows, cols, mask.shape)
        assert (landed > -0.5).all() and (landed < 31.5).all(), (copy, transform)
        moved += transform != MaskTransform(flip=transform.flip, attempt=transform.attempt)
    assert moved >= 30  # mostly real jitter, not the flip-only fallback


def test_transforms_are_seeded_per_mask_and_copy_and_do_what_they_say():
    mask = np.zeros((24, 24), np.float32)
    mask[8:14, 9:13] = 1
    first = draw_transform(mask, transform_seed(0, "a", 0))
    assert first == draw_transform(mask, transform_seed(0, "a", 0))
    others = {draw_transform(mask, transform_seed(*key)) for key in ((0, "a", 1), (0, "b", 0), (1, "a", 0))}
    assert first not in others and len(others) == 3
    assert np.array_equal(MaskTransform(flip=True).apply(mask), mask[:, ::-1])
    assert np.array_equal(MaskTransform(shift=(2.0, -3.0)).apply(mask), np.roll(mask, (2, -3), axis=(0, 1)))
    turned = MaskTransform(rotation=90.0).apply(mask)
    assert np.array_equal(turned, np.rot90(mask))  # counter-clockwise on screen
    assert MaskTransform(scale=2.0).apply(mask).sum() == pytest.approx(4 * mask.sum(), rel=0.1)
    empty = np.zeros((8, 8), np.float32)
    assert draw_transform(empty, transform_seed(0, "e", 0)).attempt == 0  # nothing to keep


@pytest.mark.parametrize("copies", [0, -2, 1.5, True, "3"])
def test_zero_negative_or_non_integer_copies_are_refused(copies):
    with pytest.raises(ConfigError, match="mask_augment must be an integer >= 1"):
        check_copies(copies)


@pytest.mark.parametrize("bad", [{"max_shift": 0.8}, {"max_scale": -0.1}, {"tries": 0}, {"min_kept": 2}])
def test_out_of_range_jitter_is_refused(bad):
    with pytest.raises(ConfigError, match="mask jitter"):
        MaskJitter(**bad)


@pytest.fixture(scope="module")
def run_and_masks(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    masks = root / "masks"
    for index in range(3):
        mask = np.zeros((64, 64), bool)
        mask[8 * index : 8 * index + 20, 10:30] = True
        if index == 2:
            mask[0:2, 60:64] = True  # a tiny second lesion in the corner (2×1 px at 32²)
        write_mask(masks / f"case_{index}.png", mask)
    return fake_run(root / "run"), masks


def _bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_augmented_pool_is_identical_whatever_the_batching_and_records_each_copy(run_and_masks, tmp_path):
    run_dir, masks = run_and_masks
    pools = [sample_pool(run_dir, masks, tmp_path / f"b{size}", steps=2, guidance_scale=1.0, seed=5,
                         batch_size=size, mask_augment=2) for size in (1, 4)]
    one, four = _bytes(pools[0]), _bytes(pools[1])
    assert one.keys() == four.keys()
    for name in one:
        # pool_state.json records the batch size; .laworder-manifest.json (laworder.outputs) when it was written
        if name.startswith("images/"):  # the pixels up to float round-off (see test_synth_sampler)
            first, other = (read_image(pool / name).astype(int) for pool in pools)
            assert np.abs(first - other).max() <= 1 and (first != other).mean() < 0.01, name
        elif name not in ("pool_state.json", ".laworder-manifest.json"):
            assert one[name] == four[name], name  # same seeds, any batching: the same masks and records
    manifest = json.loads(one["manifest.json"])
    assert manifest["count"] == 6 and manifest["mask_augment"]["copies"] == 2 and manifest["mask_augment"]["sources"] == 3
    stems = [item["stem"] for item in manifest["items"]]
    assert stems == [f"case_{i}_aug{k}" for i in range(3) for k in range(2)]
    for item in manifest["items"]:
        source = item["source_stem"]
        assert item["source_mask"] == str(masks / f"{source}.png") and item["stem"].startswith(source + "_aug")
        transform = MaskTransform(**{**item["transform"], "shift": tuple(item["transform"]["shift"])})
        expected = transform.apply(load_mask_tensor(masks / f"{source}.png", 32)[0].numpy()) > 0.5
        written = read_mask(pools[0] / "masks" / f"{item['stem']}.png")
        assert np.array_equal(written, expected)  # the pool's mask is the recorded transform of its source
        assert _components(written) == _components(load_mask_tensor(masks / f"{source}.png", 32)[0].numpy())
        assert read_image(pools[0] / "images" / f"{item['stem']}.png").shape == (32, 32, 3)


def test_without_mask_augment_nothing_changes_and_zero_is_refused_before_writing(run_and_masks, tmp_path):
    run_dir, masks = run_and_masks
    plain = sample_pool(run_dir, masks, tmp_path / "plain", steps=1, guidance_scale=1.0, limit=1)
    manifest = json.loads((plain / "manifest.json").read_text())
    assert "mask_augment" not in manifest and set(manifest["items"][0]) == {"stem", "seed", "source_mask"}
    assert "mask_augment" not in json.loads((plain / "pool_state.json").read_text())
    for copies in (0, -1):
        with pytest.raises(ConfigError, match="mask_augment"):
            sample_pool(run_dir, masks, tmp_path / f"bad{copies}", steps=1, mask_augment=copies)
        assert not (tmp_path / f"bad{copies}").exists()
    torch.manual_seed(0)  # leave global RNG use alone

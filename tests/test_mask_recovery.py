"""Mask recovery (Table 3 metric): a frozen segmenter on generated images vs their conditioning masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from laworder.cli import main as cli
from laworder.data.io import read_mask
from laworder.data.layouts import load_dataset
from laworder.data.procedural import generate_procedural
from laworder.errors import ConfigError, DataError, RunDirError
from laworder.experiments.mask_recovery import (
    filter_pool,
    mask_recovery,
    read_manifest,
    recovery_per_image,
    sample_stems,
    subset_pool,
)
from laworder.seg.config import SegTrainConfig
from laworder.seg.train import train_segmenter
from laworder.training import LoopConfig




class MaskOracle(nn.Module):
    """A 'segmenter' that reads the lesion off the image: logits +10 where the red channel is
    above 0.5, -10 elsewhere (the test pool paints lesions red on black)."""

    in_channels = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.where(images[:, :1] > 0.5, 10.0, -10.0)


def _painted_pool(root: Path, count: int = 6, wrong: tuple[int, ...] = (1, 4)) -> Path:
    """Pool whose images show their mask in red, except ``wrong`` items, whose lesion is elsewhere."""
    from laworder.data.io import write_image, write_mask

    for index in range(count):
        mask = np.zeros((32, 32), dtype=bool)
        mask[4 + index: 12 + index, 6:14] = True
        painted = np.roll(mask, 16, axis=1) if index in wrong else mask
        image = np.zeros((32, 32, 3), dtype=np.uint8)
        image[painted] = (255, 0, 0)
        write_image(root / "images" / f"s{index}.png", image)
        write_mask(root / "masks" / f"s{index}.png", mask)
    manifest = {"method": "law", "count": count, "items": [{"stem": f"s{i}", "seed": i} for i in range(count)]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_mask_recovery_scores_each_generated_image_against_its_conditioning_mask(tmp_path):
    pool = _painted_pool(tmp_path / "pool")
    scores = mask_recovery(MaskOracle(), pool, image_size=32)
    per_image = {row["stem"]: row["dice"] for row in scores["per_image"]}
    assert per_image == {"s0": 1.0, "s1": 0.0, "s2": 1.0, "s3": 1.0, "s4": 0.0, "s5": 1.0}
    assert scores["count"] == 6 and scores["method"] == "law"
    assert scores["dice"]["mean"] == pytest.approx(4 / 6)
    assert scores["dice"]["std"] == pytest.approx(np.std([1, 0, 1, 1, 0, 1], ddof=1))
    assert scores["iou"]["mean"] == pytest.approx(4 / 6)


def test_recovery_per_image_adds_boundary_f_size_bins_and_the_chance_level(tmp_path):
    pool = _painted_pool(tmp_path / "pool")
    rows = recovery_per_image(MaskOracle(), pool, image_size=32)
    assert [row["stem"] for row in rows] == [f"s{i}" for i in range(6)]
    assert [row["dice"] for row in rows] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert [row["boundary_f"] for row in rows] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # moved 16 px: beyond 2 px
    assert all(row["lesion_ratio"] == pytest.approx(64 / 1024) and row["size_bin"] == "medium" for row in rows)
    # s0's prediction against s1's mask (shifted down one row): 7 of 8 rows overlap
    assert rows[0]["chance_dice"] == pytest.approx(2 * 56 / 128)


def test_a_pool_without_manifest_is_refused_with_where_pools_come_from(tmp_path):
    folder = generate_procedural(tmp_path / "not_a_pool", num_images=2, size=32)
    with pytest.raises(DataError) as err:
        mask_recovery(MaskOracle(), folder, image_size=32)
    assert "manifest.json" in str(err.value) and "laworder synth sample" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(ConfigError, match="image_size"):
        mask_recovery(MaskOracle(), _painted_pool(tmp_path / "pool"))


def test_filter_pool_keeps_pairs_above_the_threshold_and_records_the_filter(tmp_path):
    pool = _painted_pool(tmp_path / "pool")
    out = filter_pool(pool, MaskOracle(), 0.5, tmp_path / "kept", image_size=32)
    assert sorted(r.stem for r in load_dataset(str(out)).train) == ["s0", "s2", "s3", "s5"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filter"]["kept"] == 4 and manifest["filter"]["dropped"] == 2 and manifest["filter"]["min_dice"] == 0.5
    assert manifest["count"] == 4 and [item["stem"] for item in manifest["items"]] == ["s0", "s2", "s3", "s5"]
    assert manifest["method"] == "law" and manifest["source_pool"] == str(pool.resolve())
    assert np.array_equal(read_mask(out / "masks" / "s2.png"), read_mask(pool / "masks" / "s2.png"))
    with pytest.raises(ConfigError):
        filter_pool(pool, MaskOracle(), 1.5, tmp_path / "bad", image_size=32)
    with pytest.raises(RunDirError, match="not empty"):
        filter_pool(pool, MaskOracle(), 0.5, tmp_path / "kept", image_size=32)


def test_unreadable_pairs_stop_scoring_or_are_skipped_and_listed(tmp_path):
    pool = _painted_pool(tmp_path / "pool")
    broken = pool / "images" / "s3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError, match="1 of 6 pool pairs unreadable.*s3"):
        mask_recovery(MaskOracle(), pool, image_size=32)
    scores = mask_recovery(MaskOracle(), pool, image_size=32, skip_unreadable=True)
    assert scores["count"] == 5 and list(scores["skipped"]) == ["s3"]
    assert [row["stem"] for row in scores["per_image"]] == ["s0", "s1", "s2", "s4", "s5"]
    out = filter_pool(pool, MaskOracle(), 0.5, tmp_path / "kept", image_size=32, scores=scores)
    recorded = json.loads((out / "manifest.json").read_text())["filter"]
    assert (recorded["kept"], recorded["dropped"], recorded["unreadable"], recorded["source_count"]) == (3, 2, ["s3"], 6)


def test_subsets_are_nested_and_refuse_unknown_stems(tmp_path):
    pool = _painted_pool(tmp_path / "pool")
    small, large = sample_stems(pool, 2, seed=3), sample_stems(pool, 5, seed=3)
    assert set(small) <= set(large) and len(set(large)) == 5
    with pytest.raises(DataError, match="cannot draw 7 pairs"):
        sample_stems(pool, 7)
    with pytest.raises(DataError, match="holds no pair"):
        subset_pool(pool, ["nope"], tmp_path / "sub", {})


def test_mask_recovery_from_a_run_folder_and_the_cli(tmp_path, capsys, monkeypatch):
    data = generate_procedural(tmp_path / "real", num_images=12, size=32, seed=0)
    loop = LoopConfig(output_dir=str(tmp_path / "seg"), epochs=1, batch_size=6, progress=False, monitor="val_dice", cpu=True)
    run = train_segmenter(SegTrainConfig(data=str(data), model="mk_unet", image_size=32, loop=loop))
    pool = _painted_pool(tmp_path / "pool")
    scores = mask_recovery(run.run_dir, pool)
    assert scores["segmenter"] == str(run.run_dir) and scores["image_size"] == 32 and scores["threshold"] == 0.5
    out = tmp_path / "scores.json"
    import laworder.experiments.mask_recovery as recovery

    calls = {"load_segmenter": 0, "read_mask": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    import laworder.data.io
    import laworder.seg.loading

    for name, source in (("load_segmenter", laworder.seg.loading), ("read_mask", laworder.data.io)):
        wrapper = counted(name, getattr(source, name))
        monkeypatch.setattr(source, name, wrapper)  # what function-level imports (the CLI's) see
        monkeypatch.setattr(recovery, name, wrapper)
    assert cli(["exp", "mask-recovery", str(run.run_dir), str(pool), "--out", str(out),
                "--filter-min-dice", "0.0", "--filter-out", str(tmp_path / "filtered")]) == 0
    assert json.loads(out.read_text())["count"] == 6
    # the CLI checks everything before scoring, without loading the segmenter or reading the pool twice
    assert calls == {"load_segmenter": 1, "read_mask": 6}
    assert "kept 6 of 6" in capsys.readouterr().out
    broken = pool / "masks" / "s5.png"
    broken.write_bytes(broken.read_bytes()[:40])
    assert cli(["exp", "mask-recovery", str(run.run_dir), str(pool), "--out", str(out), "--overwrite"]) == 2
    assert "--skip-unreadable" in capsys.readouterr().err
    assert cli(["exp", "mask-recovery", str(run.run_dir), str(pool), "--out", str(out), "--overwrite",
                "--skip-unreadable"]) == 0
    assert "skipped 1 unreadable pair(s): s5" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["count"] == 5 and list(written["skipped"]) == ["s5"]
    assert cli(["exp", "mask-recovery", str(run.run_dir), str(data)]) == 2  # no manifest

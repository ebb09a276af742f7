"""bench/synth_generators.py: the plan measures what issue 25 item 2 asks (standard sampler, mask
guidance 1 and 3, every test mask), and its scores (headroom, MS-SSIM at 64², FID/KID on cached
features) compute what they say (synthetic inputs; no data, no weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gen(load_bench):
    return load_bench("synth_generators")


def test_the_plan_measures_the_standard_sampler_on_every_test_mask(gen):
    plan = gen.PLAN
    assert set(plan["generators"]) == {"law", "uniform", "law_long", "uniform_long", "law_unshuffle"}
    assert plan["resolution"] == 64
    # a continued generator is its chain's last length, and the chain covers both objectives
    for name in ("law_long", "uniform_long"):
        spec = plan["generators"][name]
        assert spec["continues"] in plan["longer"]["generators"] and spec["max_steps"] == plan["longer"]["steps"][-1]
    assert plan["test_subsets"] == ["Kvasir", "CVC-ClinicDB"]
    assert plan["sampling"]["steps"] == 50 and plan["sampling"]["cfg"] == 10.0
    assert sorted(m for m, _ in plan["sampling"]["pools"]) == [1.0, 3.0]
    assert plan["sampling"]["diversity"]["seed"] != 0  # a second seed of the same masks
    names = [name for name, _ in gen.Bench(plan, Path("unused")).pieces()]
    assert names[:3] == ["vae", "judge", "base"]
    # the latent-resolution hint arm: law_long's recipe and length, only the hint encoder changed
    unshuffle = plan["generators"]["law_unshuffle"]
    assert unshuffle["objective"] == "law" and unshuffle["max_steps"] == plan["generators"]["law_long"]["max_steps"]
    assert unshuffle["set"] == ["backbone_kwargs.hint_input=unshuffle"]
    for g in ("law", "uniform", "law_unshuffle"):
        assert names.index(f"controlnet_{g}") < names.index(gen.pool_name(g, 1.0, 0)) < names.index(f"quality_{g}")
        assert names.index(f"diversity_pool_{g}") < names.index(f"quality_{g}")


def test_recovery_summary_reports_headroom_against_the_judge(gen):
    rows = {"A": [{"dice": 0.6, "chance_dice": 0.2, "iou": 0.5, "boundary_f": 0.4}],
            "B": [{"dice": 0.4, "chance_dice": 0.2, "iou": 0.3, "boundary_f": 0.2}]}
    summary = gen.recovery_summary(rows, {"real_test": {"pooled_dice": 0.7}})
    assert summary["masks"] == 2 and summary["dice"] == pytest.approx(0.5)
    assert summary["headroom"] == pytest.approx((0.5 - 0.2) / (0.7 - 0.2))
    blind = gen.recovery_summary(rows, {"real_test": {"pooled_dice": 0.1}})  # a judge below chance
    assert "headroom" not in blind and blind["ceiling"] == 0.1


def test_ms_ssim_fits_64_pixel_images(gen):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    other = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    same = gen.ms_ssim_pairs(images, images, gen.PLAN)
    assert same["pairs"] == 3 and same["mean"] == pytest.approx(1.0, abs=1e-4)
    assert gen.ms_ssim_pairs(images, other, gen.PLAN)["mean"] < 0.5


def test_fid_kid_on_features(gen, monkeypatch):
    monkeypatch.setattr(gen, "_EXTRACTOR", [None, "test weights"])
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 8))
    same = gen.fid_kid(real, real)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["weights"] == "test weights"
    shifted = gen.fid_kid(real, real + 3.0)
    assert shifted["fid"] == pytest.approx(8 * 9.0, rel=1e-6) and shifted["kid_mean"] > same["kid_mean"]
    from laworder.errors import DataError

    with pytest.raises(DataError, match="unequal counts"):
        gen.fid_kid(real, real[:20])


def test_continued_generators_come_after_their_chain_and_reuse_its_pool(gen, tmp_path):
    bench = gen.Bench(gen.tiny_plan(), tmp_path)
    names = [name for name, _ in bench.pieces()]
    last = bench.plan["longer"]["steps"][-1]
    assert names.index("controlnet_law_long") > names.index(f"pool_law_{last}_mg1_s0")
    assert names.index("quality_law_long") > names.index("diversity_pool_law_long")
    # the chain's last pool is the same model and command: copied, not resampled
    source = gen.pool_name(f"law_{last}", 1.0, 0)
    (tmp_path / "pools" / source / "procedural" / "images").mkdir(parents=True)
    (tmp_path / "pools" / source / "procedural" / "images" / "a.png").write_bytes(b"png")
    bench.finish(source, {"generator": f"law_{last}", "summary": {"dice": 0.5}})
    record = bench.pool("law_long", 1.0, 0)
    assert record["copied_from"] == source and record["generator"] == "law_long" and record["summary"]["dice"] == 0.5
    assert (tmp_path / "pools" / gen.pool_name("law_long", 1.0, 0) / "procedural" / "images" / "a.png").is_file()


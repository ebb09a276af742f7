"""bench/synth_fair.py: the plan is fixed before the runs, and the analysis turns finished pool
pieces into arm tables, hierarchical-bootstrap CIs and the written decision (synthetic scores)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def fair(load_bench):
    return load_bench("synth_fair")


def test_the_full_plan_follows_the_issue(fair):
    plan = fair.PLAN
    assert set(plan["arms"]) == {"uniform", "ratio_l1", "ratio_l2", "law", "law_no_delta", "adaptive_distillation"}
    assert len(plan["controlnet"]["seeds"]) >= 3 and plan["sampling"]["steps"] == 50
    assert plan["sampling"]["cfg"] == [1.0, 10.0] and len(plan["sampling"]["sample_seeds"]) == 2
    assert plan["test_subsets"] == ["Kvasir", "CVC-ClinicDB"] and plan["stats"]["margin"] == 0.03
    names = [name for name, _ in fair.Bench(plan, Path("unused")).pieces()]
    assert names[:6] == ["vae", "judge_order", "judge_nnunet2d_16", "judge", "vae_check", "base"]
    # what the decision needs first: the decisive arms (all seeds) and their CFG-10 pools, then the rest
    assert names.index("arm_ratio_l1_seed2") < names.index("arm_law_no_delta_seed0")
    assert names.index(fair.pool_name("law", 2, 1, 10.0, 1.0)) < names.index("arm_law_no_delta_seed0")
    assert names.index("arm_adaptive_distillation_seed2") < names.index(fair.pool_name("uniform", 0, 0, 1.0, 1.0))
    pools = [n for n in names if n.startswith("pool_")]
    assert len(pools) == 6 * 3 * 2 * 2 + 6 * 3  # arms × seeds × sample seeds × CFG + the mask-guidance sweep


def test_the_compact_plan_keeps_the_protocol_and_the_decision_rule(fair):
    full, compact = fair.PLAN, fair.COMPACT_PLAN
    for key in ("arms", "test_subsets", "stats", "decision_rule", "data"):
        assert compact[key] == full[key]
    assert compact["controlnet"]["seeds"] == full["controlnet"]["seeds"]
    for key in ("steps", "sample_seeds", "cfg"):
        assert compact["sampling"][key] == full["sampling"][key]
    assert compact["resolution"] == 64 and fair.plan_hash(compact) != fair.plan_hash(full)
    assert full["resolution"] == 128 and "batch_size" not in full["sampling"]  # the full plan.json stays valid


def test_workers_share_groups_through_claims(fair, tmp_path):
    import subprocess

    claims = tmp_path / "claims"
    assert fair.claim(claims, "vae") and fair.claimed_by_live(claims, "vae")
    fair.release(claims, "vae")
    assert not fair.claimed_by_live(claims, "vae") and not (claims / "vae").exists()
    holder = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    (claims / "base").mkdir(parents=True)
    from laworder.runlock import LOCK_FILE

    lock = claims / "base" / LOCK_FILE
    sleeper = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline().strip() == "held"
        assert fair.claimed_by_live(claims, "base") and not fair.claim(claims, "base")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not fair.claimed_by_live(claims, "base") and fair.claim(claims, "base")  # a dead holder's claim is gone
    fair.release(claims, "base")
    plan = fair.tiny_plan(arms=["uniform"])
    groups = fair.Bench(plan, tmp_path).groups()
    seen: set[str] = set()
    for group, needs, items in groups:  # every group needs only earlier groups, so one worker never waits
        assert set(needs) <= seen
        seen.add(group)
    assert [name for name, _, _ in groups][:4] == ["vae", "judge_order", "judge", "base"]


def test_a_changed_plan_is_refused(fair, tmp_path):
    plan = fair.tiny_plan()
    fair.fix_plan(plan, tmp_path, replan=False)
    fair.fix_plan(plan, tmp_path, replan=False)  # the same plan: fine
    changed = dict(plan, resolution=64)
    with pytest.raises(SystemExit, match="another plan"):
        fair.fix_plan(changed, tmp_path, replan=False)
    fair.fix_plan(changed, tmp_path, replan=True)
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["resolution"] == 64


def fake_pool(arm: str, seed: int, cfg: float, shift: float, rng) -> dict:
    rows = []
    for index in range(40):
        ratio = [0.02, 0.1, 0.3][index % 3]
        dice = float(np.clip(0.4 + 0.2 * (index % 5) / 5 + shift + rng.normal(0, 0.02), 0, 1))
        rows.append({"stem": f"m{index}", "dice": dice, "iou": dice / (2 - dice), "boundary_f": dice * 0.8,
                     "lesion_ratio": ratio, "size_bin": {0.02: "small", 0.1: "medium", 0.3: "large"}[ratio],
                     "chance_dice": 0.1})
    return {"arm": arm, "seed": seed, "sample_seed": 0, "cfg": cfg, "mask_guidance": 1.0, "per_image": {"procedural": rows}}


def test_the_analysis_reports_cis_and_applies_the_decision_rule(fair, tmp_path):
    plan = fair.tiny_plan()
    plan["arms"] = {k: fair.ARMS[k] for k in ("uniform", "ratio_l2", "law")}
    plan["stats"]["comparisons"] = [["law", "uniform"], ["law", "ratio_l2"]]
    plan["stats"]["decisive"] = [["law", "uniform"], ["law", "ratio_l2"]]
    bench = fair.Bench(plan, tmp_path)
    rng = np.random.default_rng(0)
    bench.finish("judge", {"model": "order", "run": "x", "ceiling": {"pooled_dice": 0.8, "images": 40}})
    shifts = {"uniform": 0.0, "ratio_l2": 0.1, "law": 0.1}  # LAW beats uniform by 0.1, ties ratio
    for arm, shift in shifts.items():
        for seed in plan["controlnet"]["seeds"]:
            for cfg in plan["sampling"]["cfg"]:
                bench.finish(fair.pool_name(arm, seed, 0, cfg, 1.0), fake_pool(arm, seed, cfg, shift, rng))
    results = fair.score_table(bench)
    law = next(r for r in results["table"] if r["arm"] == "law" and r["cfg"] == 10.0)
    assert law["masks"] == 40 and law["training_seeds"] == [0, 1]
    assert law["headroom"] == pytest.approx((law["dice"] - 0.1) / (0.8 - 0.1))
    assert set(law["dice_by_size"]) == {"small", "medium", "large"}
    decisions = {(c["comparator"], c["cfg"]): c for c in results["comparisons"]}
    against_uniform = decisions[("uniform", 10.0)]
    assert against_uniform["ci"]["low"] > 0.05 and against_uniform["decision"]["verdict"] == "wins"
    assert decisions[("ratio_l2", 10.0)]["decision"]["verdict"] == "refuted (no gain of +margin)"
    assert decisions[("uniform", 1.0)]["decision"] is None  # CFG 1 is secondary
    assert "only 2 training seed(s)" in against_uniform["seeds_note"]
    text = fair.markdown(dict(results, command="test", decision_rule="rule", pieces_done=[]))
    assert "| law − uniform | 10 |" in text and "wins" in text


def test_the_regime_diagnostic_tells_shared_mask_difficulty_from_sampling_noise(fair):
    """Arms that make the same per-mask Dice (mask difficulty shared, independent sampling noise)
    correlate far above two sample seeds of one ControlNet; the training-seed std is the spread
    of per-seed means."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.1, 0.9, 60)

    def seeds(offsets: list[float], shared: float) -> dict:
        return {seed: {f"s/m{i}": [{"dice": shared * difficulty[i] + offset + rng.normal(0, 0.1)} for _ in range(2)]
                       for i in range(60)} for seed, offset in enumerate(offsets)}

    same = fair.regime({"law": seeds([0.0, 0.02], 1.0), "uniform": seeds([0.0, 0.02], 1.0)}, [("law", "uniform")])
    assert same["masks"] == 60 and same["arm_r"]["law vs uniform"] > 0.9
    assert same["sample_seed_r"] > 0.8 and same["training_seed_r"] > 0.9
    assert same["training_seed_sd"] == pytest.approx(0.014, abs=0.01)
    noise = fair.regime({"law": seeds([0.0, 0.0], 0.0), "uniform": seeds([0.0, 0.0], 0.0)}, [("law", "uniform")])
    assert abs(noise["sample_seed_r"]) < 0.35 and abs(noise["arm_r"]["law vs uniform"]) < 0.35
    assert "Can the objectives differ here?" in fair.markdown({"command": "c", "decision_rule": "r", "table": [],
                                                               "comparisons": [], "pieces_done": [], "regime": same})


def test_the_tiny_protocol_runs_end_to_end_and_resumes(fair, tmp_path):
    plan = fair.tiny_plan(arms=["uniform", "law"])
    plan["sampling"]["cfg"] = [10.0]
    bench = fair.Bench(plan, tmp_path)
    assert fair.run_pieces(bench, until="base") == ["vae", "judge_order", "judge", "vae_check", "base"]
    ran = fair.run_pieces(bench)
    assert ran[0] == "arm_uniform_seed0" and len(ran) == len(bench.pieces()) - 5
    assert bench.done("vae_check")["result"] and bench.done("judge")["ceiling"]["images"] == 6
    law = bench.done("arm_law_seed0")
    assert law["probe"] and {"probe_gap_lesion", "probe_gap_background"} <= set(law["probe"][0])
    pool = bench.done(fair.pool_name("law", 1, 0, 10.0, 1.0))
    assert len(pool["per_image"]["procedural"]) == 6 and "boundary_f" in pool["per_image"]["procedural"][0]
    sweep = bench.done(fair.pool_name("uniform", 0, 0, 10.0, 2.0))
    assert sweep["mask_guidance"] == 2.0
    results = fair.analyse(bench, "test")
    assert [c["comparator"] for c in results["comparisons"]] == ["uniform"]
    assert results["comparisons"][0]["decision"]["verdict"]
    assert results["law_analysis"]["delta_other_image"]["mean_abs_difference"] >= 0
    for name in ("results.json", "results.md", "probe.png", "law_analysis.png"):
        assert (tmp_path / name).is_file()
    assert fair.run_pieces(bench) == []  # finished pieces are never redone


# --- the amended plan (issue 26 item 1) -------------------------------------------------------------
def test_the_amended_plan_is_the_issues_pre_registration(fair):
    plan = fair.AMENDED_PLAN
    assert fair.PLANS["amended"] is plan and plan["resolution"] == 64
    assert plan["reuse"]["root"] == "bench/results/synth_generators"
    assert plan["reuse"]["runs"] == {"vae": "runs/vae", "base": "runs/base", "judge": "runs/judge_nnunet2d_16"}
    assert set(plan["arms"]) == {"uniform", "ratio_l1", "ratio_l2", "law", "law_area"}
    assert plan["arms"]["law_area"]["objective_kwargs"] == {"latent_mask": "area"}
    net = plan["controlnet"]
    assert net["seeds"] == [0, 1, 2] and net["max_steps"] == 4 * fair.COMPACT_PLAN["controlnet"]["max_steps"]
    assert (net["batch_size"], net["lr"]) == (16, 3e-4)
    assert {"loop.ema_decay=0.999", "loop.snapshot_every=600", "loop.checkpoint_every=100", "probe_every=500",
            "probe_count=16", "unet_trainable=all"} == set(net["set"])
    sampling, stats = plan["sampling"], plan["stats"]
    assert sampling["cfg"] == [10.0] and sampling["mask_guidance"] == [1.0, 3.0] and sampling["sample_seeds"] == [0, 1]
    assert stats["margin_fraction_of_headroom"] == 0.05 and "margin" not in stats and stats["replicates"] == 10000
    assert stats["decisive"] == [["law", "uniform"], ["law", "ratio_l2"], ["law", "ratio_l1"]]
    assert plan["decision_rule"] == fair.AMENDED_DECISION_RULE != fair.DECISION_RULE
    assert fair.COMPACT_PLAN["stats"]["margin"] == 0.03  # the compact plan keeps its rule
    names = [name for name, _ in fair.Bench(plan, Path("unused")).pieces()]
    assert names[:4] == ["vae", "judge", "vae_check", "base"]
    pools = [n for n in names if n.startswith("pool_")]
    assert len(pools) == 5 * 3 * 2 * 2  # arms × training seeds × sample seeds × mask guidance 1 and 3
    decisive_last = max(names.index(f"arm_{a}_seed2") for a in ("uniform", "ratio_l1", "ratio_l2", "law"))
    assert names.index(fair.pool_name("law", 2, 1, 10.0, 1.0)) < names.index("arm_law_area_seed0")
    assert decisive_last < names.index("arm_law_area_seed0")
    # mask guidance 1 right after each ControlNet, in its group; mask guidance 3 in a secondary group
    assert names.index(fair.pool_name("uniform", 0, 1, 10.0, 1.0)) == names.index("arm_uniform_seed0") + 2
    assert names.index(fair.pool_name("uniform", 0, 0, 10.0, 3.0)) > names.index("arm_law_area_seed2")
    assert fair.Bench(plan, Path("unused")).run_path("base") == fair.ROOT / "bench/results/synth_generators/runs/base"


def test_amended2_is_the_amended_plan_training_its_own_vae_base_and_judge(fair):
    plan, amended, compact = fair.PLANS["amended2"], fair.AMENDED_PLAN, fair.COMPACT_PLAN
    assert "reuse" not in plan and plan["name"] == "amended2"
    assert {k: plan[k] for k in ("vae", "judge", "base")} == {k: compact[k] for k in ("vae", "judge", "base")}
    same = set(amended) - {"reuse", "name", "decision_rule"}
    assert {k: plan[k] for k in same} == {k: amended[k] for k in same}  # ControlNets, pools, stats unchanged
    assert "adopted" not in plan["decision_rule"] and "the plan's judge" in plan["decision_rule"]
    assert plan["decision_rule"].split("(10,000")[1] == amended["decision_rule"].split("(10,000")[1].replace(
        "ceiling = the adopted judge's", "ceiling = the judge's")
    names = [name for name, _ in fair.Bench(plan, Path("unused")).pieces()]
    assert names[:6] == ["vae", "judge_order", "judge_nnunet2d_16", "judge", "vae_check", "base"]
    assert fair.Bench(plan, Path("out")).run_path("base") == Path("out") / "runs" / "base"


def test_the_margin_is_a_fraction_of_the_headroom(fair, tmp_path):
    plan = fair.tiny_plan()
    plan["stats"].pop("margin")
    plan["stats"].update(margin_fraction_of_headroom=0.05, margin_chance_arm="uniform", primary_mask_guidance=1.0)
    plan["arms"] = {k: fair.ARMS[k] for k in ("uniform", "law")}
    plan["stats"]["comparisons"] = plan["stats"]["decisive"] = [["law", "uniform"]]
    plan["sampling"]["cfg"] = [10.0]
    bench = fair.Bench(plan, tmp_path)
    rng = np.random.default_rng(0)
    bench.finish("judge", {"model": "order", "run": "x", "ceiling": {"pooled_dice": 0.8, "images": 40}})
    for seed in plan["controlnet"]["seeds"]:
        bench.finish(fair.pool_name("law", seed, 0, 10.0, 1.0), fake_pool("law", seed, 10.0, 0.03, rng))
    results = fair.score_table(bench)
    assert results["margin"]["absolute"] is None and results["comparisons"] == []  # no uniform pools yet
    for seed in plan["controlnet"]["seeds"]:
        bench.finish(fair.pool_name("uniform", seed, 0, 10.0, 1.0), fake_pool("uniform", seed, 10.0, 0.0, rng))
    results = fair.score_table(bench)
    margin = results["margin"]
    assert margin["chance"] == pytest.approx(0.1) and margin["absolute"] == pytest.approx(0.05 * (0.8 - 0.1))
    (comparison,) = results["comparisons"]
    assert comparison["decision"]["margin"] == pytest.approx(0.035)
    from laworder.metrics.bootstrap import BootstrapCI, decide

    ci = BootstrapCI(**{k: comparison["ci"][k] for k in ("difference", "low", "high", "level", "replicates", "seeds", "masks")})
    assert comparison["decision"] == decide(ci, 0.05 * (0.8 - 0.1))
    text = fair.markdown(dict(results, command="test", decision_rule="rule", pieces_done=[]))
    assert "Refutation margin: 0.05 x (ceiling - chance of the uniform arm at CFG 10, mask guidance 1) = +0.0350" in text


def test_the_amended_protocol_adopts_pins_and_runs(fair, tmp_path):
    source = tmp_path / "source"
    tiny = fair.tiny_plan(arms=["uniform"])
    tiny["judge"]["candidates"] = {"order": tiny["judge"]["candidates"]["order"]}
    fair.run_pieces(fair.Bench(tiny, source), until="base")
    plan = fair.tiny_amended_plan(source, arms=["uniform", "law_area"])
    bench = fair.Bench(plan, tmp_path / "amended")
    assert bench.run_path("vae") == source / "runs" / "vae" and bench.run_path("judge") == source / "runs" / "judge_order"
    ran = fair.run_pieces(bench)
    assert ran[:4] == ["vae", "judge", "vae_check", "base"] and not (tmp_path / "amended" / "runs" / "vae").exists()
    judge = bench.done("judge")
    assert judge["adopted"] and judge["ceiling"] == fair.Bench(tiny, source).done("judge")["ceiling"]
    assert judge["run"] == str(source / "runs" / "judge_order") and judge["model"] == "order"
    assert set(bench.done("base")["weights_sha256"]) >= {"model/last/unet.safetensors"}
    law = bench.done("arm_law_area_seed0")
    assert "--base " + str(source / "runs" / "base") in law["command"] and "latent_mask=" in law["command"]
    assert 0.0 <= law["clamp_share"]["w_at_max_lesion"] <= 1.0 and law["clamp_share"]["w_clamped_fraction"] is not None
    results = fair.score_table(bench)
    assert results["margin"]["absolute"] == pytest.approx(
        0.05 * (judge["ceiling"]["pooled_dice"] - results["margin"]["chance"]))
    assert list(results["clamp_share"]) == ["law_area seed0"]
    assert {(row["arm"], row["mask_guidance"]) for row in results["table"]} == {
        (arm, guidance) for arm in ("uniform", "law_area") for guidance in (1.0, 3.0)}
    fair.analyse(bench, "test")
    text = (tmp_path / "amended" / "results.md").read_text()
    assert "Refutation margin: 0.05 x (ceiling - chance" in text and "| law_area seed0 | " in text
    # a pinned weights file that changed stops the next run before any piece
    weights = source / "runs" / "base" / "model" / "last" / "unet.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(SystemExit, match="adopted base run .* changed since pieces/base.json pinned it"):
        bench.check_adopted()

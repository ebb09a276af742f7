"""bench/table4_fair.py (issue 26 item 2): the plan, step matching, nested doses, the decision from
synthetic scores, and the whole protocol on procedural data with tiny generators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def t4(load_bench):
    return load_bench("table4_fair")


def test_plan_follows_the_issue(t4):
    plan = t4.PLAN
    assert plan["generators"] == {"uniform": "polyps/uniform", "law": "polyps/law"}
    assert plan["train_split"] == "train" and plan["resolution"] == 64 and plan["seg"]["image_size"] == 64
    assert plan["sampling"] | {} == {**plan["sampling"], "steps": 50, "cfg": 10.0, "mask_guidance": 1.0}
    assert plan["doses"] == [0.5, 1.0, 2.0] and len(plan["seg"]["seeds"]) >= 3 and plan["seg"]["model"] == "order"
    assert plan["seg"]["optimizer"] == "ademamix" and plan["seg"]["scheduler"] == "cosine"
    assert plan["test_subsets"] == ["Kvasir", "CVC-ClinicDB"] and plan["filter"]["min_dice"] == 0.5
    names = {row["name"] for row in t4.rows(plan)}
    expected = {"real_epochs"} | {f"real_{d}" for d in ("0.5x", "1x", "2x")} | {
        f"{g}_{d}{f}" for g in ("uniform", "law") for d in ("0.5x", "1x", "2x") for f in ("", "_filtered")}
    assert names == expected
    stats = plan["stats"]
    assert stats["decisive"] == [["law_1x", "real_1x"], ["law_1x", "uniform_1x"]]
    assert math.isclose(stats["paper_gain"], 0.741 - 0.717) and math.isclose(stats["margin"], stats["paper_gain"] / 2)
    assert "+0.012" in plan["decision_rule"] and "dose 1x, no filter" in plan["decision_rule"]
    assert "real_epochs" in t4.PAPER and "71.7" in t4.PAPER["real_epochs"] and "74.1" in t4.PAPER["law_1x"]
    judge = plan["filter"]["judge"]["train"]  # synth_generators' judge recipe, trained by the plan
    assert (judge["model"], judge["epochs"], judge["lr"]) == ("nnunet2d", 12, 1e-3)
    assert {"model_kwargs.base_filters=16", "model_kwargs.max_filters=256"} <= set(judge["set"])


def test_primary_pieces_come_first_and_pools_use_training_masks_only(t4, tmp_path):
    bench = t4.Bench(t4.PLAN, tmp_path)
    names = [name for name, _ in bench.pieces()]
    assert names[:2] == ["pool_uniform_plain", "pool_law_plain"]
    seg = [n for n in names if n.startswith("seg_")]
    primary = {f"seg_{row}_seed{s}" for row in ("law_1x", "real_1x", "uniform_1x") for s in t4.PLAN["seg"]["seeds"]}
    assert set(seg[:len(primary)]) == primary
    assert names.index("pool_law_aug") > max(names.index(n) for n in primary)
    assert len(seg) == len(t4.rows(t4.PLAN)) * len(t4.PLAN["seg"]["seeds"])
    calls = []

    def fake(*args):
        calls.append(args)
        folder = tmp_path / args[5]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps({"count": 3}))
        return "laworder " + " ".join(args), 1.0

    bench.laworder = fake
    bench.pool("law", "plain")
    bench.pool("law", "aug")
    for args in calls:
        assert args[args.index("--split") + 1] == "train" and "--resume" in args and args[2:4] == ("--pretrained", "polyps/law")
    assert "--mask-augment" in calls[1] and "--mask-augment" not in calls[0]


def test_step_matching_rule(t4):
    assert t4.matched_steps(100, 1140, 1267, 16) == 100 * math.ceil(2407 / 16)
    assert t4.matched_steps(100, 1140, 0, 16) == 100 * 72  # the real-only 'epochs' control
    assert t4.matched_steps(3, 10, 5, 4) == 12
    assert "max_steps" in t4.STEP_RULE and "filtered row" in t4.STEP_RULE


def test_doses_are_nested_and_one_x_is_the_plain_pool(t4):
    plain = [f"m{i:03d}" for i in range(40)]
    augmented = [f"{s}_aug0" for s in plain]
    masks = len(plain)
    drawn = {dose: t4.dose_stems(plain, augmented, t4.dose_count(dose, masks), seed=0) for dose in (0.5, 1.0, 2.0)}
    half, one, two = (drawn[d][0] + drawn[d][1] for d in (0.5, 1.0, 2.0))
    assert len(half) == 20 and len(one) == 40 and len(two) == 80
    assert one[:20] == half and two[:40] == one
    assert set(drawn[1.0][0]) == set(plain) and not drawn[1.0][1] and set(drawn[2.0][1]) == set(augmented)
    assert t4.dose_stems(plain, augmented, 20, seed=1)[0] != drawn[0.5][0]  # the seed fixes the draw
    assert t4.dose_stems(plain[::-1], augmented, 20, seed=0)[0] == drawn[0.5][0]  # not the listing order
    with pytest.raises(ValueError, match="larger than the pools"):
        t4.dose_stems(plain, augmented, 81, seed=0)


def _records(t4, plan, effects: dict[str, float], seeds=(0, 1, 2), images: int = 30) -> list[dict]:
    """Per-image test Dice for every row: a shared image difficulty + the row's effect + seed noise."""
    rng = np.random.default_rng(0)
    base = {s: rng.uniform(0.4, 0.8, images) for s in plan["test_subsets"]}
    records = []
    for row in t4.rows(plan):
        for seed in seeds:
            per_image, subsets = {}, {}
            for subset in plan["test_subsets"]:
                dice = np.clip(base[subset] + effects.get(row["name"], 0.0) + rng.normal(0, 0.002, images), 0, 1)
                per_image[subset] = [{"stem": f"i{k}", "dice": float(v), "iou": float(v) / 1.5} for k, v in enumerate(dice)]
                subsets[subset] = {"dice": float(dice.mean()), "iou": float(dice.mean()) / 1.5}
            mean = {m: float(np.mean([subsets[s][m] for s in subsets])) for m in ("dice", "iou")}
            records.append({"row": row["name"], "seed": seed, "mean": mean, "subsets": subsets, "per_image": per_image,
                            "synthetic": 10, "steps": 100})
    return records


@pytest.mark.parametrize("law, verdicts", [
    (0.05, ["wins", "wins"]),
    (-0.05, ["loses", "loses"]),
    (0.0, ["refuted (no gain of +margin)", "refuted (no gain of +margin)"]),
])
def test_decisions_from_synthetic_scores(t4, law, verdicts):
    plan = {**t4.PLAN, "stats": {**t4.PLAN["stats"], "replicates": 500}}
    records = _records(t4, plan, {"law_1x": law, "uniform_1x": 0.0})
    table, arrays = t4.summarise(records, plan)
    result = t4.compare(plan, arrays)
    decisive = [c for c in result if c["decisive"]]
    assert [(c["arm"], c["comparator"]) for c in decisive] == [("law_1x", "real_1x"), ("law_1x", "uniform_1x")]
    assert [c["verdict"] for c in decisive] == verdicts
    post_hoc = [(c["arm"], c["comparator"]) for c in result if c["verdict"] == t4.POST_HOC]
    assert post_hoc == t4.post_hoc_comparisons(plan) and ("law_1x", "real_epochs") in post_hoc
    assert all(c["verdict"] == "secondary" for c in result
               if not c["decisive"] and (c["arm"], c["comparator"]) not in post_hoc)
    assert all(not c["decisive"] for c in result if (c["arm"], c["comparator"]) in post_hoc)
    row = next(r for r in table if r["name"] == "law_1x")
    assert row["paper"].startswith("74.1") and row["dice"]["mean"] == pytest.approx(np.mean(
        [r["mean"]["dice"] for r in records if r["row"] == "law_1x"]))
    md = t4.markdown({"command": "x", "plan_sha256_16": "0", "pieces_done": [], "pieces_total": 1, "table": table,
                      "comparisons": result, "step_matching": plan["step_matching"], "decision_rule": plan["decision_rule"],
                      "filter_scores": {}, "pools": {}, "judge": None}, plan)
    assert "law_1x − real_1x (primary)" in md and "74.1 ± 0.8" in md


def test_too_few_seeds_leave_the_decision_pending(t4):
    plan = {**t4.PLAN, "stats": {**t4.PLAN["stats"], "replicates": 200}}
    _, arrays = t4.summarise(_records(t4, plan, {"law_1x": 0.05}, seeds=(0, 1)), plan)
    decisive = [c for c in t4.compare(plan, arrays) if c["decisive"]]
    assert all(c["verdict"].startswith("pending") for c in decisive)


def test_plan_action_writes_only_plan_json_and_pins_the_generators(t4, tmp_path):
    out = tmp_path / "t4"
    assert t4.main(["plan", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]
    fixed = json.loads((out / "plan.json").read_text())
    pins = fixed["pinned"]["generators"]
    assert set(pins) == {"uniform", "law"} and all(len(v["controlnet"]) == 64 for v in pins.values())
    t4.Bench(t4.PLAN, out).check_pins()  # unchanged weights pass
    pins["law"]["controlnet"] = "0" * 64
    (out / "plan.json").write_text(json.dumps(fixed))
    with pytest.raises(SystemExit, match="generator weights changed"):
        t4.Bench(t4.PLAN, out).check_pins()
    changed = {**t4.PLAN, "doses": [1.0]}
    with pytest.raises(SystemExit, match="holds another plan"):
        t4.write_plan(changed, out)


def test_tiny_end_to_end(t4, tmp_path, monkeypatch):
    """A tiny LAW generator, its pools (plain + mask-augmented), the judge filter, ORDER runs with
    matched steps, the analysis; dose 1.5x takes the whole plain pool and part of the augmented one."""
    out = tmp_path / "tiny"
    plan = t4.tiny_plan(doses=[1.5], seeds=[0], generators=["law"], data="procedural:16:32:0:4")
    plan["filter"]["min_dice"] = 0.05  # the one-epoch judge: drops some pairs, keeps some
    monkeypatch.setenv("LAWORDER_PRETRAINED_DIR", str(out / "weights"))
    results = t4.run(plan, out, "pytest")
    bench = t4.Bench(plan, out)
    assert all(bench.finished(name) for name, _ in bench.pieces())
    assert bench.done("pool_law_plain")["count"] == 16 and bench.done("pool_law_aug")["count"] == 16
    assert bench.done("pool_law_plain")["split"] == "train"
    seg = {r["row"]: r for r in (bench.done(n) for n, _ in bench.pieces() if n.startswith("seg_"))}
    assert set(seg) == {"real_epochs", "real_1.5x", "law_1.5x", "law_1.5x_filtered"}
    n_real = seg["real_1.5x"]["n_real"]
    assert seg["real_1.5x"]["steps"] == t4.matched_steps(1, n_real, 24, 8) == seg["law_1.5x"]["steps"]
    assert seg["law_1.5x_filtered"]["steps"] == seg["law_1.5x"]["steps"] > seg["real_epochs"]["steps"]
    assert seg["law_1.5x"]["synthetic"] == 24 and seg["real_1.5x"]["synthetic"] == 0
    scores = bench.done("scores_law")["dice"]
    plain, aug = t4.dose_stems(list(scores["plain"]), list(scores["aug"]), 24, plan["dose_seed"])
    kept = sum(scores["plain"][s] >= 0.05 for s in plain) + sum(scores["aug"][s] >= 0.05 for s in aug)
    assert seg["law_1.5x_filtered"]["synthetic"] == kept
    run = json.loads((out / "runs" / "law_1.5x" / "seed0" / "data.json").read_text())
    assert run["num_extra"] == 24 and run["num_train"] == n_real
    decisive = [c for c in results["comparisons"] if c["decisive"]]
    assert [(c["arm"], c["comparator"]) for c in decisive] == [("law_1.5x", "real_1.5x")] and decisive[0]["ci"]
    md = (out / "results.md").read_text()
    assert "Real + law 1.5x" in md and "Step matching" in md and "law_1.5x − real_1.5x (primary)" in md
    assert 0 <= bench.done("judge")["real_test"]["pooled_dice"] <= 1 and "real-test Dice" in md
    # a second run does nothing and gives the same table
    assert t4.run(plan, out, "pytest")["table"] == results["table"]
    # adopting a judge whose real-test Dice is not the one its piece records (same folder, other weights)
    piece = tmp_path / "judge_piece.json"
    piece.write_text(json.dumps({"model": "order", "real_test": {"pooled_dice": 0.999}}))
    adopting = {**plan, "filter": {**plan["filter"], "judge": {"adopt": {"root": str(out), "run": "runs/judge",
                                                                       "piece": str(piece)}, "what": "x"}}}
    with pytest.raises(SystemExit, match="not the same run"):
        t4.Bench(adopting, tmp_path / "adopting").judge()
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]

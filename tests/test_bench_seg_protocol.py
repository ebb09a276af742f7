"""bench/seg_protocol.py's comparison table: decision rule on fake finished runs (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def protocol(load_bench):
    return load_bench("seg_protocol")


def fake_run(protocol, out: Path, model: str, seed: int, scores: dict[str, list[float]]) -> dict:
    """A finished cell whose eval.json holds ``scores`` (subset -> per-image Dice)."""
    folder = protocol.run_dir(out, "polyps", model, seed)
    folder.mkdir(parents=True)
    per_image = {subset: [{"stem": f"img{i}", "dice": d, "iou": d / (2 - d)} for i, d in enumerate(values)]
                 for subset, values in scores.items()}
    means = {subset: float(np.mean(values)) for subset, values in scores.items()}
    mean = {"dice": float(np.mean(list(means.values()))), "iou": 0.0}
    (folder / "eval.json").write_text(json.dumps({"per_image": per_image, "mean": mean}))
    return {"dataset": "polyps", "model": model, "seed": seed, "state": "finished", "mean": mean}


def subsets(rng, shift: float = 0.0) -> dict[str, list[float]]:
    """Image difficulty shared by every run (fixed draw) plus a little per-run noise from ``rng``."""
    base = np.random.default_rng(99)
    return {"Kvasir": list(base.uniform(0.3, 0.8, 30) + shift + rng.normal(0, 0.01, 30)),
            "CVC-ClinicDB": list(base.uniform(0.2, 0.7, 12) + shift + rng.normal(0, 0.01, 12))}


def test_a_clear_gain_over_three_seeds_wins_and_pairs_seed_by_seed(protocol, tmp_path):
    cells = []
    for seed in range(3):
        cells.append(fake_run(protocol, tmp_path, "mk_unet", seed, subsets(np.random.default_rng(seed))))
        cells.append(fake_run(protocol, tmp_path, "order", seed, subsets(np.random.default_rng(seed), shift=0.1)))
    item = protocol.compare(tmp_path, cells, "polyps", "mk_unet")
    assert item["verdict"] == "wins" and item["images"] == 42
    assert item["ci"]["low"] > 0.05 and item["ci"]["difference"] == pytest.approx(0.1, abs=0.01)
    assert [p["seed"] for p in item["paired"]] == [0, 1, 2]
    assert all(p["diff_dice"] == pytest.approx(0.1, abs=0.01) for p in item["paired"])
    assert "| ORDER − MK-UNet | 3 / 3 |" in protocol.format_comparison(item)


def test_no_gain_is_refuted_and_too_few_seeds_stay_pending(protocol, tmp_path):
    cells = [fake_run(protocol, tmp_path, model, seed, subsets(np.random.default_rng(seed)))
             for seed in range(3) for model in ("order", "mk_unet")]
    assert protocol.compare(tmp_path, cells, "polyps", "mk_unet")["verdict"].startswith("refuted")
    few = [c for c in cells if not (c["model"] == "mk_unet" and c["seed"] > 0)]
    assert protocol.compare(tmp_path, few, "polyps", "mk_unet")["verdict"].startswith("pending")
    assert protocol.compare(tmp_path, cells, "polyps", "order_se") is None  # no comparator run at all


def test_the_margin_is_half_the_papers_gain_over_each_comparator(protocol, tmp_path):
    # ORDER +2 points over both comparators: clear of 0, and of SE-skip's margin (half the paper's
    # +1.0) but not of MK-UNet's (half of +6.0)
    cells = []
    for seed in range(3):
        for model in ("mk_unet", "order_se"):
            cells.append(fake_run(protocol, tmp_path, model, seed, subsets(np.random.default_rng(seed))))
        cells.append(fake_run(protocol, tmp_path, "order", seed, subsets(np.random.default_rng(seed), shift=0.02)))
    over_mk_unet = protocol.compare(tmp_path, cells, "polyps", "mk_unet")
    over_se = protocol.compare(tmp_path, cells, "polyps", "order_se")
    assert over_mk_unet["margin"] == pytest.approx(0.03) and over_se["margin"] == pytest.approx(0.005)
    assert over_mk_unet["verdict"] == "wins (small: below the margin)" and over_se["verdict"] == "wins"
    assert "| +1.0 | wins |" in protocol.format_comparison(over_se)
    assert protocol.margin("brisc", "mk_unet") == pytest.approx(0.01)
    with pytest.raises(KeyError, match="PAPER_GAIN"):
        protocol.margin("brisc", "order_se")


def test_runs_scored_on_different_test_images_are_refused(protocol, tmp_path):
    rng = np.random.default_rng(0)
    cells = [fake_run(protocol, tmp_path, "order", 0, subsets(rng)),
             fake_run(protocol, tmp_path, "mk_unet", 0, {"Kvasir": [0.5] * 29, "CVC-ClinicDB": [0.5] * 12})]
    with pytest.raises(RuntimeError, match="different test images"):
        protocol.compare(tmp_path, cells, "polyps", "mk_unet")


def test_a_run_another_process_is_training_is_refused_before_anything_is_written(protocol, tmp_path):
    import argparse
    import subprocess
    import time

    from laworder.errors import RunLockedError

    folder = protocol.run_dir(tmp_path, "polyps", "order", 0)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from laworder.runlock import run_lock\n"
                               f"with run_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from laworder.runlock import is_locked

        assert is_locked(folder)
        args = argparse.Namespace(out=str(tmp_path), epochs=1, batch_size=2, lr=1e-4, max_steps=1, resume=True,
                                  image_size=32, threads=1, head_init="nonnegative", models=["order"], seeds=[0], datasets=["polyps"])
        started = time.time()
        with pytest.raises(RunLockedError, match="locked by pid"):
            protocol.train_and_score(args, "polyps", "order", 0)
        assert time.time() - started < 30
        assert sorted(p.name for p in folder.iterdir()) == [".laworder.lock"]  # no provenance, no checkpoints
    finally:
        holder.kill()
        holder.wait()


def test_a_grid_keeps_the_head_init_it_was_started_with(protocol, tmp_path):
    import argparse

    args = argparse.Namespace(out=str(tmp_path / "grid"), head_init=None, datasets=["polyps"], models=["order"], seeds=[0])
    assert protocol.grid_head_init(args) == "nonnegative"  # the models' default for a new grid
    args.head_init = "balanced"
    protocol.record_grid(args, protocol.grid_head_init(args))
    assert protocol.grid_head_init(argparse.Namespace(out=args.out, head_init=None)) == "balanced"
    with pytest.raises(SystemExit, match="grid of head_init=balanced runs"):
        protocol.grid_head_init(argparse.Namespace(out=args.out, head_init="nonnegative"))


def test_files_carry_each_run_and_only_the_latest_checkpoint_of_unfinished_ones(protocol, tmp_path):
    out = tmp_path / "grid"

    def run(model: str, steps: list[int], finished: bool) -> Path:
        folder = protocol.run_dir(out, "polyps", model, 0)
        for step in steps:
            checkpoint = folder / "checkpoints" / f"step_{step:08d}"
            checkpoint.mkdir(parents=True)
            for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
                (checkpoint / name).write_text("x")
        for which in ("best", "last") if finished else ("best",):
            (folder / "model" / which).mkdir(parents=True)
            (folder / "model" / which / "model.safetensors").write_text("w")
        (folder / "config.yaml").write_text("model: x\n")
        (folder / "metrics.jsonl").write_text("{}\n")
        if finished:
            (folder / "run.json").write_text(json.dumps({"global_step": 20, "total_steps": 20}))
            (folder / "eval.json").write_text("{}")
        return folder

    done, partial = run("order", [10, 20], finished=True), run("mk_unet", [10, 20], finished=False)
    (out / "grid.json").write_text("{}")
    (out / "polyps" / "order" / "seed1").mkdir()  # an empty folder of a run never started: nothing to carry
    files = {p.relative_to(out) for p in protocol.carry_files(out, [done, partial])}
    expected_partial = {"config.yaml", "metrics.jsonl", "model/best/model.safetensors",
                        *(f"checkpoints/step_00000020/{n}" for n in ("model.safetensors", "optimizer.pt",
                                                                      "trainer_state.json"))}
    expected_done = {"config.yaml", "metrics.jsonl", "run.json", "eval.json", "model/best/model.safetensors",
                     "model/last/model.safetensors"}
    assert files == ({Path("grid.json")} | {Path("polyps/mk_unet/seed0") / f for f in expected_partial}
                     | {Path("polyps/order/seed0") / f for f in expected_done})


def test_a_process_training_part_of_the_grid_still_tables_the_whole_grid(protocol, tmp_path):
    import argparse

    def selection(**kw) -> argparse.Namespace:
        base = dict(out=str(tmp_path), head_init="nonnegative", datasets=["polyps", "brisc"],
                    models=["order", "mk_unet", "order_se", "order_cbam"], seeds=[0, 1, 2])
        return argparse.Namespace(**{**base, **kw})

    protocol.record_grid(selection(), "nonnegative")  # the first process: the whole grid
    narrow = selection(datasets=["brisc"], models=["order", "mk_unet"], seeds=[2, 1])
    protocol.record_grid(narrow, "nonnegative")  # a second process, part of it, seeds in another order
    cells = protocol.grid_cells(narrow)
    assert len(cells) == 2 * 3 + 2 * 3 + 2 * 3 and cells == protocol.grid_cells(selection())
    assert cells[:4] == [("polyps", "order", 0), ("polyps", "mk_unet", 0), ("brisc", "order", 0), ("brisc", "mk_unet", 0)]
    assert cells[-1] == ("polyps", "order_cbam", 2)
    view = protocol.grid_view(narrow, cells)
    assert view.datasets == ["polyps", "brisc"] and view.seeds == [0, 1, 2] and "order_se" in view.models
    (tmp_path / "polyps" / "order" / "seed7").mkdir(parents=True)  # a run started by hand joins the grid
    assert ("polyps", "order", 7) in protocol.grid_cells(narrow)
    other = tmp_path / "other"
    protocol.record_grid(selection(out=str(other), datasets=["polyps"], models=["order"], seeds=[0]), "balanced")
    assert protocol.grid_cells(selection(out=str(other))) == [("polyps", "order", 0)]  # `--table` adds no cells


def test_the_bootstrap_does_not_depend_on_the_order_seeds_were_listed_in(protocol, tmp_path):
    cells = []
    for seed in range(3):
        cells.append(fake_run(protocol, tmp_path, "mk_unet", seed, subsets(np.random.default_rng(seed))))
        cells.append(fake_run(protocol, tmp_path, "order", seed, subsets(np.random.default_rng(10 + seed), shift=0.02)))
    forward = protocol.compare(tmp_path, cells, "polyps", "mk_unet")
    backward = protocol.compare(tmp_path, cells[::-1], "polyps", "mk_unet")
    assert forward["ci"] == backward["ci"]


def test_commands_for_a_grid_outside_the_default_folder_name_it(protocol):
    """Both the training command and the table-regeneration command must point at the same grid."""
    import argparse

    def args(out: str) -> argparse.Namespace:
        return argparse.Namespace(out=out, head_init="balanced", models=["order"], seeds=[0], datasets=["polyps"],
                                  image_size=160, epochs=100, batch_size=16, lr=1e-4)

    assert protocol.out_flag(args("bench/results/seg_protocol")) == ""
    assert protocol.out_flag(args("/x/seg_protocol_balanced")) == " --out bench/results/seg_protocol_balanced"
    assert " --out bench/results/seg_protocol_balanced " in protocol.command_for(args("/x/seg_protocol_balanced"))
    assert "--out" not in protocol.command_for(args("bench/results/seg_protocol"))


# --- --rescore: HD95/NSD added to finished runs, Dice/IoU reproduced bit for bit -------------------


@pytest.fixture(scope="module")
def scored_grid(protocol, tmp_path_factory):
    """A grid with one finished run (an MK-UNet with random weights and BatchNorm statistics, on 12
    procedural 32² pairs) whose eval.json is what the grid wrote before HD95/NSD existed: Dice/IoU
    only. Built by hand, not trained: the rescore only reads config.yaml, run.json and model/best."""
    import torch

    from laworder.config import save_config
    from laworder.data.procedural import generate_procedural
    from laworder.models import create_model
    from laworder.seg.config import SegTrainConfig
    from laworder.seg.evaluate import write_eval
    from laworder.training.checkpoint import save_weights

    root = tmp_path_factory.mktemp("rescore")
    data = generate_procedural(root / "proc", num_images=12, size=32, seed=0)
    folder = protocol.run_dir(root / "grid", "polyps", "mk_unet", 0)
    (folder / "model" / "best").mkdir(parents=True)
    save_config(SegTrainConfig(data=str(data), model="mk_unet", image_size=32), folder / "config.yaml")
    torch.manual_seed(0)
    network = create_model("mk_unet", in_channels=3)
    for module in network.modules():  # statistics a trained network has, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    save_weights(network, folder / "model" / "best" / "model.safetensors")
    (folder / "run.json").write_text(json.dumps({"global_step": 10, "total_steps": 10}))
    old = protocol.score_run(folder, None, "plain")
    assert "hd95" not in old.mean and not old.boundary
    write_eval(old, folder, protocol.eval_title("polyps", "mk_unet", 0))
    return root / "grid", folder


def rescore_args(out: Path, tolerance: float = 2.0):
    import argparse

    return argparse.Namespace(out=str(out), nsd_tolerance=tolerance, datasets=["polyps"], models=["mk_unet"], seeds=[0])


def copy_grid(grid: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(grid, tmp_path / "grid")
    return tmp_path / "grid", tmp_path / "grid" / "polyps" / "mk_unet" / "seed0"


def test_rescore_keeps_dice_adds_hd95_nsd_and_skips_a_rescored_run(protocol, scored_grid, tmp_path):
    out, folder = copy_grid(scored_grid[0], tmp_path)
    before = json.loads((folder / "eval.json").read_text())
    assert protocol.rescore(rescore_args(out)) == {"rescored": 1, "skipped": 0, "unfinished": 0}
    after = json.loads((folder / "eval.json").read_text())
    for subset, rows in before["per_image"].items():  # the same images, the same Dice/IoU to the bit
        assert [(r["stem"], r["dice"], r["iou"]) for r in rows] == \
               [(r["stem"], r["dice"], r["iou"]) for r in after["per_image"][subset]]
        assert all(r["hd95"] >= 0 and 0 <= r["nsd"] <= 1 for r in after["per_image"][subset])
    assert (after["mean"]["dice"], after["mean"]["iou"]) == (before["mean"]["dice"], before["mean"]["iou"])
    assert {"hd95", "nsd"} <= set(after["mean"]) and after["boundary"]["nsd_tolerance_px"] == 2.0
    assert after["rescore"]["scoring_path"] in protocol.SCORING_PATHS and "--rescore" in after["rescore"]["command"]
    assert "HD95 (px)" in (folder / "eval.md").read_text()
    assert not list(folder.glob("*.tmp*"))

    def must_not_run(*_):
        raise AssertionError("a run with HD95/NSD was scored again")

    assert protocol.rescore(rescore_args(out), score=must_not_run) == {"rescored": 0, "skipped": 1, "unfinished": 0}
    with pytest.raises(SystemExit, match="NSD at 2.0 px, not --nsd-tolerance 3"):  # one table, one tolerance
        protocol.rescore(rescore_args(out, 3.0), score=must_not_run)


def test_a_rescore_that_does_not_reproduce_the_dice_fails_and_writes_nothing(protocol, scored_grid, tmp_path):
    out, folder = copy_grid(scored_grid[0], tmp_path)
    committed = (folder / "eval.json").read_bytes()
    real = protocol.score_run
    calls = []

    def off_by_a_pixel(run, tolerance, path):
        calls.append(path)
        result = real(run, tolerance, path)
        row = next(iter(result.per_image.values()))[0]
        row["dice"] = row["dice"] - 1e-6
        return result

    with pytest.raises(RuntimeError, match="no scoring path reproduces the committed Dice/IoU.*image\\(s\\) differ"):
        protocol.rescore(rescore_args(out), score=off_by_a_pixel)
    assert calls == list(protocol.SCORING_PATHS)  # every path tried before giving up
    assert (folder / "eval.json").read_bytes() == committed

    def only_plain(run, tolerance, path):  # an older code path reproduces it: that one is kept
        result = real(run, tolerance, "plain")
        if path != "plain":
            next(iter(result.per_image.values()))[0]["dice"] += 1e-6
        return result

    assert protocol.rescore(rescore_args(out), score=only_plain)["rescored"] == 1
    assert json.loads((folder / "eval.json").read_text())["rescore"]["scoring_path"] == "plain"


def test_the_table_shows_hd95_and_nsd_per_subset_beside_dice(protocol, scored_grid, tmp_path):
    out, folder = copy_grid(scored_grid[0], tmp_path)
    args = rescore_args(out)
    cells = protocol.grid_cells(args)

    def table() -> str:
        payload = protocol.collect(args, cells)
        payload.update(profile={}, comparisons={}, protocol={"image_size": 32})
        return protocol.format_table(payload)

    assert "HD95" not in table()  # nothing rescored yet: the Dice table alone
    protocol.rescore(args)
    text = table()
    subset = next(iter(json.loads((folder / "eval.json").read_text())["subsets"]))
    assert f"| Model | Seeds with HD95/NSD | {subset} HD95 (px) | {subset} NSD (2 px) | Mean HD95 (px) | Mean NSD (2 px) |" in text
    assert "the decision rule stays on Dice" in text and "| MK-UNet | 1/1 |" in text
    ev = json.loads((folder / "eval.json").read_text())
    assert f"| {ev['mean']['hd95']:.1f} | {100 * ev['mean']['nsd']:.1f} |" in text

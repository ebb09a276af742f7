"""LAW put to a fair test (issue 10, item 4): one VAE and one base model shared by every arm,
ControlNets fine-tuned from the frozen base with each objective, pools from every held-out test
mask, a strong judge, seeds, and a decision rule written down before any run.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/synth_fair.py run > bench/results/synth_fair/run.log 2>&1 &
    .venv/bin/python bench/synth_fair.py status          # which pieces are done, what comes next
    .venv/bin/python bench/synth_fair.py analyse         # tables, CIs and the decision from what is done
    .venv/bin/python bench/synth_fair.py run --tiny --out /tmp/fair   # the whole protocol on procedural data
    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/synth_fair.py run --plan amended2 \
        > bench/results/synth_fair/amended2/run.log 2>&1 &       # issue 26's amended, pre-registered test

Every piece (a VAE, the judge, a ControlNet seed, a pool, a pool's scores) is one command or
one function; it writes ``pieces/<name>.json`` (small, committed) when it finishes, and ``run``
skips finished pieces, so a killed run resumes piece by piece (training runs resume from their
last checkpoint). Weights, pools and checkpoints stay out of git. The plan (``PLAN``, written to
``plan.json`` on the first run) fixes steps, seeds and the decision rule before any result;
``run`` refuses to continue under a changed plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/profile.py shadows stdlib
sys.path.insert(0, str(ROOT / "src"))

DECISION_RULE = (
    "Primary metric: mask-recovery Dice by the judge, pools at CFG 10 (the paper's), mask guidance 1, "
    "averaged over the 2 sample seeds per mask. For each comparison (LAW - uniform, LAW - ratio-L2 "
    "[like-for-like L2], LAW - ratio-L1 [ArSDM as published]) a 95 % hierarchical-bootstrap CI "
    "(training seeds resampled per arm, the 179 test masks resampled jointly) of the mean difference: "
    "LAW WINS if the CI lies above 0; LAW LOSES if it lies below 0; the paper's gain is REFUTED at this "
    "scale if the CI's upper end is below +0.03 Dice; otherwise INCONCLUSIVE. Fixed before any run; "
    "CFG 1, IoU, boundary F, size bins, headroom, LAW - LAW(use_delta=false) and the mask-guidance sweep "
    "are secondary and do not enter the decision."
)

ARMS: dict[str, dict[str, Any]] = {
    "uniform": {"objective": "uniform"},
    "ratio_l1": {"objective": "ratio", "objective_kwargs": {"norm": "l1"}},
    "ratio_l2": {"objective": "ratio", "objective_kwargs": {"norm": "l2"}},
    "law": {"objective": "law"},
    "law_no_delta": {"objective": "law", "objective_kwargs": {"use_delta": False}},
    "adaptive_distillation": {"objective": "adaptive_distillation"},
}

PLAN: dict[str, Any] = {
    "version": 1,
    "data": "../shared/data/polyps",  # relative to the repository root
    "test_subsets": ["Kvasir", "CVC-ClinicDB"],  # every held-out test mask: 100 + 79
    "resolution": 128,  # the judge sees 128² images; diffusion runs on 32² latents
    "vae": {"max_steps": 3000, "batch_size": 8, "lr": 2e-4, "set": []},
    # nnunet2d at its full width (20.6M params) costs 14 s per batch-16 step at 128² on one
    # thread here (order: 2 s): the half-width plan (16..256 filters) is what this machine can train
    "judge": {"candidates": {"order": {"model": "order", "set": []},
                             "nnunet2d_16": {"model": "nnunet2d", "set": ["model_kwargs.base_filters=16",
                                                                          "model_kwargs.max_filters=256"]}},
              "epochs": 30, "batch_size": 16, "lr": 1e-3, "set": ["loop.monitor=val_dice", "loop.monitor_mode=max"]},
    "vae_check": {"min_dice_fraction": 0.9},
    "base": {"max_steps": 6000, "batch_size": 16, "lr": 2e-4, "set": ["loop.ema_decay=0.999"]},
    "arms": ARMS,
    "controlnet": {"seeds": [0, 1, 2], "max_steps": 1500, "batch_size": 16, "lr": 1e-4,
                   "set": ["loop.ema_decay=0.999", "probe_every=100", "probe_count=16"]},
    "sampling": {"steps": 50, "sample_seeds": [0, 1], "cfg": [1.0, 10.0],
                 "mask_guidance_sweep": {"training_seed": 0, "sample_seed": 0, "cfg": 10.0, "scales": [0.0, 2.0, 4.0]}},
    "metrics": {"boundary_tolerance_px": 2, "size_bins": "r < 0.05, 0.05-0.15, > 0.15"},
    "stats": {"replicates": 10000, "level": 0.95, "margin": 0.03, "primary_cfg": 10.0,
              "comparisons": [["law", "uniform"], ["law", "ratio_l2"], ["law", "ratio_l1"], ["law", "law_no_delta"],
                              ["law", "adaptive_distillation"]],
              "decisive": [["law", "uniform"], ["law", "ratio_l2"], ["law", "ratio_l1"]]},
    "decision_rule": DECISION_RULE,
}


# The full plan is several days of this 2-core machine; the compact plan is the same protocol
# (arms, 3 training seeds, 179 test masks, 2 sample seeds, DDIM 50, CFG 1 and 10, decision rule)
# at 64² images (16² latents), with shorter pretraining and fine-tuning, so that every piece
# finishes within one 3-hour session on two cores (weights are not committed).
COMPACT_PLAN: dict[str, Any] = deepcopy(PLAN)
COMPACT_PLAN.update(name="compact", resolution=64)
COMPACT_PLAN["vae"].update(max_steps=1500, set=["block_out_channels=[16,32,64]"])
COMPACT_PLAN["judge"].update(epochs=25)
COMPACT_PLAN["base"].update(max_steps=1500)
COMPACT_PLAN["controlnet"].update(max_steps=600, lr=2e-4,
                                  set=["loop.ema_decay=0.999", "loop.snapshot_every=200", "probe_every=100",
                                       "probe_count=16"])
COMPACT_PLAN["sampling"].update(batch_size=32)
COMPACT_PLAN["sampling"]["mask_guidance_sweep"]["scales"] = [0.0, 3.0]

AMENDED_DECISION_RULE = (
    "Primary metric: mask-recovery Dice by the adopted judge (synth_generators' nnunet2d_16), pools at "
    "CFG 10 (the paper's), mask guidance 1, averaged over the 2 sample seeds per mask (all 179 held-out "
    "test masks). For each comparison (LAW - uniform, LAW - ratio-L2 [like-for-like L2], LAW - ratio-L1 "
    "[ArSDM as published]) a 95 % hierarchical-bootstrap CI (10,000 replicates; training seeds 0, 1, 2 "
    "resampled per arm, the test masks resampled jointly) of the mean difference: LAW WINS if the CI lies "
    "above 0; LAW LOSES if it lies below 0; the paper's gain is REFUTED at this scale if the CI's upper "
    "end is below the margin; otherwise INCONCLUSIVE. The margin is 0.05 x (ceiling - chance): ceiling = "
    "the adopted judge's pooled real-test Dice, chance = the uniform arm's mean chance Dice at CFG 10, "
    "mask guidance 1 (stats.margin_fraction_of_headroom; the absolute margin is computed from the pieces "
    "and printed with the results). Fixed before any piece of this plan; mask guidance 3, IoU, boundary "
    "F, size bins, headroom, law_area - law (LAW with the area-averaged latent mask) and the clamp's "
    "share (lesion latents at w_max, w_clamped_fraction) are secondary and do not enter the decision."
)

# The amended test (issue 26 item 1): the compact plan's ControlNets used ~19 % of the judge's
# headroom, so the arms could hardly differ. This plan adopts the generator benchmark's better
# recipe (its VAE, base and judge, pinned by hash; ControlNets with the whole UNet trainable at lr
# 3e-4) and trains 4x the compact 600 steps; the margin is a fraction of the headroom, not +0.03.
AMENDED_ARMS: dict[str, dict[str, Any]] = {
    **{name: ARMS[name] for name in ("uniform", "ratio_l1", "ratio_l2", "law")},
    # secondary: the latent mask as the fraction of lesion pixels per latent cell (not nearest's
    # top-left pixel of each 4x4 block, 1.5 px off the image)
    "law_area": {"objective": "law", "objective_kwargs": {"latent_mask": "area"}},
}
AMENDED_PLAN: dict[str, Any] = {
    "version": 1,
    "name": "amended",
    "data": "../shared/data/polyps",
    "test_subsets": ["Kvasir", "CVC-ClinicDB"],
    "resolution": 64,
    # adopted, not retrained: the runs of bench/synth_generators.py (relative to the repository
    # root), each pinned by the SHA-256 of its weights when its adopt piece finishes
    "reuse": {"root": "bench/results/synth_generators",
              "runs": {"vae": "runs/vae", "base": "runs/base", "judge": "runs/judge_nnunet2d_16"},
              "pieces": {"vae": "pieces/vae.json", "base": "pieces/base.json", "judge": "pieces/judge.json"}},
    # recomputed (7 s) on the adopted VAE and judge: the generator benchmark has no such piece
    "vae_check": {"min_dice_fraction": 0.9},
    "arms": AMENDED_ARMS,
    "controlnet": {"seeds": [0, 1, 2], "max_steps": 2400, "batch_size": 16, "lr": 3e-4,
                   "set": ["loop.ema_decay=0.999", "loop.snapshot_every=600", "loop.checkpoint_every=100",
                           "probe_every=500", "probe_count=16", "unet_trainable=all"]},
    "sampling": {"steps": 50, "sample_seeds": [0, 1], "cfg": [10.0], "mask_guidance": [1.0, 3.0],
                 "batch_size": 32, "mask_guidance_sweep": None},
    "metrics": {"boundary_tolerance_px": 2, "size_bins": "r < 0.05, 0.05-0.15, > 0.15"},
    "stats": {"replicates": 10000, "level": 0.95, "margin_fraction_of_headroom": 0.05, "margin_chance_arm": "uniform",
              "primary_cfg": 10.0, "primary_mask_guidance": 1.0,
              "comparisons": [["law", "uniform"], ["law", "ratio_l2"], ["law", "ratio_l1"], ["law_area", "law"]],
              "decisive": [["law", "uniform"], ["law", "ratio_l2"], ["law", "ratio_l1"]]},
    "decision_rule": AMENDED_DECISION_RULE,
}

# amended2: the amended plan with its VAE, base and judge trained by the plan (the compact plan's
# recipe) instead of adopted. The runs the amended plan adopted were lost with the machine that held
# them (git-ignored weights); retraining them with their recorded commands on another CPU gave other
# weights (judge best validation Dice 0.615 vs the pinned run's 0.642), so their pins cannot hold.
# Everything from the ControlNets on is the amended plan's, unchanged.
AMENDED2_PLAN: dict[str, Any] = deepcopy(AMENDED_PLAN)
del AMENDED2_PLAN["reuse"]
AMENDED2_PLAN.update(name="amended2", vae=deepcopy(COMPACT_PLAN["vae"]), judge=deepcopy(COMPACT_PLAN["judge"]),
                     base=deepcopy(COMPACT_PLAN["base"]))
AMENDED2_PLAN["decision_rule"] = AMENDED_DECISION_RULE.replace(
    "by the adopted judge (synth_generators' nnunet2d_16)",
    "by the plan's judge (of ORDER and half-width nnunet2d trained on the real training images, the one with "
    "the higher validation Dice, as in the compact plan)").replace(
    "ceiling = the adopted judge's pooled real-test Dice", "ceiling = the judge's pooled real-test Dice")
assert AMENDED2_PLAN["decision_rule"].count("the plan's judge") == 1 and "adopted" not in AMENDED2_PLAN["decision_rule"]

PLANS: dict[str, dict[str, Any]] = {"full": PLAN, "compact": COMPACT_PLAN, "amended": AMENDED_PLAN,
                                    "amended2": AMENDED2_PLAN}


def tiny_plan(arms: list[str] | None = None) -> dict[str, Any]:
    """The same protocol on the built-in procedural data at toy sizes (seconds per piece);
    ``arms`` keeps only those arms (and the comparisons between them)."""
    plan = deepcopy(PLAN)
    if arms is not None:
        plan["arms"] = {name: ARMS[name] for name in arms}
        for key in ("comparisons", "decisive"):
            plan["stats"][key] = [pair for pair in plan["stats"][key] if set(pair) <= set(arms)]
    plan.update(data="procedural:24:32:0:6", test_subsets=["procedural"], resolution=32)
    plan["vae"].update(max_steps=2, batch_size=4, set=["block_out_channels=[8,16,16]", "norm_num_groups=8",
                                                      "val_images=4", "scale_images=8"])
    plan["judge"].update(candidates={"order": {"model": "order", "set": []}}, epochs=1, batch_size=8)
    plan["base"].update(max_steps=2, batch_size=4, set=["backbone_kwargs.preset=tiny"])
    plan["controlnet"].update(seeds=[0, 1], max_steps=2, batch_size=4, set=["probe_every=1", "probe_count=3"])
    plan["sampling"].update(steps=2, sample_seeds=[0])
    plan["sampling"]["mask_guidance_sweep"]["scales"] = [2.0]
    plan["stats"]["replicates"] = 200
    return plan


def tiny_amended_plan(source: Path, arms: list[str] | None = None) -> dict[str, Any]:
    """The amended protocol at toy sizes, adopting the VAE, base and judge of a finished tiny run in
    ``source`` (``run --tiny --out SOURCE --until base``); ``arms`` keeps only those arms."""
    tiny, plan = tiny_plan(), deepcopy(AMENDED_PLAN)
    plan["reuse"] = {"root": str(source), "runs": {"vae": "runs/vae", "base": "runs/base", "judge": "runs/judge_order"},
                     "pieces": {"vae": "pieces/vae.json", "base": "pieces/base.json", "judge": "pieces/judge.json"}}
    if arms is not None:
        plan["arms"] = {name: AMENDED_ARMS[name] for name in arms}
        for key in ("comparisons", "decisive"):
            plan["stats"][key] = [pair for pair in plan["stats"][key] if set(pair) <= set(arms)]
    plan.update(data=tiny["data"], test_subsets=tiny["test_subsets"], resolution=tiny["resolution"])
    plan["controlnet"].update(seeds=[0], max_steps=2, batch_size=4,
                              set=["probe_every=1", "probe_count=3", "unet_trainable=all"])
    plan["sampling"].update(steps=2, sample_seeds=[0], batch_size=8)
    plan["stats"]["replicates"] = 200
    return plan


# --- pieces -----------------------------------------------------------------------------------
class PieceBook:
    """A benchmark made of pieces: ``pieces/<name>.json`` marks a finished piece (written whole),
    and each ``laworder`` command runs in this process. ``tag`` prefixes what it prints."""

    tag = "bench"

    def __init__(self, plan: dict[str, Any], out: Path) -> None:
        self.plan, self.out = plan, out
        self.pieces_dir = out / "pieces"
        data = plan["data"]
        self.data = data if data.startswith("procedural") else str((ROOT / data).resolve())

    def finished(self, name: str) -> bool:
        """Whether piece ``name`` is done, without reading its (up to 50 kB) record."""
        return (self.pieces_dir / f"{name}.json").is_file()

    def done(self, name: str) -> dict | None:
        path = self.pieces_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def finish(self, name: str, record: dict) -> dict:
        self.pieces_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.pieces_dir / f"{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.pieces_dir / f"{name}.json")
        return record

    def before_group(self) -> None:
        """Checks run before every group of pieces (e.g. pinned weights unchanged)."""

    def print_status(self) -> None:
        """One line per piece, in order: done or todo."""
        for name, _ in self.pieces():
            print(f"{'done ' if self.finished(name) else 'todo '} {name}")

    def laworder(self, *args: str) -> tuple[str, float]:
        """Run ``laworder ARGS`` in this process (one process, one thread: the 2-core machine is
        shared) and return (the command line, seconds)."""
        from laworder.cli import main as laworder_main

        shown = "laworder " + " ".join(args)
        print(f"[{self.tag}] $ {shown}", flush=True)
        started = time.time()
        code = laworder_main(list(args))
        if code != 0:
            raise SystemExit(f"[{self.tag}] failed ({code}): {shown}")
        return shown, time.time() - started


class Bench(PieceBook):
    """The plan's pieces in order, with their done markers under ``out/pieces``."""

    tag = "synth_fair"

    def __init__(self, plan: dict[str, Any], out: Path, dry: bool = False) -> None:
        super().__init__(plan, out)
        self.dry = dry

    def run_path(self, *parts: str) -> Path:
        """A run folder of this plan; an adopted run (``plan["reuse"]``: vae, base, judge) where the
        plan adopts it instead of training it."""
        reuse = self.plan.get("reuse")
        if reuse and len(parts) == 1 and parts[0] in reuse["runs"]:
            return ROOT / reuse["root"] / reuse["runs"][parts[0]]
        return self.out / "runs" / Path(*parts)

    def before_group(self) -> None:
        self.check_adopted()

    def check_adopted(self) -> None:
        """Refuse to go on when an adopted run's weights changed since its adopt piece pinned them."""
        for name in (self.plan.get("reuse") or {}).get("runs", {}):
            record = self.done(name)
            if not record or not record.get("adopted"):
                continue
            now = weight_hashes(self.run_path(name))
            if now != record["weights_sha256"]:
                changed = sorted(k for k in set(now) | set(record["weights_sha256"])
                                 if now.get(k) != record["weights_sha256"].get(k))
                raise SystemExit(f"[synth_fair] the adopted {name} run {self.run_path(name)} changed since "
                                 f"pieces/{name}.json pinned it: {', '.join(changed)} (SHA-256 differs or the file "
                                 "is missing/new); this plan's pieces would mix models. Restore the run's weights, "
                                 "or write a new plan")

    def groups(self) -> list[tuple[str, list[str], list[tuple[str, Callable[[], dict]]]]]:
        """(group, the groups it needs, its pieces in order), every group after the ones it needs.
        A worker takes a whole group: an arm's ControlNet and the pools sampled from it."""
        plan = self.plan
        groups: list[tuple[str, list[str], list[tuple[str, Callable[[], dict]]]]]
        if plan.get("reuse"):  # VAE, base and judge adopted (pinned), not trained
            groups = [("vae", [], [("vae", lambda: self.adopt("vae"))]),
                      ("judge", ["vae"], [("judge", lambda: self.adopt("judge")), ("vae_check", self.vae_check)]),
                      ("base", ["vae"], [("base", lambda: self.adopt("base"))])]
        else:
            candidates = [f"judge_{name}" for name in plan["judge"]["candidates"]]
            groups = [("vae", [], [("vae", self.vae)])]
            groups += [(name, [], [(name, lambda name=name: self.judge(name.removeprefix("judge_")))]) for name in candidates]
            groups += [("judge", ["vae", *candidates], [("judge", self.choose_judge), ("vae_check", self.vae_check)]),
                       ("base", ["vae"], [("base", self.base)])]
        sampling = plan["sampling"]
        sweep, primary = sampling["mask_guidance_sweep"], plan["stats"]["primary_cfg"]
        guidances, primary_guidance = mask_guidances(plan)
        decisive = {arm for pair in plan["stats"]["decisive"] for arm in pair}
        # What the decision needs comes first (the decisive arms' ControlNets and primary-CFG pools,
        # seed by seed), then the secondary arms, then the secondary pools (other CFG, the sweep):
        # a session that runs out of time still leaves a decidable table.
        ordered = [(arm, seed) for wanted in (True, False) for seed in plan["controlnet"]["seeds"]
                   for arm in plan["arms"] if (arm in decisive) == wanted]
        for arm, seed in ordered:
            items = [(f"arm_{arm}_seed{seed}", lambda arm=arm, seed=seed: self.arm(arm, seed))]
            for sample_seed in sampling["sample_seeds"]:
                name = pool_name(arm, seed, sample_seed, primary, primary_guidance)
                items.append((name, lambda a=arm, s=seed, ss=sample_seed: self.pool(a, s, ss, primary, primary_guidance)))
            groups.append((f"arm_{arm}_seed{seed}", ["base", "judge"], items))
        for arm, seed in ordered:
            items = []
            for sample_seed in sampling["sample_seeds"]:
                for cfg in sampling["cfg"]:
                    for guidance in guidances:
                        if (cfg, guidance) == (primary, primary_guidance):
                            continue
                        name = pool_name(arm, seed, sample_seed, cfg, guidance)
                        items.append((name, lambda a=arm, s=seed, ss=sample_seed, g=cfg, m=guidance:
                                      self.pool(a, s, ss, g, m)))
            if sweep and seed == sweep["training_seed"]:
                for scale in sweep["scales"]:
                    name = pool_name(arm, seed, sweep["sample_seed"], sweep["cfg"], scale)
                    items.append((name, lambda a=arm, s=seed, m=scale: self.pool(a, s, sweep["sample_seed"], sweep["cfg"], m)))
            if items:
                groups.append((f"secondary_{arm}_seed{seed}", [f"arm_{arm}_seed{seed}"], items))
        return groups

    def pieces(self) -> list[tuple[str, Callable[[], dict]]]:
        """Every piece in the order one worker does them."""
        return [piece for _, _, items in self.groups() for piece in items]

    # the pieces ----------------------------------------------------------------------------
    def adopt(self, name: str) -> dict:
        """Adopt run ``name`` (vae, base, judge) of ``plan["reuse"]``: record where it comes from, its
        piece record there and the SHA-256 of every weights file, which pins it for later pieces
        (``check_adopted``). The judge's ceiling is recomputed on the real test images and must match
        the recorded one; the base must have been trained on the adopted VAE."""
        reuse = self.plan["reuse"]
        run, piece = self.run_path(name), ROOT / reuse["root"] / reuse["pieces"][name]
        if not run.is_dir() or not piece.is_file():
            raise SystemExit(f"[synth_fair] cannot adopt {name}: {run if not run.is_dir() else piece} does not exist "
                             f"(plan reuse.root={reuse['root']!r}; the runs are git-ignored, made by their benchmark)")
        weights = weight_hashes(run)
        if not weights:
            raise SystemExit(f"[synth_fair] cannot adopt {name}: no *.safetensors under {run / 'model'}")
        source = json.loads(piece.read_text())
        record: dict[str, Any] = {"adopted": True, "run": rel(run), "source_run": rel(run), "source_piece_file": rel(piece),
                                  "source_piece": source, "weights_sha256": weights}
        if name == "base":
            from laworder.config import load_yaml

            vae = (load_yaml(run / "config.yaml").get("backbone_kwargs") or {}).get("vae")
            if not vae or Path(vae).resolve() != self.run_path("vae").resolve():
                raise SystemExit(f"[synth_fair] cannot adopt base: {run} was trained on the VAE {vae!r}, not the "
                                 f"adopted {self.run_path('vae')}")
            record["vae"] = rel(Path(vae))
        if name == "judge":
            recorded = source.get("ceiling") or source["real_test"]
            measured = remeasure_judge(run, self.data, self.plan["test_subsets"], recorded, piece, self.tag)
            record.update(model=source["model"], ceiling=recorded, ceiling_recomputed=measured,
                          rule=f"adopted from {rel(piece)}: its real-test pooled Dice is the ceiling")
        return record

    def vae(self) -> dict:
        spec, run = self.plan["vae"], self.run_path("vae")
        command, seconds = self.laworder(
            "synth", "pretrain-vae", "--data", self.data, "--resolution", str(self.plan["resolution"]),
            "--max-steps", str(spec["max_steps"]), "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]),
            *sets(spec["set"]), "-o", str(run), "--resume", "--no-progress")
        evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
        return {"command": command, "seconds": seconds, "run": rel(run), "eval": evaluation}

    def judge(self, name: str) -> dict:
        spec, run = self.plan["judge"], self.run_path(f"judge_{name}")
        candidate = spec["candidates"][name]
        command, seconds = self.laworder(
            "seg", "train", "--data", self.data, "--model", candidate["model"],
            "--image-size", str(self.plan["resolution"]), "--epochs", str(spec["epochs"]),
            "--batch-size", str(spec["batch_size"]), *sets([f"loop.lr={spec['lr']}", *spec["set"], *candidate["set"]]),
            "-o", str(run), "--resume", "--no-progress")
        return {"command": command, "seconds": seconds, "run": rel(run), "model": name,
                "real_test": real_test_dice(run, self.data, self.plan["test_subsets"])}

    def choose_judge(self) -> dict:
        """The candidate with the best validation Dice; its real-test Dice is the ceiling."""
        candidates = {m: self.done(f"judge_{m}") for m in self.plan["judge"]["candidates"]}
        scored = {m: best_val_dice(ROOT / c["run"]) for m, c in candidates.items()}
        model = max(scored, key=lambda m: scored[m])
        chosen = candidates[model]
        return {"model": model, "run": chosen["run"], "val_dice": scored, "ceiling": chosen["real_test"],
                "rule": "highest best-validation Dice among the candidates, trained on the real training images"}

    def vae_check(self) -> dict:
        judge, run = self.done("judge"), self.run_path("vae")
        out = self.pieces_dir / "vae_dice.raw.json"
        command, seconds = self.laworder("synth", "vae-dice", str(run), str(ROOT / judge["run"]), "--data", self.data,
                                         "--subset", *self.plan["test_subsets"], "--out", str(out))
        result = json.loads(out.read_text())
        out.unlink()
        return {"command": command, "seconds": seconds, "result": result,
                "target": f">= {self.plan['vae_check']['min_dice_fraction']} x the Dice on the original images"}

    def base(self) -> dict:
        spec, run = self.plan["base"], self.run_path("base")
        command, seconds = self.laworder(
            "synth", "pretrain", "--data", self.data, "--vae", str(self.run_path("vae")),
            "--resolution", str(self.plan["resolution"]), "--max-steps", str(spec["max_steps"]),
            "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]), *sets(spec["set"]),
            "-o", str(run), "--resume", "--no-progress")
        return {"command": command, "seconds": seconds, "run": rel(run), "final": last_logs(run)}

    def arm(self, arm: str, seed: int) -> dict:
        spec, recipe, run = self.plan["controlnet"], self.plan["arms"][arm], self.run_path("arms", arm, f"seed{seed}")
        overrides = list(spec["set"])
        for key, value in recipe.get("objective_kwargs", {}).items():
            overrides.append(f"objective_kwargs.{key}={json.dumps(value)}")
        command, seconds = self.laworder(
            "synth", "train", "--base", str(self.run_path("base")), "--data", self.data,
            "--objective", recipe["objective"], "--seed", str(seed), "--max-steps", str(spec["max_steps"]),
            "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]), *sets(overrides),
            "-o", str(run), "--resume", "--no-progress")
        record = {"command": command, "seconds": seconds, "run": rel(run), "arm": arm, "seed": seed,
                  "final": last_logs(run), "probe": probe_records(run)}
        if is_law(recipe):
            record["clamp_share"] = clamp_share(run)
        return record

    def pool(self, arm: str, seed: int, sample_seed: int, cfg: float, mask_guidance: float) -> dict:
        """Sample one pool from every held-out test mask and score it with the judge."""
        sampling = self.plan["sampling"]
        name = pool_name(arm, seed, sample_seed, cfg, mask_guidance)
        folder = self.out / "pools" / name
        run = self.run_path("arms", arm, f"seed{seed}")
        commands, seconds = [], 0.0
        for subset in self.plan["test_subsets"]:
            command, took = self.laworder(
                "synth", "sample", str(run), self.data, str(folder / subset), "--split", subset,
                "--steps", str(sampling["steps"]), "--guidance", str(cfg), "--mask-guidance", str(mask_guidance),
                "--seed", str(sample_seed), "--batch-size", str(sampling.get("batch_size", 16)), "--overwrite", "--no-progress")
            commands.append(command)
            seconds += took
        from laworder.experiments.mask_recovery import recovery_per_image

        judge = self.done("judge")
        tolerance = self.plan["metrics"]["boundary_tolerance_px"]
        rows = {subset: recovery_per_image(ROOT / judge["run"], folder / subset, tolerance=tolerance)
                for subset in self.plan["test_subsets"]}
        return {"commands": commands, "sample_seconds": seconds, "arm": arm, "seed": seed, "sample_seed": sample_seed,
                "cfg": cfg, "mask_guidance": mask_guidance, "judge": judge["run"], "per_image": rows}


def mask_guidances(plan: dict) -> tuple[list[float], float]:
    """(every mask guidance the pools use, the primary one); plans before the amended one: [1], 1."""
    return list(plan["sampling"].get("mask_guidance", [1.0])), float(plan["stats"].get("primary_mask_guidance", 1.0))


def weight_hashes(run: Path) -> dict[str, str]:
    """SHA-256 of every ``*.safetensors`` under ``run/model`` (path relative to ``run``)."""
    hashes = {}
    for path in sorted((run / "model").rglob("*.safetensors")):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        hashes[str(path.relative_to(run))] = digest.hexdigest()
    return hashes


def is_law(recipe: dict) -> bool:
    return recipe["objective"] == "law" and recipe.get("objective_kwargs", {}).get("use_delta", True) is not False


def clamp_share(run: Path, last: int = 10) -> dict:
    """The clamp's share at the end of a LAW run: means over the last ``last`` logged steps of
    ``w_at_max_lesion`` (share of the lesion at w_max; None for runs logged before it existed) and
    ``w_clamped_fraction`` (share of all latents the clamp changed)."""
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = [row for row in rows if "w_clamped_fraction" in row][-last:]

    def mean(key: str) -> float | None:
        values = [row[key] for row in rows if key in row]
        return sum(values) / len(values) if values else None
    return {"steps": [rows[0]["step"], rows[-1]["step"]] if rows else None,
            "w_at_max_lesion": mean("w_at_max_lesion"), "w_clamped_fraction": mean("w_clamped_fraction")}


def pool_name(arm: str, seed: int, sample_seed: int, cfg: float, mask_guidance: float) -> str:
    return f"pool_{arm}_seed{seed}_s{sample_seed}_cfg{cfg:g}_mg{mask_guidance:g}"


def sets(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def last_logs(run: Path) -> dict:
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    losses = [line for line in lines if "loss" in line]
    return losses[-1] if losses else {}


def probe_records(run: Path) -> list[dict]:
    from laworder.synth.probe import read_probe

    return [{k: v for k, v in r.items() if k == "step" or k.startswith("probe_")} for r in read_probe(run)]


def best_val_dice(run: Path) -> float:
    path = run / "metrics.jsonl"
    values = [json.loads(line).get("val_dice") for line in path.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    return max(values) if values else float("nan")


def remeasure_judge(run: Path, data: str, subsets: list[str], recorded: dict | None, piece: Path, tag: str) -> dict:
    """The adopted judge's real-test Dice, measured again (``real_test_dice``); refuses when it is not
    the ``recorded`` one (``pooled_dice`` within 1e-4, and ``images`` where recorded): the folder then
    holds another run, e.g. one retrained after the original was lost."""
    measured = real_test_dice(run, data, subsets)
    recorded = recorded or {}
    if ("pooled_dice" not in recorded or abs(measured["pooled_dice"] - recorded["pooled_dice"]) > 1e-4
            or measured["images"] != recorded.get("images", measured["images"])):
        raise SystemExit(f"[{tag}] cannot adopt the judge {run}: its real-test Dice is now {measured['pooled_dice']:.4f} "
                         f"over {measured['images']} images, {piece} records {recorded.get('pooled_dice')} over "
                         f"{recorded.get('images')}; not the same run")
    return measured


def real_test_dice(run: Path, data: str, subsets: list[str]) -> dict:
    """The judge on the real test images: Dice/IoU per subset and pooled over every image."""
    from laworder.seg.evaluate import evaluate_records, evaluation_subsets
    from laworder.seg.loading import load_segmenter

    model, config = load_segmenter(run, "best")
    result = evaluate_records(model, evaluation_subsets(data, subsets=subsets), config.image_size, config.channels,
                              config.threshold)
    rows = [r for subset in result.per_image.values() for r in subset]
    return {"subsets": result.subsets, "mean_over_subsets": result.mean,
            "pooled_dice": sum(r["dice"] for r in rows) / len(rows), "images": len(rows)}


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def fix_plan(plan: dict, out: Path, replan: bool) -> None:
    """Write ``plan.json`` once; refuse to run a different plan on top of it (pre-registration)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    record = {"plan": plan, "sha256_16": plan_hash(plan), "decision_rule": plan["decision_rule"]}
    if path.is_file() and not replan:
        fixed = json.loads(path.read_text())
        if fixed.get("sha256_16") != record["sha256_16"]:
            raise SystemExit(f"{path} holds another plan ({fixed.get('sha256_16')} != {record['sha256_16']}); "
                             "the decision rule and sizes are fixed before the runs. Use --replan only with a "
                             "note in the README saying why")
        return
    record["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(record, indent=2) + "\n")


# --- analysis ---------------------------------------------------------------------------------
def score_table(bench: Bench) -> dict[str, Any]:
    """Arm × seed tables, CIs and the decision from every finished pool (secondary rows included)."""
    import numpy as np

    from laworder.metrics.bootstrap import decide, headroom, hierarchical_bootstrap_difference

    plan, stats = bench.plan, bench.plan["stats"]
    judge = bench.done("judge")
    ceiling = judge["ceiling"]["pooled_dice"] if judge else None
    pools = [p for p in (bench.done(name) for name, _ in bench.pieces() if name.startswith("pool_")) if p]
    # (arm, cfg, mask_guidance) -> training seed -> stem -> [rows over sample seeds]
    grouped: dict[tuple, dict[int, dict[str, list[dict]]]] = {}
    for pool in pools:
        key = (pool["arm"], pool["cfg"], pool["mask_guidance"])
        per_seed = grouped.setdefault(key, {}).setdefault(pool["seed"], {})
        for subset, rows in pool["per_image"].items():
            for row in rows:
                per_seed.setdefault(f"{subset}/{row['stem']}", []).append(row)
    table, arrays = [], {}
    for (arm, cfg, guidance), seeds in sorted(grouped.items()):
        stems = sorted(set.intersection(*(set(s) for s in seeds.values())))
        def matrix(field: str) -> "np.ndarray":
            return np.array([[np.mean([r[field] for r in seeds[seed][stem]]) for stem in stems] for seed in sorted(seeds)])
        dice, chance = matrix("dice"), matrix("chance_dice")
        arrays[(arm, cfg, guidance)] = (stems, dice)
        row = {"arm": arm, "cfg": cfg, "mask_guidance": guidance, "training_seeds": sorted(seeds), "masks": len(stems),
               "dice": float(dice.mean()), "dice_per_seed": [float(v) for v in dice.mean(axis=1)],
               "iou": float(matrix("iou").mean()), "boundary_f": float(matrix("boundary_f").mean()),
               "chance_dice": float(chance.mean())}
        if ceiling is not None and ceiling > row["chance_dice"]:
            row["headroom"] = headroom(row["dice"], row["chance_dice"], ceiling)
        bins: dict[str, list[float]] = {}
        first = seeds[sorted(seeds)[0]]
        for index, stem in enumerate(stems):
            bins.setdefault(first[stem][0]["size_bin"], []).append(float(dice[:, index].mean()))
        row["dice_by_size"] = {name: {"dice": float(np.mean(v)), "masks": len(v)} for name, v in sorted(bins.items())}
        table.append(row)
    guidances, primary_guidance = mask_guidances(plan)
    margin = decision_margin(plan, ceiling, table)
    comparisons = []
    for arm, other in stats["comparisons"]:
        for cfg in plan["sampling"]["cfg"]:
            for guidance in guidances:
                a, b = arrays.get((arm, cfg, guidance)), arrays.get((other, cfg, guidance))
                if not a or not b:
                    continue
                common = sorted(set(a[0]) & set(b[0]))
                ia, ib = [a[0].index(s) for s in common], [b[0].index(s) for s in common]
                ci = hierarchical_bootstrap_difference(a[1][:, ia], b[1][:, ib], stats["replicates"], stats["level"])
                decisive = ([arm, other] in stats["decisive"] and cfg == stats["primary_cfg"]
                            and guidance == primary_guidance)
                decision = decide(ci, margin["absolute"]) if decisive and margin["absolute"] is not None else None
                comparisons.append({"arm": arm, "comparator": other, "cfg": cfg, "mask_guidance": guidance,
                                    "ci": ci.as_dict(), "decision": decision,
                                    "seeds_note": None if min(ci.seeds) >= 3 else
                                    f"only {min(ci.seeds)} training seed(s) per arm: the CI describes mask/sampling noise, not training noise"})
    clamp = {}
    for arm, recipe in plan["arms"].items():
        if is_law(recipe):
            for seed in plan["controlnet"]["seeds"]:
                record = bench.done(f"arm_{arm}_seed{seed}")
                share = (record.get("clamp_share") or clamp_share(ROOT / record["run"])) if record else None
                if share and share["steps"]:  # a lost run folder leaves nothing to report
                    clamp[f"{arm} seed{seed}"] = share
    primary = {arm: seeds for (arm, c, g), seeds in grouped.items() if c == stats["primary_cfg"] and g == primary_guidance}
    return {"ceiling": judge["ceiling"] if judge else None, "judge": judge, "table": table, "comparisons": comparisons,
            "margin": margin, "clamp_share": clamp,
            "regime": regime(primary, [tuple(pair) for pair in stats["decisive"]]) if primary else None}


def regime(arms: dict[str, dict[int, dict[str, list[dict]]]], pairs: list[tuple[str, str]]) -> dict:
    """Can the objectives differ at all here? Pearson r of per-mask Dice (secondary diagnostics):

    - ``sample_seed_r``: two sample seeds of one ControlNet (mean over arms and training seeds);
    - ``training_seed_r``: two training seeds of one arm (sample seeds averaged first);
    - ``arm_r``: two arms at the same training seed (per decisive pair, mean over seeds);
    - ``training_seed_sd``: sample std of an arm's per-seed mean Dice (mean over arms).
    ``arm_r`` near 1, with ``training_seed_r`` as high, means every ControlNet gives nearly the same
    per-mask outcome: neither objective nor seed moved much of what the shared base gives (the compact
    test: 0.97 / 0.98, sample seeds 0.25; the amended one: 0.89-0.91 / 0.88, sample seeds 0.31).
    ``arms``: arm -> training seed -> "subset/stem" -> rows over sample seeds."""
    import itertools

    import numpy as np

    def r(x: list[float], y: list[float]) -> float | None:
        return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and np.std(x) > 0 and np.std(y) > 0 else None

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    def per_mask(seeds: dict[str, list[dict]], stems: list[str]) -> list[float]:
        return [float(np.mean([row["dice"] for row in seeds[stem]])) for stem in stems]

    stems = sorted(set.intersection(*(set(per_stem) for seeds in arms.values() for per_stem in seeds.values())))
    # arm -> training seed -> per-mask Dice, sample seeds averaged
    vectors = {arm: {seed: per_mask(per_stem, stems) for seed, per_stem in seeds.items()} for arm, seeds in arms.items()}
    sample_r, training_r, spread = [], [], []
    for arm, seeds in arms.items():
        for per_stem in seeds.values():
            if all(len(per_stem[s]) >= 2 for s in stems):
                sample_r.append(r([per_stem[s][0]["dice"] for s in stems], [per_stem[s][1]["dice"] for s in stems]))
        own = vectors[arm]
        training_r += [r(own[a], own[b]) for a, b in itertools.combinations(sorted(own), 2)]
        if len(own) > 1:
            spread.append(float(np.std([np.mean(v) for v in own.values()], ddof=1)))
    arm_r = {f"{arm} vs {other}": mean([r(vectors[arm][s], vectors[other][s])
                                        for s in sorted(set(vectors[arm]) & set(vectors[other]))])
             for arm, other in pairs if arm in vectors and other in vectors}
    return {"masks": len(stems), "sample_seed_r": mean(sample_r), "training_seed_r": mean(training_r),
            "arm_r": arm_r, "training_seed_sd": mean(spread)}


def decision_margin(plan: dict, ceiling: float | None, table: list[dict]) -> dict:
    """The refutation margin: fixed (``stats.margin``: 0.03 Dice in the compact plan) or, with
    ``stats.margin_fraction_of_headroom`` (the amended plan), that fraction of (ceiling − chance),
    chance = the ``margin_chance_arm``'s mean chance Dice at the primary CFG and mask guidance.
    ``absolute`` is None while the ceiling or that arm's pools are missing (no decision yet)."""
    stats = plan["stats"]
    if "margin_fraction_of_headroom" not in stats:
        return {"absolute": stats["margin"], "rule": f"fixed +{stats['margin']:g} Dice"}
    _, primary_guidance = mask_guidances(plan)
    chance = next((row["chance_dice"] for row in table if row["arm"] == stats["margin_chance_arm"]
                   and row["cfg"] == stats["primary_cfg"] and row["mask_guidance"] == primary_guidance), None)
    fraction = stats["margin_fraction_of_headroom"]
    absolute = fraction * (ceiling - chance) if ceiling is not None and chance is not None else None
    return {"absolute": absolute, "fraction_of_headroom": fraction, "ceiling": ceiling, "chance": chance,
            "chance_arm": stats["margin_chance_arm"],
            "rule": f"{fraction:g} x (ceiling - chance of the {stats['margin_chance_arm']} arm at CFG "
                    f"{stats['primary_cfg']:g}, mask guidance {primary_guidance:g})"}


def analyse(bench: Bench, command: str) -> dict:
    """Write results.json, results.md, probe.png and (LAW seed 0) law_analysis.{json,png}."""
    from laworder.experiments.figures import plot_probe

    results = score_table(bench)
    results["command"] = command
    results["decision_rule"] = bench.plan["decision_rule"]
    results["pieces_done"] = sorted(p.stem for p in bench.pieces_dir.glob("*.json"))
    runs = {f"{arm} seed{seed}": bench.run_path("arms", arm, f"seed{seed}")
            for arm in bench.plan["arms"] for seed in bench.plan["controlnet"]["seeds"][:1]}
    probe = plot_probe({k: v for k, v in runs.items() if v.is_dir()}, bench.out / "probe.png")
    if probe is None and (bench.out / "probe.png").is_file():  # drawn before the run folders were lost
        probe = bench.out / "probe.png"
    results["probe_figure"] = probe.name if probe else None
    law_run, law = bench.run_path("arms", "law", "seed0"), None
    if (law_run / "model" / "last").is_dir():
        from laworder.experiments.law_analysis import write_law_analysis

        law = write_law_analysis(law_run, bench.out, data=bench.data)
    elif (bench.out / "law_analysis.json").is_file():  # the run folder is gone (git-ignored): keep what it gave
        law = json.loads((bench.out / "law_analysis.json").read_text())
    if law:
        results["law_analysis"] = {k: law[k] for k in ("delta", "delta_other_image", "delta_zero_eps")}
        results["law_analysis"]["contrast"] = {"final": law["contrast"]["final"], "references": law["contrast"]["references"]}
    (bench.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (bench.out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = [f"Made by: `{results['command']}`", "", f"Decision rule (fixed before the runs): {results['decision_rule']}", ""]
    ceiling = results.get("ceiling")
    if ceiling:
        lines += [f"Judge: {results['judge']['model']} ({results['judge']['run']}); real-test Dice (the ceiling) "
                  f"{ceiling['pooled_dice']:.3f} over {ceiling['images']} images", ""]
    lines += ["| Arm | CFG | mask guidance | seeds | masks | Dice | Dice per seed | IoU | boundary F (2 px) | chance | headroom | Dice small / medium / large |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["table"]:
        bins = " / ".join(f"{row['dice_by_size'][b]['dice']:.3f} ({row['dice_by_size'][b]['masks']})" if b in row["dice_by_size"] else "-"
                          for b in ("small", "medium", "large"))
        lines.append(f"| {row['arm']} | {row['cfg']:g} | {row['mask_guidance']:g} | {len(row['training_seeds'])} | {row['masks']} "
                     f"| {row['dice']:.3f} | {', '.join(f'{v:.3f}' for v in row['dice_per_seed'])} | {row['iou']:.3f} "
                     f"| {row['boundary_f']:.3f} | {row['chance_dice']:.3f} | {row.get('headroom', float('nan')):.2f} | {bins} |")
    margin = results.get("margin")
    if margin and "fraction_of_headroom" in margin:
        value = "not yet known" if margin["absolute"] is None else f"{margin['absolute']:+.4f} Dice"
        parts = [f"ceiling {margin['ceiling']:.4f}" if margin["ceiling"] is not None else "ceiling -",
                 f"chance {margin['chance']:.4f}" if margin["chance"] is not None else "chance -"]
        lines += ["", f"Refutation margin: {margin['rule']} = {value} ({', '.join(parts)})"]
    lines += ["", "| Comparison | CFG | mask guidance | Δ Dice | 95 % CI | seeds | decision |", "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        ci = c["ci"]
        verdict = c["decision"]["verdict"] if c["decision"] else "secondary"
        lines.append(f"| {c['arm']} − {c['comparator']} | {c['cfg']:g} | {c.get('mask_guidance', 1.0):g} | {ci['difference']:+.3f} "
                     f"| [{ci['low']:+.3f}, {ci['high']:+.3f}] "
                     f"| {ci['seeds'][0]} vs {ci['seeds'][1]} | {verdict}{' (' + c['seeds_note'] + ')' if c['seeds_note'] else ''} |")
    if results.get("clamp_share"):
        def share(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"
        lines += ["", "The clamp's share (means over each LAW run's last 10 logged steps): share of lesion latents at "
                  "w_max, and w_clamped_fraction (share of all latents the clamp changed)", "",
                  "| LAW run | steps | lesion at w_max | w_clamped_fraction |", "|---|---|---|---|"]
        for name, row in results["clamp_share"].items():
            steps = "-" if not row.get("steps") else f"{row['steps'][0]}-{row['steps'][1]}"
            lines.append(f"| {name} | {steps} | {share(row['w_at_max_lesion'])} | {share(row['w_clamped_fraction'])} |")
    if results.get("regime"):
        reg = results["regime"]
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"
        lines += ["", f"Can the objectives differ here? (primary CFG and mask guidance, {reg['masks']} masks; Pearson r of "
                  f"per-mask Dice) two sample seeds of one ControlNet {fmt(reg['sample_seed_r'])}; two training seeds of "
                  f"one arm {fmt(reg['training_seed_r'])}; two arms at one training seed: "
                  + ", ".join(f"{k} {fmt(v)}" for k, v in reg["arm_r"].items())
                  + f". Training-seed std of an arm's mean Dice: {reg['training_seed_sd'] or float('nan'):.4f}."]
    if results.get("law_analysis"):
        law = results["law_analysis"]
        lines += ["", f"What LAW learned (seed 0): mean δ lesion / boundary / background = "
                  + " / ".join(f"{law['delta']['true'][r]:.3f}" if law['delta']['true'][r] is not None else "-"
                               for r in ("lesion", "boundary", "background"))
                  + f"; |δ(own ε̂) − δ(another image's ε̂, same mask)| = {law['delta_other_image']['mean_abs_difference']:.4f}; "
                  f"final lesion:background weight {law['contrast']['final'] or float('nan'):.2f} vs ratio {law['contrast']['references']['ratio_pooled']:.1f} "
                  f"and LAW-with-δ=m {law['contrast']['references']['law_delta_equals_mask_pooled']:.1f} (law_analysis.png)"]
    lines += ["", f"Pieces done: {len(results['pieces_done'])}", ""]
    return "\n".join(lines)


def run_pieces(bench: PieceBook, until: str | None = None, poll_seconds: float = 15.0) -> list[str]:
    """Do every unfinished piece (up to ``until``); returns the names this process did.

    Several processes may run at once (``run`` in two shells on two cores): each takes the first
    group that is neither done nor claimed by a live process and whose groups it needs are done,
    claims it (a lock on a file under ``claims/``, released by the kernel if the process dies), and
    waits when nothing is ready yet. One process does the groups in order."""
    ran: list[str] = []
    claims, waiting = bench.out / "claims", ""
    while True:
        groups = bench.groups()
        done = {group for group, _, items in groups if all(bench.finished(name) for name, _ in items)}
        if until is not None and bench.finished(until):
            return ran
        todo = [(group, needs, items) for group, needs, items in groups if group not in done]
        if not todo:
            return ran
        ready = next(((g, items) for g, needs, items in todo if set(needs) <= done and claim(claims, g, bench.tag)), None)
        if ready is None:
            # the first unfinished group only needs finished groups, so one is running elsewhere
            message = (f"[{bench.tag}] waiting: {', '.join(g for g, _, _ in todo if claimed_by_live(claims, g))} "
                       "running in another process")
            if message != waiting:
                print(message, flush=True)
                waiting = message
            time.sleep(poll_seconds)
            continue
        group, items = ready
        try:
            bench.before_group()  # e.g. an adopted run or pinned weights changed under a long run: refused
            for name, piece in items:
                if not bench.finished(name):
                    print(f"[{bench.tag}] piece {name}", flush=True)
                    started = time.time()
                    record = piece()
                    record.setdefault("piece_seconds", time.time() - started)
                    bench.finish(name, record)
                    ran.append(name)
                if name == until:
                    return ran
        finally:
            release(claims, group)


def claim(claims: Path, group: str, tag: str = "synth_fair") -> bool:
    """Claim ``group`` for this process: True if it is now ours. A claim is the run lock
    (``laworder.runlock``: a flock the kernel drops if the holder dies) of ``claims/<group>/``."""
    from laworder.errors import RunLockedError
    from laworder.runlock import acquire

    try:
        acquire(claims / group, what=f"{tag} group")
    except RunLockedError:
        return False
    return True


def release(claims: Path, group: str) -> None:
    from laworder.runlock import release as release_lock

    release_lock(claims / group)


def claimed_by_live(claims: Path, group: str) -> bool:
    """Whether a live process (this one included) holds ``group``."""
    from laworder.runlock import is_locked

    return is_locked(claims / group)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "status", "analyse", "plan"])
    parser.add_argument("--plan", choices=sorted(PLANS), default="full",
                        help="full: the issue's sizes (days on 2 CPU cores, minutes per piece on a GPU); compact: "
                             "64² images, every piece within one session on 2 cores; amended: issue 26's "
                             "pre-registered test on synth_generators' adopted VAE/base/judge; amended2: the same with its own "
                             "VAE/base/judge (the adopted runs were lost)")
    parser.add_argument("--out", help="default: bench/results/synth_fair (full), bench/results/synth_fair/<plan> "
                                      "(compact, amended, amended2)")
    parser.add_argument("--tiny", action="store_true", help="procedural data, toy sizes (a smoke test of the protocol)")
    parser.add_argument("--until", help="stop after this piece (e.g. base, arm_law_seed0)")
    parser.add_argument("--replan", action="store_true", help="overwrite plan.json (say why in the README)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.tiny and args.plan == "amended":
        raise SystemExit("--tiny --plan amended: use tiny_amended_plan(source) (it needs a finished tiny run to adopt)")
    plan = tiny_plan() if args.tiny else PLANS[args.plan]
    default_out = ROOT / "bench" / "results" / "synth_fair"
    out = Path(args.out) if args.out else default_out / ("" if args.plan == "full" else args.plan)
    bench = Bench(plan, out)
    command = "python bench/synth_fair.py " + " ".join(sys.argv[1:])
    fix_plan(plan, out, args.replan)
    if args.action == "plan":
        print(json.dumps(plan, indent=2))
        return 0
    if args.action == "status":
        bench.print_status()
        return 0
    if args.action == "run":
        run_pieces(bench, args.until)
    analyse(bench, command)
    print(f"[synth_fair] results: {out / 'results.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

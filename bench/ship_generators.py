"""Ship trained mask-to-image generators into the package (issue 25 item 4), one command.

    python bench/ship_generators.py polyps/law=FOLDER polyps/uniform=FOLDER [--check-masks DATA]

FOLDER is a finished ``laworder synth train`` run (a ControlNet on a ``synth pretrain`` base with
a ``synth pretrain-vae`` VAE), or a folder holding it: the run is found inside (``config.yaml`` of
stage ``controlnet`` with ``model/last/controlnet.safetensors``). Its base run and VAE are the
ones its config records, or, when those paths do not exist on this machine, the base run
(stage ``base``) and the VAE (``model/vae/config.json``) found inside FOLDER. ``FOLDER/metrics.json``
(any JSON object: recovery Dice, FID/KID with their weights and floor, MS-SSIM diversity, ...)
goes onto the card as given; ``FOLDER/README.md`` is quoted on it.

Writes ``src/laworder/pretrained/synth/<dataset>-<variant>/`` (meta.json, card.md) and the
content-addressed weight files in ``src/laworder/pretrained/synth/_modules/`` (float16 when the
images stay within --tolerance 8-bit levels of the float32 weights'), then prints the sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/profile.py shadows stdlib
sys.path.insert(0, str(ROOT / "src"))

DEST = ROOT / "src" / "laworder" / "pretrained"


def _configs(folder: Path, depth: int = 4) -> list[tuple[Path, dict[str, Any]]]:
    """(run folder, its config.yaml) for every run folder in ``folder`` (``folder`` itself included)."""
    from laworder.config import load_yaml

    found = []
    for config in sorted([folder / "config.yaml", *[p for d in range(1, depth + 1) for p in folder.glob("*/" * d + "config.yaml")]]):
        if config.is_file():
            try:
                found.append((config.parent, load_yaml(config) or {}))
            except Exception:  # not a YAML we wrote: not a run
                continue
    return found


def locate(folder: Path) -> tuple[Path, Path | None, Path | None]:
    """(ControlNet run, base override or None, VAE override or None) inside ``folder``."""
    runs = _configs(folder)
    controlnets = [run for run, cfg in runs if cfg.get("stage", "controlnet") == "controlnet" and "objective" in cfg
                   and (run / "model" / "last" / "controlnet.safetensors").is_file()]
    if len(controlnets) != 1:
        sys.exit(f"{folder}: expected one finished ControlNet run (config.yaml + model/last/controlnet.safetensors), "
                 f"found {[str(r) for r in controlnets] or 'none'}")
    run = controlnets[0]
    config = dict(runs)[run]
    base = None
    if config.get("base") and not Path(config["base"]).is_dir():
        bases = [r for r, cfg in runs if cfg.get("stage") == "base" and (r / "model" / "last" / "unet.safetensors").is_file()]
        if len(bases) != 1:
            sys.exit(f"{run} names base run {config['base']}, absent here, and {folder} holds {len(bases)} base runs")
        base = bases[0]
    recorded_vae = (config.get("backbone_kwargs") or {}).get("vae")
    if base is not None and not recorded_vae:
        from laworder.config import load_yaml

        recorded_vae = ((load_yaml(base / "config.yaml") or {}).get("backbone_kwargs") or {}).get("vae")
    vae = None
    if recorded_vae and not Path(recorded_vae).exists():
        vaes = sorted({p.parent for p in folder.rglob("config.json") if (p.parent / "diffusion_pytorch_model.safetensors").is_file()
                       and "latent_channels" in p.read_text()})
        if len(vaes) != 1:
            sys.exit(f"{run} uses VAE {recorded_vae}, absent here, and {folder} holds {len(vaes)} VAE folders")
        vae = vaes[0]
    return run, base, vae


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("generators", nargs="+", metavar="NAME=FOLDER", help="e.g. polyps/law=/path/to/polyps_law")
    parser.add_argument("--check-masks", help="masks for the float16 check (default: the run's test masks)")
    parser.add_argument("--check-count", type=int, default=8, help="masks in the float16 check (8)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"))
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest 8-bit pixel difference float16 may cause (default: laworder.synth.ship's, 4)")
    parser.add_argument("--description", help="the card's paragraph (default: made from the run's config)")
    parser.add_argument("--dest", default=str(DEST), help="weights dir (default: the package's)")
    return parser.parse_args()


def main() -> None:
    from laworder.synth.ship import DEFAULT_TOLERANCE, export_generator
    from laworder.synth.sampler import find_run

    args = parse()
    for spec in args.generators:
        name, _, source = spec.partition("=")
        if not source:
            sys.exit(f"give NAME=FOLDER, got {spec!r}")
        folder = Path(source).expanduser().resolve()
        run, base, vae = locate(folder)
        _, config = find_run(run)
        metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
        notes = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
        description = args.description or (
            f"A `{config.objective}`-weighted ControlNet ({config.loop.max_steps} steps) on a pretrained base UNet "
            f"({'frozen' if config.unet_trainable == 'none' else f'trained with the ControlNet: unet_trainable={config.unet_trainable}'}) "
            f"and a frozen VAE, all trained on {name.split('/')[0]} training images only with `laworder synth pretrain-vae`, "
            "`synth pretrain` and `synth train --base` (steps and commands below).")
        print(f"{name}: shipping {run}" + (f" (base {base})" if base else "") + (f" (VAE {vae})" if vae else ""), flush=True)
        weights = export_generator(
            run, args.dest, name, description=description,
            command=f"see the three stages below; then python bench/ship_generators.py {name}=<run folder>",
            metrics=metrics, notes=notes, dtype=args.dtype,
            tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
            check_masks=args.check_masks, check_count=args.check_count, base=base, vae=vae, source_name=str(folder))
        check = weights.meta["fp16_check"]
        print(f"{name}: {weights.meta['dtype']}, {weights.size_bytes / 1e6:.1f} MB of weights, float16 check max "
              f"{check.get('float16_rejected', check)['max_abs_levels']} levels over {check['masks']} masks "
              f"-> {weights.folder}")
    total = sum(p.stat().st_size for p in Path(args.dest).rglob("*") if p.is_file())
    print(f"all shipped weights under {args.dest}: {total / 1e6:.1f} MB (build the wheel to see its size: "
          "python -m pip wheel . --no-deps -w /tmp/wheel)")


if __name__ == "__main__":
    main()

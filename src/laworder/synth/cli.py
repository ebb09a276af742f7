"""``laworder synth``: train (``train_synth``), sample (``sample_pool``), list.

Thin: parses arguments, calls the API, prints. Loaded by ``laworder.cli`` through
``add_commands`` (the run options are the shared ones of ``laworder seg train``).
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from laworder.cli import _build_config
    from laworder.synth.config import SynthConfig
    from laworder.synth.task import train_synth

    backbone_kwargs = {k: v for k, v in (("pretrained_path", args.pretrained), ("controlnet_path", args.controlnet),
                                         ("prompt", args.prompt)) if v is not None}
    extra = {"data": args.data, "objective": args.objective, "backbone": args.backbone, "resolution": args.resolution}
    if args.lr is not None:
        extra["loop"] = {"lr": args.lr}
    if backbone_kwargs:
        extra["backbone_kwargs"] = backbone_kwargs
    config = _build_config(SynthConfig, args, extra)
    run_dir = train_synth(config)
    from laworder.experiments.figures import plot_probe

    probe = plot_probe(run_dir, run_dir / "probe.png")  # only when probe_every > 0
    print(f"run folder: {run_dir}  (weights in model/last, delta-map snapshots in snapshots/, curves in metrics.jsonl"
          + (f", mask probe in {probe.name})" if probe else ")"))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from laworder.synth.sampler import sample_pool

    pool = sample_pool(
        args.run, args.masks, args.out, steps=args.steps, guidance_scale=args.guidance, eta=args.eta, seed=args.seed,
        batch_size=args.batch_size, split=args.split, batched_cfg=not args.two_pass, limit=args.limit,
        layout=args.layout, device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
        mask_guidance=args.mask_guidance,
    )
    from laworder.parallel import process_state

    if process_state().is_main_process:  # under accelerate launch every process returns here
        print(f"pool: {pool} (images/, masks/, manifest.json; `laworder seg train --set extra_train=[{pool}]` reads it)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from laworder.synth.backbones import BACKBONES
    from laworder.synth.weighting import OBJECTIVES

    for title, registry in (("objectives", OBJECTIVES), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, doc in registry.describe().items():
            print(f"  {name:22s} {doc}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from laworder.cli import _common_run_options

    synth = sub.add_parser("synth", help="mask-conditioned diffusion: train (LAW and baselines), sample pools")
    actions = synth.add_subparsers(dest="action", required=True)

    p = actions.add_parser("train", help="train a ControlNet-conditioned diffusion model with a weighting objective")
    _common_run_options(p)
    p.add_argument("--data", help="dataset folder or procedural[:N[:SIZE[:SEED]]]")
    p.add_argument("--objective", "--method", dest="objective",
                   help="uniform, fixed, ratio, law, adaptive_distillation, noise_consistency, siamese (laworder synth list)")
    p.add_argument("--backbone", help="builtin (default) or sd15")
    p.add_argument("--pretrained", help="sd15: local diffusers-format Stable Diffusion 1.5 folder")
    p.add_argument("--controlnet", help="sd15: ControlNet folder to start from (default: from the UNet)")
    p.add_argument("--prompt", help="sd15: text prompt (dropped with probability cond_drop_prob)")
    p.add_argument("--resolution", type=int, help="image size (default 64 builtin, 384 sd15)")
    p.add_argument("--lr", type=float)
    p.set_defaults(func=_train)

    p = actions.add_parser("sample", help="DDIM + classifier-free guidance: one image per mask -> pool folder")
    p.add_argument("run", help="synth train run folder (or its model/last, or a checkpoint folder)")
    p.add_argument("masks", help="folder of masks, or a dataset (see --split)")
    p.add_argument("out", help="pool folder to write (images/, masks/, manifest.json)")
    p.add_argument("--split", default="train", help="dataset part: train, test or a test-subset name")
    p.add_argument("--layout", default="auto")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=10.0, help="CFG scale on the image token, >= 0 (1 = off)")
    p.add_argument("--mask-guidance", type=float, default=1.0,
                   help="guidance scale on the mask, >= 0: pushes away from the UNet without ControlNet (1 = off)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="base seed; each mask uses seed + crc32(stem)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--two-pass", action="store_true", help="unconditional and conditional passes separately")
    p.add_argument("--limit", type=int, help="only the first N masks")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sample)

    p = actions.add_parser("list", help="registered weighting objectives and backbones")
    p.set_defaults(func=_list)

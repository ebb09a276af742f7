"""``laworder synth``: pretrain-vae (``train_vae``), pretrain and train (``train_synth``), config,
sample (``sample_pool``), vae-dice (``reconstruction_dice``), list.

Thin: parses arguments, calls the API, prints (the run options are the shared ones of
``laworder seg train``, ``laworder.cli.common``). The probe figure and ``vae-dice`` come from
``laworder.experiments``, which sits above ``synth``: only the command line joins the two.
"""

from __future__ import annotations

import argparse

from laworder.cli.common import build_config, common_run_options, print_config, write_json_out


def _config(args: argparse.Namespace):
    """The ``SynthConfig`` that ``synth pretrain`` / ``synth train`` with these arguments would run."""
    from laworder.synth.config import SynthConfig

    backbone_kwargs = {k: v for k, v in (("pretrained_path", args.pretrained), ("controlnet_path", getattr(args, "controlnet", None)),
                                         ("prompt", args.prompt), ("vae", args.vae)) if v is not None}
    extra = {"data": args.data, "objective": getattr(args, "objective", None), "backbone": args.backbone,
             "resolution": args.resolution, "base": getattr(args, "base", None),
             "probe_every": getattr(args, "probe_every", None)}
    if args.stage == "base":
        extra.update(stage="base", objective="uniform")
    if backbone_kwargs:
        extra["backbone_kwargs"] = backbone_kwargs
    return build_config(SynthConfig, args, extra)


def _print_config(args: argparse.Namespace) -> int:
    from laworder.config import check_seed

    config = _config(args)
    check_seed("loop.seed", config.loop.seed)  # a seed train would refuse is refused here too
    return print_config(config)


def _check_light(config) -> None:
    """The checks that need no torch, before the training code is imported: a bad loop value or a
    missing data folder is answered at once (the training code repeats them)."""
    from laworder.data.source import check_data_source
    from laworder.training.validate import check_loop_config

    check_data_source(config.data)  # first: the loop check imports torch for the optimizer names
    check_loop_config(config.loop)


def _train(args: argparse.Namespace) -> int:
    config = _config(args)
    _check_light(config)
    from laworder.experiments.figures import plot_probe
    from laworder.synth.task import train_synth

    run_dir = train_synth(config)

    probe = plot_probe(run_dir, run_dir / "probe.png")  # only when probe_every > 0
    print(f"run folder: {run_dir}  (weights in model/last (EMA) and model/raw, samples of held-out masks in "
          "validation/, delta-map snapshots in snapshots/, curves in metrics.jsonl"
          + (f", mask probe in {probe.name})" if probe else ")"))
    return 0


def _pretrain_vae(args: argparse.Namespace) -> int:
    import json

    from laworder.synth.vae import VaeConfig, train_vae  # VaeConfig lives beside the torch code

    extra = {"data": args.data, "resolution": args.resolution, "latent_channels": args.latent_channels}
    run_dir = train_vae(build_config(VaeConfig, args, extra))
    report = json.loads((run_dir / "eval.json").read_text())
    print(f"run folder: {run_dir}  (diffusers VAE in model/vae, scaling_factor {report['scaling_factor']:.4f}); "
          f"held-out reconstruction PSNR {report['held_out_psnr']:.2f} dB over {report['held_out_images']} images")
    return 0


def _vae_dice(args: argparse.Namespace) -> int:
    from laworder.experiments.reconstruction import format_reconstruction_dice, reconstruction_dice

    result = reconstruction_dice(args.vae, args.segmenter, data=args.data, subsets=args.subset, which=args.which,
                                 limit=args.limit, device=args.device)
    print(format_reconstruction_dice(result))
    if args.out:
        write_json_out(args.out, result)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from laworder.errors import UsageError
    from laworder.synth.sampler import sample_pool

    if len(args.paths) != (2 if args.pretrained else 3):
        raise UsageError(f"synth sample takes {'MASKS OUT with --pretrained' if args.pretrained else 'RUN MASKS OUT'}, "
                         f"got {len(args.paths)} paths: {' '.join(args.paths)}")
    run, (masks, out) = (None, args.paths) if args.pretrained else (args.paths[0], args.paths[1:])
    # settings not given: a shipped generator's card, else the paper's sampler (DDIM 50, CFG 10, no mask guidance)
    defaults = {"steps": 50, "guidance_scale": 10.0, "mask_guidance": 1.0}
    if args.pretrained:
        from laworder.synth.pretrained import find_generator

        defaults = find_generator(args.pretrained).sampling
    pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
    pool = sample_pool(
        run, masks, out, steps=pick(args.steps, "steps"), guidance_scale=pick(args.guidance, "guidance_scale"),
        eta=args.eta, seed=args.seed, pretrained=args.pretrained,
        batch_size=args.batch_size, split=args.split, batched_cfg=not args.two_pass, limit=args.limit,
        layout=args.layout, device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
        mask_guidance=pick(args.mask_guidance, "mask_guidance"),
        resume=args.resume, skip_unreadable=args.skip_unreadable, mask_augment=args.mask_augment,
    )
    from laworder.parallel import process_state

    if process_state().is_main_process:  # under accelerate launch every process returns here
        print(f"pool: {pool} (images/, masks/, manifest.json; `laworder seg train --set extra_train=[{pool}]` reads it)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from laworder.synth.backbones import BACKBONES
    from laworder.synth.pretrained import list_generators, synth_dir
    from laworder.synth.weighting import OBJECTIVES

    for title, registry in (("objectives", OBJECTIVES), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, doc in registry.describe().items():
            print(f"  {name:22s} {doc}")
    generators = list_generators()
    print(f"shipped generators ({synth_dir()}; `laworder synth sample --pretrained NAME MASKS OUT`):")
    for generator in generators:
        meta = generator.meta
        print(f"  {generator.name:22s} {generator.resolution}x{generator.resolution}, {generator.objective} weighting, "
              f"{meta.get('dtype')}, {generator.size_bytes / 1e6:.1f} MB; card: {generator.folder / 'card.md'}")
    if not generators:
        print("  (none)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser("synth", help="mask-conditioned diffusion: train (LAW and baselines), sample pools")
    actions = synth.add_subparsers(dest="action", required=True)

    p = actions.add_parser("pretrain-vae", help="train a small AutoencoderKL (4x downsampling) on the training images")
    common_run_options(p)
    p.add_argument("--data", help="dataset folder or procedural[:N[:SIZE[:SEED]]]")
    p.add_argument("--resolution", type=int, help="image size (default 128 -> 32x32 latents)")
    p.add_argument("--latent-channels", type=int, help="latent channels (default 4)")
    p.set_defaults(func=_pretrain_vae)

    for name, helptext in (
        ("pretrain", "train the base UNet + image token alone (no ControlNet), in pixel or VAE latent space"),
        ("train", "train a mask ControlNet with a weighting objective (on a frozen --base, or jointly from scratch)"),
        ("config", "print the full synth train config as YAML (defaults <- --config <- flags and --set)"),
    ):
        p = actions.add_parser(name, help=helptext)
        common_run_options(p)
        p.add_argument("--data", help="dataset folder or procedural[:N[:SIZE[:SEED]]]")
        if name != "pretrain":
            p.add_argument("--objective", "--method", dest="objective",
                           help="uniform, fixed, ratio, law, adaptive_distillation, noise_consistency, siamese (laworder synth list)")
            p.add_argument("--base", help="a `synth pretrain` run: its UNet/embedding/VAE are loaded and frozen, "
                                          "the ControlNet is made from its UNet (--set unet_trainable=decoder|all unlocks it)")
            p.add_argument("--controlnet", help="sd15: ControlNet folder to start from (default: from the UNet)")
            p.add_argument("--probe-every", type=int, metavar="K",
                           help="every K steps: ε-MSE on held-out test pairs with true vs shuffled masks "
                                "(lesion/boundary/background) into metrics.jsonl, plotted as probe.png (0 = off)")
        p.add_argument("--vae", help="builtin: a `synth pretrain-vae` run (or diffusers AutoencoderKL folder): latent space")
        p.add_argument("--backbone", help="builtin (default) or sd15")
        p.add_argument("--pretrained", help="sd15: local diffusers-format Stable Diffusion 1.5 folder")
        p.add_argument("--prompt", help="sd15: text prompt (dropped with probability cond_drop_prob)")
        p.add_argument("--resolution", type=int, help="image size (default 64 builtin, 384 sd15; from --base when given)")
        p.add_argument("--gradient-checkpointing", action="store_true", default=None,
                       help="recompute UNet/ControlNet activations in the backward pass (less memory, slower steps)")
        p.set_defaults(func=_print_config if name == "config" else _train,
                       stage="base" if name == "pretrain" else "controlnet")

    p = actions.add_parser("vae-dice", help="Dice a frozen segmenter keeps on VAE reconstructions of real test images")
    p.add_argument("vae", help="`synth pretrain-vae` run (or diffusers AutoencoderKL folder)")
    p.add_argument("segmenter", help="`seg train` run folder (the frozen judge)")
    p.add_argument("--data", help="dataset whose test subsets are scored (default: the segmenter's)")
    p.add_argument("--subset", nargs="+", help="only these test subsets")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--limit", type=int, help="only the first N images of each subset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=_vae_dice)

    p = actions.add_parser("sample", help="DDIM + classifier-free guidance: one image per mask -> pool folder")
    p.add_argument("paths", nargs="+", metavar="[RUN] MASKS OUT",
                   help="RUN: synth train run folder (or its model/last, or a checkpoint folder), left out with "
                        "--pretrained; MASKS: folder of masks, or a dataset (see --split); OUT: pool folder to write "
                        "(images/, masks/, manifest.json)")
    p.add_argument("--pretrained", metavar="NAME",
                   help="a generator shipped in the package instead of RUN, e.g. polyps/law (laworder synth list); "
                        "its card's sampler settings are the defaults")
    p.add_argument("--split", default="train", help="dataset part: train, test or a test-subset name")
    p.add_argument("--layout", default="auto")
    p.add_argument("--steps", type=int, help="DDIM steps (default 50, or the --pretrained card's)")
    p.add_argument("--guidance", type=float,
                   help="CFG scale on the image token, >= 0 (1 = off; default 10, or the --pretrained card's)")
    p.add_argument("--mask-guidance", type=float,
                   help="guidance scale on the mask, >= 0: pushes away from the UNet without ControlNet "
                        "(1 = off, the default, or the --pretrained card's)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="base seed; each mask uses seed + crc32(stem)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--two-pass", action="store_true", help="unconditional and conditional passes separately")
    p.add_argument("--limit", type=int, help="only the first N masks")
    p.add_argument("--mask-augment", type=int, metavar="N",
                   help="N jittered copies of each mask (shift, scale, rotation, flip; every lesion kept whole "
                        "and in frame) instead of the masks themselves: N×M new pairs from M masks, each "
                        "recorded in manifest.json with its source and transform")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace the pool files in a non-empty OUT")
    p.add_argument("--resume", action="store_true", help="continue a killed pool in OUT (same settings)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="sample the readable masks and list the others in OUT/skipped.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sample)

    p = actions.add_parser("list", help="registered weighting objectives and backbones, and the shipped generators")
    p.set_defaults(func=_list)

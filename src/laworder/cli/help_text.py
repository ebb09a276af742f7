"""Help text for ``laworder``: the top-level overview and one worked example per command.

Kept apart from the parsers so every command group (``laworder.cli.*``) gets its example here in
one place; ``add_examples`` puts each into its parser's epilog (``laworder seg train -h``).
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
LAW & ORDER for medical imaging: train and run the ORDER segmenter, train mask-conditioned
diffusion models with LAW weighting, sample synthetic pools, and rebuild the paper's tables."""

OVERVIEW = """\
typical session:
  laworder data check ../shared/data/polyps
  laworder seg train --config polyps_paper -o runs/order
  laworder seg evaluate runs/order
  laworder seg predict runs/order my_images/ out/
  laworder gallery out/ -o out.html
  laworder synth train --data ../shared/data/polyps --objective law -o runs/law
  laworder synth sample runs/law ../shared/data/polyps pools/law

`laworder COMMAND -h` shows each command's options and an example. Training commands take
--config (a YAML file or a packaged name: polyps_paper, brisc_paper, tiny, table4_augmentation, ...)
and --set key.sub=value; `laworder seg config` prints the resolved config."""

# "group command" -> example lines (shown under "example:" in that command's help)
EXAMPLES: dict[str, str] = {
    "data check": "laworder data check ../shared/data/polyps",
    "data procedural": "laworder data procedural data/proc --num-images 200 --size 128",
    "data prepare-kits19": "laworder data prepare-kits19 /data/kits19 data/kits19_slices",
    "seg train": "laworder seg train --config polyps_paper -o runs/order --lr 3e-4 --report-to tensorboard\n"
                 "tensorboard --logdir runs/order/logs",
    "seg protocol": "laworder seg protocol --config polyps_paper --seeds 0 1 2 3 4 -o runs/polyps_paper/order",
    "seg config": "laworder seg config --config polyps_paper --set loop.epochs=50 > my_run.yaml\n"
                  "laworder seg train --config my_run.yaml -o runs/my_run",
    "seg evaluate": "laworder seg evaluate runs/order --which best\n"
                    "laworder seg evaluate --pretrained order/polyps --data ../shared/data/polyps --nsd-tolerance 2",
    "seg predict": "laworder seg predict runs/order my_images/ out/ --resize pad --tta\n"
                   "laworder seg predict --pretrained order/polyps my_images/ out/   # weights shipped in the package",
    "seg export": "laworder seg export runs/order order.onnx\n"
                  "laworder seg predict --onnx order.onnx my_images/ out/   # no run folder: settings in the file",
    "seg profile": "laworder seg profile --models order mk_unet --image-size 256 --out profile.json",
    "seg list": "laworder seg list          # models, then the shipped weights (resolution, test Dice)",
    "synth pretrain-vae": "laworder synth pretrain-vae --data ../shared/data/polyps --resolution 128 -o runs/vae",
    "synth pretrain": "laworder synth pretrain --data ../shared/data/polyps --vae runs/vae -o runs/base",
    "synth train": "laworder synth train --data ../shared/data/polyps --objective law -o runs/law --report-to tensorboard\n"
                   "laworder synth train --base runs/base --data ../shared/data/polyps --objective uniform -o runs/uniform",
    "synth config": "laworder synth config --objective law --gradient-checkpointing > law.yaml",
    "synth vae-dice": "laworder synth vae-dice runs/vae runs/order --limit 50",
    "synth sample": "laworder synth sample runs/law ../shared/data/polyps pools/law --split test --steps 50 --guidance 10\n"
                    "laworder synth sample --pretrained polyps/law masks/ pools/law   # a generator shipped in the package\n"
                    "laworder synth sample runs/law ../shared/data/polyps pools/law_x4 --mask-augment 4   # 4 jittered copies per mask",
    "synth list": "laworder synth list",
    "exp run": "laworder exp run table4_augmentation_tiny",
    "exp list": "laworder exp list",
    "exp mask-recovery": "laworder exp mask-recovery runs/order pools/law --out recovery.json",
    "exp fid": "laworder exp fid pools/law ../shared/data/polyps --split test --out fid.json",
    "exp law-analysis": "laworder exp law-analysis runs/law --out runs/law/analysis",
    "report": "laworder report runs/exp/table4_augmentation     # report.md and report.html",
    "gallery": "laworder gallery out/ -o predictions.html                # a seg predict output over a pair folder\n"
               "laworder gallery pools/law --predictions pools/law_pred -o pool.html",
    "export nnunet": "laworder export nnunet ../shared/data/polyps nnUNet_raw --id 501 --name Polyps --extra pools/law",
    "demo": "laworder demo -o demo_runs",
}


def leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(("seg", "train"), parser)`` for every command that has no sub-commands."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix, parser
        return
    for name, sub in actions[0].choices.items():
        yield from leaf_parsers(sub, prefix + (name,))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give every command its one-line help as description and its example as epilog (kept verbatim)."""
    for path, sub, helptext in _sub_parsers(parser):
        name = " ".join(path)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        if sub.description is None and helptext:
            sub.description = helptext
        if sub.epilog is None and name in EXAMPLES:
            sub.epilog = "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name].splitlines())


def _sub_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(path, parser, help line)`` for every command and command group below ``parser``."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield prefix + (name,), sub, helps.get(name)
            yield from _sub_parsers(sub, prefix + (name,))

"""Run a tiny segmentation training in its own process (used by the kill -9 and DDP tests).

    python seg_train_script.py OUT_DIR [--kill-at STEP] [--resume] [--dump-weights]

With ``--kill-at`` the process SIGKILLs itself right after that many optimizer steps, the
way an out-of-memory killer or a pre-empted node would stop it. ``--dump-weights`` writes
``rank<k>.safetensors`` with each rank's final weights (DDP test).
"""

import argparse
import os
import signal
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--data", required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dump-weights", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from laworder.seg.config import SegTrainConfig
    from laworder.seg.task import SegTask
    from laworder.seg.train import train_segmenter
    from laworder.training import LoopConfig, save_weights

    if args.kill_at is not None:
        original = SegTask.training_step
        calls = {"n": 0}

        def killing_step(self, batch, generator):
            if calls["n"] == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            calls["n"] += 1
            return original(self, batch, generator)

        SegTask.training_step = killing_step

    loop = LoopConfig(output_dir=args.out, epochs=args.epochs, batch_size=4, lr=3e-3, checkpoint_every=3,
                      progress=False, resume=args.resume, monitor="val_dice", cpu=True, log_every=1)
    config = SegTrainConfig(data=args.data, model="order", image_size=32, loop=loop, cache=True)
    run = train_segmenter(config)
    if args.dump_weights:
        rank = int(os.environ.get("RANK", "0"))
        save_weights(run.model, os.path.join(args.out, f"rank{rank}.safetensors"))
    sys.exit(0)


if __name__ == "__main__":
    main()

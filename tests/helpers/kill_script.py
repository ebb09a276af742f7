"""Stop a pool or an experiment with a real SIGKILL at a chosen point (pool-resume tests).

    python kill_script.py sample RUN MASKS OUT --kill-at-write N [--resume]
    python kill_script.py exp CONFIG.yaml OUT --kill-at-train N [--resume]

``--kill-at-write N``: SIGKILL inside the N-th mask-file write of ``synth sample`` (mid-batch);
``--kill-at-train N``: SIGKILL when the N-th segmentation training of ``exp run`` starts.
Without a kill point the command runs to the end (the uninterrupted reference or the resume).
"""

import os
import signal
import sys


def _kill_on_call(module, name: str, at: int) -> None:
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from laworder.cli import main as cli

    mode, args = sys.argv[1], sys.argv[2:]
    kill_at = None
    for flag in ("--kill-at-write", "--kill-at-train"):
        if flag in args:
            index = args.index(flag)
            kill_at = int(args[index + 1])
            del args[index : index + 2]
    if mode == "sample":
        import laworder.data.io as io

        if kill_at:
            _kill_on_call(io, "write_mask", kill_at)
        run, masks, out, *rest = args
        sys.exit(cli(["synth", "sample", run, masks, out, "--steps", "2", "--batch-size", "2", "--device", "cpu",
                      "--no-progress", *rest]))
    import laworder.seg.protocol as protocol

    if kill_at:
        _kill_on_call(protocol, "train_segmenter", kill_at)
    config, out, *rest = args
    sys.exit(cli(["exp", "run", config, "--output", out, "--no-progress", *rest]))


if __name__ == "__main__":
    main()

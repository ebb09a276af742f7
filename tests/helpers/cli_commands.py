"""Run several ``laworder`` commands in one process (one launch under torchrun / accelerate).

    python cli_commands.py synth sample ... ++ seg predict ... ++ exp mask-recovery ...

Exits with the first non-zero status.
"""

import sys

import torch


def main() -> int:
    torch.set_num_threads(1)
    from laworder.cli import main as cli

    command: list[str] = []
    for arg in sys.argv[1:] + ["++"]:
        if arg != "++":
            command.append(arg)
            continue
        status = cli(command)
        if status:
            return status
        command = []
    return 0


if __name__ == "__main__":
    sys.exit(main())

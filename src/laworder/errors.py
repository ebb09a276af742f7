"""Exception types shared by every stage, so callers can catch one family."""


class LaworderError(Exception):
    """Base class for all errors raised on purpose by laworder."""


class DataError(LaworderError, ValueError):
    """A dataset, image or mask file is missing, unreadable or inconsistent."""


class ConfigError(LaworderError, ValueError):
    """A configuration value or name is invalid."""


class NonFiniteLossError(LaworderError, RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class RunDirError(LaworderError, FileExistsError):
    """An output folder already holds another run."""


class MissingWeightsError(LaworderError, FileNotFoundError):
    """A local weight file or model folder the user must provide is absent."""


class UsageError(LaworderError, ValueError):
    """A command line argparse rejected (unknown option, wrong type, missing argument)."""


class RunLockedError(LaworderError, RuntimeError):
    """Another live process holds the run folder's lock."""


class CheckpointWriteError(LaworderError, OSError):
    """A checkpoint or weights folder could not be written (disk full, unwritable folder);
    the last good checkpoint is kept."""


class WeightsMismatchError(DataError, RuntimeError):
    """A weights file does not fit the module it is loaded into (shapes or names differ).

    Also a ``RuntimeError``, like the ``load_state_dict`` error it replaces."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training (exit 130); ``checkpoint`` is where ``--resume`` continues from.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C keeps doing so; the message says what
    was saved (a checkpoint at the interrupt, or the last one before it)."""

    def __init__(self, message: str, run_dir: str, checkpoint: str | None, saved_now: bool) -> None:
        super().__init__(message)
        self.message = message
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.saved_now = saved_now

    def __str__(self) -> str:
        return self.message

    @staticmethod
    def resume_command(argv: list[str], program: str = "laworder") -> str:
        """The command line that continues the interrupted run: ``argv`` without ``--overwrite``
        (it would delete the run) and without an earlier ``--resume [PATH]``, plus ``--resume``."""
        import shlex

        kept: list[str] = []
        skip_value = False
        for word in argv:
            if skip_value:  # ``--resume PATH|latest`` (a checkpoint), not a positional argument after it
                skip_value = False
                if word == "latest" or word.rstrip("/").rsplit("/", 1)[-1].startswith("step_"):
                    continue
            if word in ("--overwrite", "--debug"):
                continue
            if word == "--resume":
                skip_value = True
                continue
            if word.startswith("--resume="):
                continue
            kept.append(word)
        return shlex.join([program, *kept, "--resume"])

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

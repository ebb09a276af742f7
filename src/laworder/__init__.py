"""laworder: adaptive spatial weighting for lesion segmentation (ORDER) and
mask-conditioned diffusion (LAW).

Pipeline: data -> models / synth -> training -> seg / synth apps -> metrics -> experiments -> cli.
"""

__version__ = "0.1.0"

from laworder.errors import LaworderError, DataError, ConfigError, NonFiniteLossError  # noqa: F401

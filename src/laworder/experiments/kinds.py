"""Every experiment kind, registered in ``EXPERIMENTS`` on import (the runner and the report
both read the registry from here, so neither imports the other to fill it)."""

from laworder.experiments import augmentation, seg_tables, synth_tables  # noqa: F401  (register the kinds)
from laworder.experiments.base import EXPERIMENTS

__all__ = ["EXPERIMENTS"]

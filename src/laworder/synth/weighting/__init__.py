"""Per-pixel loss weighting objectives for mask-conditioned diffusion.

One interface (``Objective``), one registry (``OBJECTIVES``); adding a method is one module
here with one ``@OBJECTIVES.register`` decorator. ``create_objective(name, **kwargs)``.
"""

from laworder.synth.weighting.base import (  # noqa: F401
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    create_objective,
    mask_at_prediction_resolution,
    objective_backbone_defaults,
    ratio_prior,
)
from laworder.synth.weighting import (  # noqa: F401  (registration side effects)
    distillation,
    fixed,
    law,
    noise_consistency,
    ratio,
    siamese,
    uniform,
)
from laworder.synth.weighting.law import DeltaNet, LawObjective  # noqa: F401

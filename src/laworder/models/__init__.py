"""laworder.models: segmenters behind one registry, plus parameter/FLOP counting.

``create_model("order", in_channels=3, num_classes=1)`` builds any registered segmenter;
``list_models()`` names them. Importing this package imports every model module so that each
``@register_model`` runs.
"""

from laworder.models.factory import create_model
from laworder.models.registry import MODELS, list_models, register_model
from laworder.models import ege_unet, mk_unet, order  # noqa: F401  (registers the models)
from laworder.models import nnunet2d  # noqa: F401  (registers nnunet2d, MONAI DynUNet)
from laworder.models import unisegdiff  # noqa: F401  (registers unisegdiff, a diffusion segmenter)

__all__ = ["MODELS", "create_model", "list_models", "register_model"]

"""Model registry and the networks mpoxscan trains: seed CNN, VGG16, EfficientNet-Lite0/1/2.

Importing this package registers every model (each module's ``@register_model`` runs).
"""

from mpoxscan.models import efficientnet_lite, seed_cnn, vgg16
from mpoxscan.models.registry import (
    ModelSpec,
    MpoxNet,
    WeightsError,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "MpoxNet",
    "WeightsError",
    "create_model",
    "efficientnet_lite",
    "get_model_spec",
    "list_models",
    "register_model",
    "seed_cnn",
    "vgg16",
]

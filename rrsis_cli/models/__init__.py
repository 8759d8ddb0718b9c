"""Model registry and the stable Python API (DESIGN §3)."""

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.init import init_model
from rrsis_cli.models.io import (
    build_from_config,
    build_model,
    is_model_dir,
    load_model,
    random_model,
    save_model,
)
from rrsis_cli.models.registry import (
    MissingWeightsError,
    ModelSource,
    architectures,
    list_cards,
    model_source,
    read_card,
    require_weights,
)

__all__ = [
    "MissingWeightsError",
    "ModelSource",
    "ReferringSegmenter",
    "TextFeatures",
    "architectures",
    "build_from_config",
    "build_model",
    "init_model",
    "is_model_dir",
    "list_cards",
    "load_model",
    "model_source",
    "random_model",
    "read_card",
    "require_weights",
    "save_model",
]


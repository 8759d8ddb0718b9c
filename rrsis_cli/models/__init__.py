"""Model registry and the stable Python API (DESIGN §3)."""

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.init import init_model
from rrsis_cli.models.io import build_from_config, build_model, is_model_dir, load_model, save_model
from rrsis_cli.models.registry import architectures, list_cards, read_card

__all__ = [
    "ReferringSegmenter",
    "TextFeatures",
    "architectures",
    "build_from_config",
    "build_model",
    "init_model",
    "is_model_dir",
    "list_cards",
    "load_model",
    "read_card",
    "save_model",
]


"""Model registry and the stable Python API (DESIGN §3).

Names are imported on first use (PEP 562), so ``from rrsis_cli.models import list_cards`` or
``describe_model`` does not import torch and transformers; ``load_model`` and ``build_model`` do.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReferringSegmenter": "rrsis_cli.models.base",
    "TextFeatures": "rrsis_cli.models.base",
    "init_model": "rrsis_cli.models.init",
    "build_from_config": "rrsis_cli.models.io",
    "build_model": "rrsis_cli.models.io",
    "load_model": "rrsis_cli.models.io",
    "random_model": "rrsis_cli.models.io",
    "save_model": "rrsis_cli.models.io",
    "ModelInfo": "rrsis_cli.models.info",
    "describe_model": "rrsis_cli.models.info",
    "is_model_dir": "rrsis_cli.models.info",
    "MissingWeightsError": "rrsis_cli.models.registry",
    "ModelSource": "rrsis_cli.models.registry",
    "architectures": "rrsis_cli.models.registry",
    "list_cards": "rrsis_cli.models.registry",
    "model_source": "rrsis_cli.models.registry",
    "read_card": "rrsis_cli.models.registry",
    "require_weights": "rrsis_cli.models.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups (and monkeypatching in tests) see a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

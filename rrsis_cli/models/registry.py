"""Model zoo: YAML cards in ``models/`` and the architecture registry behind ``build_model``.

A card names an architecture and its hyper-parameters plus provenance. :func:`resolve_config` expands a card
into the full ``config.json`` form (Swin variant -> embed_dim/depths/heads, text-encoder preset -> BERT
config). Cards are looked up in ``$RRSIS_MODEL_CARDS`` (``:``-separated folders) and then the repository's
``models/`` folder.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import yaml

from rrsis_cli.errors import ModelError
from rrsis_cli.models.swin import SWIN_VARIANTS
from rrsis_cli.models.text import bert_config_dict

FORMAT_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Architecture name -> module defining ``MODEL_CLASS`` (a ReferringSegmenter subclass) and ``DEFAULT_CARD``.
# Modules are imported on first use, so a new architecture is one module plus one line here.
ARCHITECTURE_MODULES: dict[str, str] = {
    "lavt": "rrsis_cli.models.lavt",
    "lgce": "rrsis_cli.models.lgce",
    "rmsin": "rrsis_cli.models.rmsin",
    "crobim": "rrsis_cli.models.crobim",
    "btdnet": "rrsis_cli.models.btdnet",
}


def _arch_module(name: str):
    if name not in ARCHITECTURE_MODULES:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(architectures())}")
    try:
        return importlib.import_module(ARCHITECTURE_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name == ARCHITECTURE_MODULES[name]:
            raise ModelError(f"architecture {name!r} is not available in this version of rrsis") from exc
        raise


def architecture_class(name: str) -> type:
    return _arch_module(name).MODEL_CLASS


def default_card(name: str) -> str:
    return _arch_module(name).DEFAULT_CARD


def architectures() -> list[str]:
    """Architectures whose module is present in this installation."""
    return sorted(name for name, module in ARCHITECTURE_MODULES.items() if importlib.util.find_spec(module))


def card_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("RRSIS_MODEL_CARDS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    return [d for d in dirs if d.is_dir()]


def card_paths() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in card_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def read_card(name: str) -> dict[str, Any]:
    paths = card_paths()
    if name not in paths:
        known = ", ".join(sorted(paths)) or "none found"
        raise ModelError(f"unknown model card {name!r} (known: {known})")
    with open(paths[name], encoding="utf-8") as f:
        card = yaml.safe_load(f)
    if not isinstance(card, dict) or "arch" not in card:
        raise ModelError("model card must be a mapping with an 'arch' key", paths[name])
    card.setdefault("name", name)
    return card


def list_cards() -> list[dict[str, Any]]:
    return [read_card(name) for name in card_paths()]


def resolve_config(card: dict[str, Any]) -> dict[str, Any]:
    """Expand a card (or a partial config) into the full configuration stored in ``config.json``."""
    cfg = copy.deepcopy(card)
    cfg["format_version"] = FORMAT_VERSION
    backbone = cfg.setdefault("backbone", {})
    variant = backbone.pop("variant", None)
    if variant is not None:
        if variant not in SWIN_VARIANTS:
            raise ModelError(f"unknown Swin variant {variant!r}; known: {', '.join(SWIN_VARIANTS)}")
        for key, value in SWIN_VARIANTS[variant].items():
            backbone.setdefault(key, copy.deepcopy(value))
        backbone["variant"] = variant
    text = cfg.setdefault("text_encoder", {"preset": "bert-base-uncased"})
    if "bert_config" not in text:
        text["bert_config"] = bert_config_dict(text.get("preset", "bert-base-uncased"))
    cfg.setdefault("image_size", 480)
    cfg.setdefault("max_tokens", 20)
    cfg.setdefault("mean", list(IMAGENET_MEAN))
    cfg.setdefault("std", list(IMAGENET_STD))
    cfg.setdefault("tokenizer", {"type": "wordpiece", "vocab": "bert-base-uncased"})
    return cfg


def _sections_with(cfg: dict[str, Any], key: str):
    """Nested sections (at any depth below the top level) that contain ``key``."""
    for value in cfg.values():
        if isinstance(value, dict):
            if key in value:
                yield value
            yield from _sections_with(value, key)


def apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set single hyper-parameters: a top-level key, a key that occurs exactly once in a nested section, or an
    explicit ``section__key`` (e.g. ``backbone__num_heads``)."""
    for key, value in overrides.items():
        if "__" in key:
            section, _, leaf = key.partition("__")
            if not isinstance(cfg.get(section), dict):
                raise ModelError(f"cannot override {key!r}: no section {section!r} in {cfg.get('name')}")
            cfg[section][leaf] = value
            continue
        if key in cfg:
            cfg[key] = value
            continue
        holders = list(_sections_with(cfg, key))
        if len(holders) != 1:
            where = "no section" if not holders else "several sections"
            raise ModelError(f"cannot override {key!r}: it is in {where} of the {cfg.get('name')} configuration")
        holders[0][key] = value
    return cfg


def config_for(name: str, **overrides: Any) -> dict[str, Any]:
    """Full configuration for a card name or an architecture name (its default card), with overrides."""
    if name in card_paths():
        card = read_card(name)
    elif name in architectures():
        card = read_card(default_card(name))
    else:
        raise ModelError(f"{name!r} is neither a model card ({', '.join(sorted(card_paths()))}) "
                         f"nor an architecture ({', '.join(architectures())})")
    cfg = resolve_config(card)
    if "preset" in overrides:
        cfg["text_encoder"] = {"preset": overrides.pop("preset")}
        cfg = resolve_config(cfg)
    return apply_overrides(cfg, overrides)

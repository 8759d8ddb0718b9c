"""Model zoo: YAML cards in ``models/`` and the architecture registry behind ``build_model``.

A card names an architecture and its hyper-parameters plus provenance. :func:`resolve_config` expands a card
into the full ``config.json`` form (Swin variant -> embed_dim/depths/heads, text-encoder preset -> BERT
config). Cards are looked up in ``$RRSIS_MODEL_CARDS`` (``:``-separated folders) and then in the zoo that ships
with rrsis: the package data ``rrsis_cli/zoo/`` of an installed wheel, which the build maps from the
repository's top-level ``models/`` folder (read directly in a source checkout or an editable install).

A card may name its weights with ``model_dir:``: a model directory (a path, relative to the card's folder or
absolute; ``~`` and ``$VARS`` expanded) or ``bundled:NAME`` for a model directory shipped with rrsis
(:data:`BUNDLED_MODELS`, e.g. ``bundled:demo``). :func:`model_source` says where a ``--model`` value's weights
come from; a card without weights is refused by ``load_model`` (:class:`MissingWeightsError`) unless random
weights are asked for, except for architectures whose class sets ``needs_weights = False``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rrsis_cli.errors import EXIT_USAGE, ModelError

FORMAT_VERSION = 1
DEFAULT_IMAGE_SIZE = 480
DEFAULT_MAX_TOKENS = 20
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
    "null": "rrsis_cli.models.null",
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


# Model directories shipped with rrsis: name -> (folder in the package zoo of a wheel, folder in the repository).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {"demo": ("demo", "examples/demo-model")}
BUNDLED_PREFIX = "bundled:"


def package_zoo_dir() -> Path:
    """``rrsis_cli/zoo``: the cards (and bundled models) as package data; present in an installed wheel."""
    return Path(__file__).resolve().parents[1] / "zoo"


def repository_dir() -> Path | None:
    """The source checkout the package is imported from (a clone or an editable install), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "models").is_dir() else None


def bundled_cards_dir() -> Path | None:
    if package_zoo_dir().is_dir():
        return package_zoo_dir()
    root = repository_dir()
    return None if root is None else root / "models"


def bundled_model_dir(name: str) -> Path | None:
    """The folder of a bundled model directory (``demo``), or None when this installation lacks it."""
    if name not in BUNDLED_MODELS:
        return None
    in_package, in_repository = BUNDLED_MODELS[name]
    candidates = [package_zoo_dir() / in_package]
    if repository_dir() is not None:
        candidates.append(repository_dir() / in_repository)
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def card_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("RRSIS_MODEL_CARDS", "").split(os.pathsep) if p]
    bundled = bundled_cards_dir()
    if bundled is not None:
        dirs.append(bundled)
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
    from rrsis_cli.models.swin import SWIN_VARIANTS  # torch and transformers: only when a config is expanded
    from rrsis_cli.models.text import bert_config_dict

    cfg = copy.deepcopy(card)
    cfg.pop("model_dir", None)  # where the card's weights are, not part of a model's configuration
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
    cfg.setdefault("image_size", DEFAULT_IMAGE_SIZE)
    cfg.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
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


# ------------------------------------------------------------------------------------- where weights come from
GET_WEIGHTS = ("get weights with `rrsis convert` (an official checkpoint), `rrsis train` or `rrsis models init` "
               "(each writes a model directory to pass as --model), or pass --allow-random-weights to run with "
               "seeded random weights (tests, benchmarks)")


class MissingWeightsError(ModelError):
    """A zoo card (or architecture name) without weights where a model with weights is needed (exit code 2)."""

    exit_code = EXIT_USAGE


# ``needs_weights`` of this package's architectures, answered without importing their modules (torch), so
# `rrsis models list` and the checks before a model loads stay fast; an architecture missing here is imported and
# asked. tests/test_startup.py checks these against the classes.
BUILTIN_NEEDS_WEIGHTS = {"lavt": True, "lgce": True, "rmsin": True, "crobim": True, "btdnet": True, "null": False}


def needs_weights(arch: str) -> bool:
    """False for an architecture whose class declares ``needs_weights = False`` (no learned parameters, e.g. a
    deterministic per-pixel baseline): its cards run without a model directory."""
    if arch in BUILTIN_NEEDS_WEIGHTS and ARCHITECTURE_MODULES.get(arch) == f"rrsis_cli.models.{arch}":
        return BUILTIN_NEEDS_WEIGHTS[arch]
    return bool(getattr(architecture_class(arch), "needs_weights", True))


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of a ``--model`` value come from.

    ``kind``: ``directory`` (a model directory path), ``bundled`` (a model directory shipped with rrsis),
    ``card`` (a card whose ``model_dir`` exists), ``none`` (a card or architecture name without weights),
    ``not-needed`` (a card of an architecture without learned parameters) or ``unknown`` (none of these;
    ``load_model`` reports it). ``model_dir`` is the directory to load, ``card`` the card name, ``declared`` the
    card's ``model_dir`` entry.
    """

    spec: str
    kind: str
    model_dir: Path | None = None
    card: str | None = None
    declared: str | None = None

    def describe(self) -> str:
        """One cell of ``rrsis models list``."""
        if self.kind == "none":
            return f"missing: {self.declared}" if self.declared else "none — card only"
        if self.kind == "not-needed":
            return "not needed (no learned parameters)"
        if self.declared and self.declared.startswith(BUNDLED_PREFIX):
            return f"bundled: --model {self.declared[len(BUNDLED_PREFIX):]} ({self.model_dir})"
        return str(self.model_dir) if self.model_dir is not None else self.kind

    def refusal(self) -> MissingWeightsError:
        if self.declared:
            what = (f"model card {self.card!r} names {self.declared!r} as its weights, which this installation "
                    "does not have")
        else:
            what = f"{self.spec!r} is a model card without weights: running it would give random masks"
        return MissingWeightsError(f"{what}; {GET_WEIGHTS}")


def _card_model_dir(name: str, declared: str) -> Path | None:
    if declared.startswith(BUNDLED_PREFIX):
        return bundled_model_dir(declared[len(BUNDLED_PREFIX):])
    path = Path(os.path.expandvars(os.path.expanduser(declared)))
    if not path.is_absolute():
        path = card_paths()[name].parent / path
    return path if (path / "config.json").is_file() else None


def model_source(spec: str | Path) -> ModelSource:
    """Resolve a ``--model`` value: a model directory, a bundled model name (``demo``), a zoo card (weights from
    its ``model_dir``, if any) or an architecture name (its default card), in this order, so a folder that is not
    a model directory (an output folder called ``demo``) does not hide a name. Reads no weights."""
    path, name = Path(spec), str(spec)
    if (path / "config.json").is_file():
        return ModelSource(name, "directory", path)
    if name in BUNDLED_MODELS:
        found = bundled_model_dir(name)
        if found is None:
            raise ModelError(f"the bundled model {name!r} is not part of this installation of rrsis")
        return ModelSource(name, "bundled", found, declared=BUNDLED_PREFIX + name)
    paths = card_paths()
    if name in paths:
        card_name = name
    elif name in architectures():
        card_name = default_card(name)
    else:
        return ModelSource(name, "unknown")  # e.g. a folder without config.json: load_model says so
    card = read_card(card_name)
    declared = card.get("model_dir")
    if declared:
        found = _card_model_dir(card_name, str(declared))
        return ModelSource(name, "card" if found else "none", found, card_name, str(declared))
    return ModelSource(name, "none" if needs_weights(card["arch"]) else "not-needed", card=card_name)


def require_weights(spec: str | Path, allow_random_weights: bool = False) -> ModelSource:
    """The source of ``spec``; raises :class:`MissingWeightsError` for a card without weights unless
    ``allow_random_weights``. Cheap (no model is built), so commands call it before reading any input."""
    source = model_source(spec)
    if source.kind == "none" and not allow_random_weights:
        raise source.refusal()
    return source

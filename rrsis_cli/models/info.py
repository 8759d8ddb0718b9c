"""What a run needs to know about a model before (or without) building it: name, weights hash, input size,
token limit. Reads ``config.json`` or the zoo card and hashes the weights file; never imports torch, so
``rrsis predict`` can validate its options, plan a dry run and decide which outputs are already finished
before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrsis_cli.errors import ModelError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"

# Every architecture's input side must be a multiple of this: the Swin / ConvNeXt backbones downsample 32x
# (patch 4, three 2x merges) and the decoders upsample back by the same factors. A config may declare its own
# ``input_multiple``; none does today.
INPUT_MULTIPLE = 32


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file; remembered per (path, inode, size, mtime) in this process, so asking before the
    model is loaded and again while loading reads the file once."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def read_config(model_dir: Path) -> dict[str, Any]:
    from rrsis_cli.models.registry import FORMAT_VERSION

    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable {CONFIG_FILE}: {exc}", model_dir / CONFIG_FILE) from exc
    if not isinstance(config, dict) or "arch" not in config:
        raise ModelError(f"{CONFIG_FILE} has no 'arch'", model_dir / CONFIG_FILE)
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"format_version {config['format_version']} is newer than this rrsis understands "
                         f"({FORMAT_VERSION}); upgrade rrsis", model_dir / CONFIG_FILE)
    return config


# Random weights are always seeded with this (the same masks on every run): ``--allow-random-weights``.
RANDOM_WEIGHTS_SEED = 0


def random_weights_sha256(name: str) -> str:
    """The ``sha256`` recorded for card ``name`` built with random weights (``--allow-random-weights``)."""
    return f"random-init-seed{RANDOM_WEIGHTS_SEED}:{name}"


def no_weights_sha256(name: str) -> str:
    """The ``sha256`` recorded for a card of an architecture without learned parameters."""
    return f"no-weights:{name}"


@dataclass(frozen=True)
class ModelInfo:
    """A model as ``load_model(spec)`` would load it, described without building it."""

    spec: str
    name: str
    arch: str
    sha256: str
    image_size: int
    max_tokens: int
    input_multiple: int
    model_dir: Path | None  # None for a card without weights (random weights, bundled tokenizer)


def describe_model(spec: str | Path) -> ModelInfo | None:
    """:class:`ModelInfo` of a ``--model`` value (a model directory, a bundled model, a zoo card with or without
    weights, an architecture name; :func:`~rrsis_cli.models.registry.model_source`), with the same name and sha256
    that :func:`~rrsis_cli.models.load_model` (or ``random_model`` for a card without weights) gives the loaded
    model; ``None`` when ``spec`` is none of these (loading it then reports why). A model directory without its
    weights file raises :class:`ModelError`. Whether a card without weights may run is not decided here
    (:func:`~rrsis_cli.models.registry.require_weights`)."""
    from rrsis_cli.models import registry

    source = registry.model_source(spec)
    if source.kind == "unknown":
        return None
    if source.model_dir is not None:
        config = read_config(source.model_dir)
        weights = source.model_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelError(f"{WEIGHTS_FILE} is missing", source.model_dir)
        sha256 = file_sha256(weights)
    else:
        config = registry.read_card(str(source.card))
        label = str(config.get("name", source.card))
        sha256 = random_weights_sha256(label) if source.kind == "none" else no_weights_sha256(label)
    return ModelInfo(spec=str(spec), name=str(config.get("name")), arch=str(config["arch"]), sha256=sha256,
                     image_size=int(config.get("image_size", registry.DEFAULT_IMAGE_SIZE)),
                     max_tokens=int(config.get("max_tokens", registry.DEFAULT_MAX_TOKENS)),
                     input_multiple=int(config.get("input_multiple", INPUT_MULTIPLE)), model_dir=source.model_dir)

"""Model directories: ``build_model``, ``save_model``, ``load_model`` (DESIGN §3).

```
MODEL_DIR/config.json        full configuration ({"arch", "format_version", hyper-parameters, provenance})
MODEL_DIR/model.safetensors  every weight and persistent buffer, text encoder included
MODEL_DIR/tokenizer/         tokenizer files, loaded offline
MODEL_DIR/README.md          model card (optional)
```
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rrsis_cli import __version__, console
from rrsis_cli.errors import ModelError, OutputError
from rrsis_cli.models.base import ReferringSegmenter
from rrsis_cli.models.info import (  # noqa: F401 - re-exported: the model directory layout lives in info
    CONFIG_FILE,
    RANDOM_WEIGHTS_SEED,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    file_sha256,
    is_model_dir,
    no_weights_sha256,
    random_weights_sha256,
    read_config,
)
from rrsis_cli.models.registry import FORMAT_VERSION, architecture_class, config_for, require_weights
from rrsis_cli.models.text import bundled_tokenizer, load_pretrained_text_encoder, load_tokenizer


def build_from_config(config: dict[str, Any], seed: int | None = None) -> ReferringSegmenter:
    """Instantiate the architecture of a full configuration with random weights (eval mode)."""
    cls = architecture_class(config["arch"])
    if seed is not None:
        torch.manual_seed(seed)
    model = cls(config)
    model.tokenizer = bundled_tokenizer()
    return model.eval()


def build_model(name: str, seed: int | None = None, **overrides: Any) -> ReferringSegmenter:
    """A randomly initialised model from a zoo card or an architecture's default card.

    ``overrides`` change single hyper-parameters (e.g. ``window_size=7``, ``image_size=256``;
    ``preset="tiny"`` swaps the text encoder for a preset). ``seed`` makes the weights reproducible.
    """
    return build_from_config(config_for(name, **overrides), seed=seed)


def count_parameters(config: dict[str, Any]) -> dict[str, int]:
    """:meth:`ReferringSegmenter.parameter_counts` of a configuration, built on the meta device (no memory for
    the weights, no random initialisation: instant even for Swin-B)."""
    with torch.device("meta"):
        return architecture_class(config["arch"])(config).parameter_counts()


def tokenizer_for(model_dir: str | Path | None):
    """The tokenizer ``load_model`` attaches: the model directory's ``tokenizer/`` when present, else the
    bundled bert-base-uncased vocabulary (zoo cards, older directories)."""
    tok_dir = None if model_dir is None else Path(model_dir) / TOKENIZER_DIR
    return load_tokenizer(tok_dir) if tok_dir is not None and tok_dir.is_dir() else bundled_tokenizer()


def text_encoder_stored(config: dict[str, Any]) -> bool:
    """False when the config references a frozen, packaged text encoder instead of storing its weights
    (``text_encoder: {source: pkg:NAME, stored: false}``); such weights are read from the source at load."""
    return bool(config.get("text_encoder", {}).get("stored", True))


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def state_dict_for_saving(model: ReferringSegmenter, weights_dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors without shared storage (safetensors refuses aliases); floating
    tensors stored as ``weights_dtype`` (float32 keeps a bit-exact round trip; float16 halves the size)."""
    keep_text = text_encoder_stored(model.config)
    dtype = WEIGHT_DTYPES[weights_dtype]
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous().clone()
            for k, v in model.state_dict().items() if keep_text or not k.startswith("text_encoder.")}


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(root: Path) -> None:
    """Give ``root`` and everything below it the modes of plainly created files and folders (0666 / 0777 less the
    umask): ``tempfile.mkdtemp`` makes 0700 folders and safetensors 0600 files, which colleagues on a shared
    cluster could not read once renamed into place. Best effort: a file system without modes keeps its own."""
    mask = current_umask()

    def chmod(path: str, mode: int) -> None:
        with contextlib.suppress(OSError):
            os.chmod(path, mode & ~mask)

    chmod(str(root), 0o777)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            chmod(os.path.join(folder, name), 0o777)
        for name in files:
            chmod(os.path.join(folder, name), 0o666)


def save_model(model: ReferringSegmenter, out_dir: str | Path, overwrite: bool = True,
               readme: str | None = None, weights_dtype: str = "float32") -> Path:
    """Write a model directory atomically: built in a temporary sibling, then renamed into place, with the
    permissions the umask gives (0777 / 0666 less the umask, like any file the user creates).
    Weights are loaded back as float32 whatever ``weights_dtype`` they were stored in."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise OutputError(f"unknown weights dtype {weights_dtype!r}; known: {', '.join(WEIGHT_DTYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError("exists and is not empty (use --overwrite)", out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise OutputError(f"cannot create the model directory: {exc.strerror}", out_dir) from exc
    try:
        config = dict(model.config)
        config["format_version"] = FORMAT_VERSION
        config["rrsis_version"] = __version__
        config["weights_dtype"] = weights_dtype
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        save_file(state_dict_for_saving(model, weights_dtype), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        if readme:
            (tmp / "README.md").write_text(readme)
        share_like_umask(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load every weight, reporting missing, unexpected and mis-shaped keys in one error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)}!={tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise ModelError("weights do not match the configuration: " + "; ".join(parts), source)
    model.load_state_dict(state, strict=True)


def random_model(name: str, device: str | torch.device = "cpu", warn: bool = True) -> ReferringSegmenter:
    """A card (or architecture name) built with random weights seeded with :data:`RANDOM_WEIGHTS_SEED` (the same
    weights, hence the same masks, on every run; the caller's random state is left as it was), in eval mode on
    ``device``, with a warning that they are random. What ``--allow-random-weights`` runs."""
    with torch.random.fork_rng(devices=[]):
        built = build_model(name, seed=RANDOM_WEIGHTS_SEED)
    label = built.config.get("name", name)
    if warn:
        console.warn(f"{label}: running with RANDOM weights (seed {RANDOM_WEIGHTS_SEED}, --allow-random-weights); "
                     "the masks are meaningless")
        built.sha256 = random_weights_sha256(label)
    else:  # an architecture without learned parameters
        built.sha256 = no_weights_sha256(label)
    return built.to(device)


def load_model(model: str | Path, device: str | torch.device = "cpu",
               allow_random_weights: bool = False) -> ReferringSegmenter:
    """Load a model in eval mode on ``device``: a model directory, a bundled model (``demo``) or a zoo card that
    names its weights (``model_dir:``).

    A card (or architecture name) without weights raises :class:`MissingWeightsError` (exit code 2), unless
    ``allow_random_weights``: then it is built with random weights seeded with :data:`RANDOM_WEIGHTS_SEED` (the
    same masks on every run; the caller's random state is left as it was) and a warning is printed. Cards of an
    architecture that declares ``needs_weights = False`` are built without either.
    """
    source = require_weights(model, allow_random_weights)
    if source.model_dir is None:
        if source.kind == "unknown":
            path = Path(model)
            if path.exists():
                raise ModelError(f"not a model directory ({CONFIG_FILE} missing)", path)
            config_for(str(model))  # raises the "neither a card nor an architecture" error
        return random_model(str(model), device, warn=source.kind == "none")
    path = source.model_dir
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{WEIGHTS_FILE} is missing", path)
    cls = architecture_class(config["arch"])
    try:
        net = cls(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{CONFIG_FILE} does not describe a valid {config['arch']} model: "
                         f"{type(exc).__name__} {exc}", path / CONFIG_FILE) from exc
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"unreadable weights: {exc}", weights) from exc
    if not text_encoder_stored(config):
        source = config["text_encoder"].get("source")
        if not source:
            raise ModelError("text_encoder.stored is false but no text_encoder.source is given",
                             path / CONFIG_FILE)
        encoder, _, _ = load_pretrained_text_encoder(source)
        state.update({f"text_encoder.{k}": v for k, v in encoder.state_dict().items()})
    load_state_strict(net, state, weights)
    net.tokenizer = tokenizer_for(path)
    net.sha256 = file_sha256(weights)
    return net.eval().to(device)


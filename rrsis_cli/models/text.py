"""Text encoders (BERT-like Hugging Face models) and WordPiece tokenizers, always loaded from local files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer
from transformers.utils import logging as hf_logging

from rrsis_cli.errors import ModelError

BUNDLED_VOCAB = Path(__file__).resolve().parents[1] / "assets" / "bert-base-uncased-vocab.txt"

# Configurations of the BERT-like encoders the zoo refers to (hyper-parameters only, no weights).
BERT_PRESETS: dict[str, dict] = {
    "bert-base-uncased": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "intermediate_size": 3072},
    "minilm-l6-h384-uncased": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                               "num_attention_heads": 12, "intermediate_size": 1536},
    "tiny": {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64},
}

_BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")


def bert_config_dict(preset_or_config: str | dict) -> dict:
    """A plain dict of BERT hyper-parameters from a preset name or a (partial) config dict."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in BERT_PRESETS:
            raise ModelError(f"unknown text-encoder preset {preset_or_config!r}; known: {', '.join(BERT_PRESETS)}")
        preset_or_config = BERT_PRESETS[preset_or_config]
    full = BertConfig(**preset_or_config).to_dict()
    return {k: full[k] for k in _BERT_KEYS if k in full}


def build_text_encoder(bert_config: dict) -> BertModel:
    """A randomly initialised BERT encoder without pooler (the official models drop it)."""
    return BertModel(BertConfig(**bert_config), add_pooling_layer=False)


def resolve_text_encoder_path(spec: str | Path) -> Path:
    """A local model directory, or ``pkg:NAME`` for a Python package that ships one in ``NAME/model``."""
    text = str(spec)
    if text.startswith("pkg:"):
        name = text[4:].replace("-", "_")
        found = importlib.util.find_spec(name)
        if found is None or found.origin is None:
            raise ModelError(f"text encoder package {name!r} is not installed", spec)
        path = Path(found.origin).parent / "model"
    else:
        path = Path(text)
    if not (path / "config.json").is_file():
        raise ModelError("not a Hugging Face model directory (config.json missing)", path)
    return path


def load_pretrained_text_encoder(spec: str | Path) -> tuple[BertModel, dict, Path]:
    """Load a local BERT-like encoder (weights + config), offline. Returns (encoder, bert_config, path)."""
    path = resolve_text_encoder_path(spec)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type", "bert") != "bert":
        raise ModelError(f"text encoder model_type {cfg.get('model_type')!r} is not BERT-like", path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        encoder = BertModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load text encoder weights: {exc}", path) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return encoder.float(), bert_config_dict(cfg), path


def bundled_tokenizer() -> BertTokenizer:
    """bert-base-uncased WordPiece tokenizer from the vocabulary bundled with rrsis."""
    return BertTokenizer(vocab=str(BUNDLED_VOCAB), do_lower_case=True)


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved in a directory (tokenizer.json / vocab.txt + tokenizer_config.json)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError("tokenizer directory is missing", path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer: {exc}", path) from exc


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Official LAVT convention: ``[CLS] ... [SEP]``, cut to ``max_tokens`` (the cut drops ``[SEP]``), zero-padded.

    Returns ``input_ids`` and ``attention_mask`` (1 on real tokens), both (B, max_tokens) int64.
    """
    ids = torch.zeros((len(texts), max_tokens), dtype=torch.long)
    mask = torch.zeros((len(texts), max_tokens), dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = tokenizer.encode(text, add_special_tokens=True)[:max_tokens]
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, : len(tokens)] = 1
    return ids, mask

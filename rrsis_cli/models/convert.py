"""``rrsis convert``: official LAVT-family checkpoints -> rrsis model directories.

Official training scripts save ``{'model': state_dict, 'bert_model': bert_state_dict, 'optimizer': ..., 'args':
...}`` when BERT is outside the model and the same without ``bert_model`` when it is inside (keys
``text_encoder.*``). rrsis uses the official key names, so conversion is a strict one-to-one copy: every official
key must be consumed and every project weight filled, else a :class:`ConversionError` lists both differences.
The configuration (Swin size, window, heads, text-encoder size) is read off the tensor shapes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from rrsis_cli.errors import ConversionError, ModelError
from rrsis_cli.models.base import ReferringSegmenter
from rrsis_cli.models.checkpoints import load_torch_checkpoint
from rrsis_cli.models.io import build_from_config, save_model
from rrsis_cli.models.registry import architecture_class, resolve_config
from rrsis_cli.models.text import bert_config_dict, bundled_tokenizer, load_tokenizer

# Deterministic buffers that older transformers versions saved; consumed and recomputed.
DERIVED_TEXT_KEYS = ("text_encoder.embeddings.position_ids", "text_encoder.embeddings.token_type_ids")


def official_state(ckpt: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """One flat state dict in the project's key space (``text_encoder.*`` for the BERT weights)."""
    if "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise ConversionError("no 'model' state dict in the checkpoint (is this an official training file?)",
                              path)
    state = {re.sub(r"^module\.", "", k): v for k, v in ckpt["model"].items()}
    bert = ckpt.get("bert_model")
    if bert is not None:
        overlap = [k for k in state if k.startswith("text_encoder.")]
        if overlap:
            raise ConversionError("checkpoint has both 'bert_model' and text_encoder.* keys", path)
        state.update({"text_encoder." + re.sub(r"^module\.", "", k): v for k, v in bert.items()})
    if not any(k.startswith("text_encoder.") for k in state):
        raise ConversionError("no text-encoder weights (neither 'bert_model' nor text_encoder.* keys)", path)
    return state


def _count_indexed(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_text_config(state: dict[str, torch.Tensor], head_dim: int = 64) -> dict[str, Any]:
    """BERT hyper-parameters from the text-encoder tensor shapes (heads assume 64 channels per head)."""
    try:
        vocab, hidden = state["text_encoder.embeddings.word_embeddings.weight"].shape
        positions = state["text_encoder.embeddings.position_embeddings.weight"].shape[0]
        types = state["text_encoder.embeddings.token_type_embeddings.weight"].shape[0]
        inter = state["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise ConversionError(f"text-encoder weights incomplete: {exc.args[0]} missing") from exc
    return bert_config_dict({
        "vocab_size": int(vocab), "hidden_size": int(hidden), "max_position_embeddings": int(positions),
        "type_vocab_size": int(types), "intermediate_size": int(inter),
        "num_hidden_layers": _count_indexed(state, r"text_encoder\.encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, int(hidden) // head_dim),
    })


def infer_swin_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Swin embed_dim / depths / heads / window from the backbone tensor shapes."""
    try:
        embed = int(state["backbone.patch_embed.proj.weight"].shape[0])
        patch = int(state["backbone.patch_embed.proj.weight"].shape[-1])
        in_chans = int(state["backbone.patch_embed.proj.weight"].shape[1])
    except KeyError as exc:
        raise ConversionError("no backbone.patch_embed.proj.weight: not a LAVT-family checkpoint") from exc
    stages = _count_indexed(state, r"backbone\.layers\.(\d+)\.")
    depths, heads = [], []
    for i in range(stages):
        depths.append(_count_indexed(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\."))
        table = state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
    hidden = int(state["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    side = math.isqrt(int(state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]))
    cfg = {"embed_dim": embed, "depths": depths, "num_heads": heads, "window_size": (side + 1) // 2,
           "patch_size": patch, "in_chans": in_chans, "mlp_ratio": hidden / embed, "drop_path_rate": 0.3}
    return cfg


def infer_fusion_heads(state: dict[str, torch.Tensor], stages: int) -> list[int]:
    # The PWAM head count leaves no trace in the shapes; the official factory default is one head per stage.
    return [1] * stages


def infer_config(arch: str, state: dict[str, torch.Tensor], name: str | None = None) -> dict[str, Any]:
    backbone = infer_swin_config(state)
    variant = next((v for v, spec in {
        "tiny": (96, [2, 2, 6, 2]), "small": (96, [2, 2, 18, 2]), "base": (128, [2, 2, 18, 2]),
        "large": (192, [2, 2, 18, 2])}.items() if spec == (backbone["embed_dim"], backbone["depths"])), None)
    if variant:
        backbone["variant"] = variant
    cfg = {
        "arch": arch,
        "name": name or f"{arch}-swin-{variant or 'custom'}-w{backbone['window_size']}-converted",
        "backbone": backbone,
        "fusion": {"num_heads": infer_fusion_heads(state, len(backbone["depths"])), "dropout": 0.0},
        "text_encoder": {"bert_config": infer_text_config(state)},
        "image_size": 480,
        "max_tokens": 20,
    }
    extra = getattr(architecture_class(arch), "official_config_extras", None)
    if extra is not None:
        cfg.update(extra(state))
    return resolve_config(cfg)


def copy_official_weights(model: ReferringSegmenter, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict one-to-one copy; a ConversionError lists official keys not consumed and project keys not filled."""
    own = model.state_dict()
    derived = [k for k in state if k in DERIVED_TEXT_KEYS and k not in own]
    unconsumed = sorted(k for k in state if k not in own and k not in derived)
    unfilled = sorted(k for k in own if k not in state)
    shapes = sorted(f"{k} official {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}"
                    for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if unconsumed or unfilled or shapes:
        lines = []
        if unconsumed:
            lines.append(f"{len(unconsumed)} official keys not consumed: {', '.join(unconsumed[:8])}"
                         + (" ..." if len(unconsumed) > 8 else ""))
        if unfilled:
            lines.append(f"{len(unfilled)} project weights not filled: {', '.join(unfilled[:8])}"
                         + (" ..." if len(unfilled) > 8 else ""))
        if shapes:
            lines.append(f"{len(shapes)} shape mismatches: {', '.join(shapes[:4])}")
        raise ConversionError(f"checkpoint does not match architecture {model.arch!r}: " + "; ".join(lines),
                              path)
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def convert_checkpoint(arch: str, checkpoint: str | Path, out_dir: str | Path | None = None,
                       tokenizer_dir: str | Path | None = None, name: str | None = None,
                       overwrite: bool = False) -> ReferringSegmenter:
    """Convert an official checkpoint; write a model directory when ``out_dir`` is given."""
    path = Path(checkpoint)
    architecture_class(arch)  # fail on an unknown architecture before reading a large file
    state = official_state(load_torch_checkpoint(path), path)
    config = infer_config(arch, state, name)
    config["provenance"] = {"converted_from": path.name, "source": "official release", "arch": arch}
    model = build_from_config(config)
    copy_official_weights(model, state, path)
    if tokenizer_dir is not None:
        model.tokenizer = load_tokenizer(tokenizer_dir)
    elif config["text_encoder"]["bert_config"]["vocab_size"] == 30522:
        model.tokenizer = bundled_tokenizer()
    else:
        raise ModelError("the text encoder's vocabulary is not bert-base-uncased: pass --tokenizer DIR", path)
    if out_dir is not None:
        save_model(model, out_dir, overwrite=overwrite)
    return model

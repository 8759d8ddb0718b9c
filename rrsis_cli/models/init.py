"""``rrsis models init``: an untrained model directory from a card, with optional pretrained parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrsis_cli.models.base import ReferringSegmenter
from rrsis_cli.models.checkpoints import load_swin_release
from rrsis_cli.models.io import build_from_config, save_model
from rrsis_cli.models.registry import config_for
from rrsis_cli.models.text import load_pretrained_text_encoder, load_tokenizer


def init_model(card: str, out_dir: str | Path | None = None, text_encoder: str | Path | None = None,
               backbone_weights: str | Path | None = None, seed: int = 0, overwrite: bool = False,
               **overrides: Any) -> ReferringSegmenter:
    """Build ``card`` with random weights (seeded), then load a local text encoder (and its tokenizer) and/or an
    official Swin ImageNet checkpoint into the backbone; write a model directory when ``out_dir`` is given."""
    config = config_for(card, **overrides)
    encoder = None
    card_text = config.get("text_encoder", {})
    if text_encoder is None and card_text.get("source"):
        text_encoder = card_text["source"]  # the card names a local/packaged pretrained encoder
    if text_encoder is not None:
        encoder, bert_config, path = load_pretrained_text_encoder(text_encoder)
        config["text_encoder"] = {"bert_config": bert_config, "source": str(text_encoder), "pretrained": True,
                                  "stored": bool(card_text.get("stored", True))}
    model = build_from_config(config, seed=seed)
    provenance = dict(config.get("provenance", {}))
    if encoder is not None:
        model.text_encoder.load_state_dict(encoder.state_dict(), strict=True)
        model.tokenizer = load_tokenizer(path)
    if backbone_weights is not None:
        report = load_swin_release(model, backbone_weights)
        provenance["backbone_weights"] = Path(backbone_weights).name
        provenance["backbone_keys_loaded"] = len(report["loaded"])
    provenance["initialised_from_card"] = card
    model.config["provenance"] = provenance
    if out_dir is not None:
        save_model(model, out_dir, overwrite=overwrite)
    return model

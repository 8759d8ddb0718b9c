"""Learning-rate schedule and optimiser parameter groups of the LAVT-family recipes."""

from __future__ import annotations

from torch import nn


def poly_lr_factor(step: int, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then ``(1 - t / T) ** power`` per iteration."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = step - warmup_steps
    span = max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - t / span) ** power


NO_DECAY_MARKS = ("norm", "absolute_pos_embed", "relative_position_bias_table")


def _is_no_decay(name: str) -> bool:
    """The official LAVT rule: backbone norms and position tables get no weight decay; everything else does."""
    return name.startswith("backbone.") and any(mark in name for mark in NO_DECAY_MARKS)


def parameter_groups(model: nn.Module, weight_decay: float, text_layers: int | None) -> list[dict]:
    """AdamW groups: no decay for backbone norms and position tables (official rule); the text encoder trains only its first
    ``text_layers`` transformer layers when set (the official LAVT recipe trains layers 0-9 of BERT, not the
    embeddings); ``None`` trains the whole text encoder."""
    text = getattr(model, "text_encoder", None)
    frozen: set[int] = set()
    if text is not None and text_layers is not None:
        trainable = {id(p) for i, layer in enumerate(text.encoder.layer) if i < text_layers
                     for p in layer.parameters()}
        frozen = {id(p) for p in text.parameters() if id(p) not in trainable}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if id(param) in frozen:
            param.requires_grad_(False)
            continue
        if not param.requires_grad:
            continue
        (no_decay if _is_no_decay(name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

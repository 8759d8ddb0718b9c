"""Segmentation losses of the LAVT family: weighted cross-entropy (+ optional Dice, RMSIN's recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Mean CE over pixels with per-class weights (LAVT: background 0.9, target 1.1). target: (B, H, W) long."""
    weight = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice of the foreground probability, averaged over the batch (smoothing ``eps``)."""
    prob = logits.float().softmax(dim=1)[:, 1].flatten(1)
    tgt = target.float().flatten(1)
    inter = (prob * tgt).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + tgt.sum(1) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, spec: dict | None = None) -> torch.Tensor:
    """The loss a card's ``loss:`` section describes.

    ``{type: weighted_ce, class_weights: [0.9, 1.1]}`` (LAVT, LGCE) or
    ``{type: ce_dice, class_weights: [...], ce_weight: 0.9, dice_weight: 0.1}`` (RMSIN).
    """
    spec = spec or {}
    weights = tuple(spec.get("class_weights", (0.9, 1.1)))
    ce = weighted_cross_entropy(logits, target, weights)
    if spec.get("type", "weighted_ce") == "ce_dice" or "dice_weight" in spec:
        return float(spec.get("ce_weight", 0.9)) * ce + float(spec.get("dice_weight", 0.1)) * dice_loss(logits, target)
    return ce

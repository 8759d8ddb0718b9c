"""Segmentation losses of the LAVT family: weighted cross-entropy (LAVT, LGCE) and RMSIN's CE + Dice.

Both are written from the official training code's behaviour (``benchmarks/recipe_parity.py`` compares them
with the official functions on fixed inputs; ``tests/test_recipe.py`` pins the official values):

* LAVT / LGCE ``train.py``: ``cross_entropy(logits, target, weight=[0.9, 1.1])`` — the mean over pixels of the
  per-pixel loss weighted by its target class, divided by the sum of those weights (PyTorch's weighted mean).
* RMSIN ``loss/loss.py``: ``0.9 * CE(weights [0.9, 1.1]) + 0.1 * Dice``, where the Dice term takes the softmax
  over **both** classes, one-hot targets, one Dice score per (sample, class) with smoothing 1e-6 in numerator
  and denominator, and **sums** ``1 - dice`` over the batch and the two classes. The Dice term therefore grows
  with the batch: with batch 8 it adds up 16 scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rrsis_cli.errors import UsageError


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Weighted-mean CE over pixels (LAVT: background 0.9, target 1.1). logits (B, K, H, W); target (B, H, W)."""
    weight = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, target, weight=weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-6,
              reduction: str = "sum") -> torch.Tensor:
    """RMSIN's Dice loss: ``1 - (2 I + s) / (U + s)`` per (sample, class) on the softmax over the K classes
    against one-hot targets, with I = sum(p * t) and U = sum(p + t) over the pixels; ``reduction`` ``sum``
    (official) or ``mean`` over the B x K scores."""
    prob = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = tuple(range(2, prob.ndim))
    inter = (prob * onehot).sum(dims)
    union = (prob + onehot).sum(dims)
    loss = 1 - (2 * inter + smooth) / (union + smooth)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise UsageError(f"loss.dice_reduction must be 'sum' or 'mean', not {reduction!r}")


LOSS_TYPES = ("weighted_ce", "ce_dice")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, spec: dict | None = None) -> torch.Tensor:
    """The loss a card's ``loss:`` section describes.

    ``{type: weighted_ce, class_weights: [0.9, 1.1]}`` (LAVT, LGCE) or
    ``{type: ce_dice, class_weights: [...], ce_weight: 0.9, dice_weight: 0.1}`` (RMSIN), with optional
    ``dice_smooth`` (1e-6) and ``dice_reduction`` (``sum``) — the official values.
    """
    spec = spec or {}
    kind = spec.get("type", "weighted_ce")
    if kind not in LOSS_TYPES:
        raise UsageError(f"unknown loss.type {kind!r}; known: {', '.join(LOSS_TYPES)}")
    weights = tuple(spec.get("class_weights", (0.9, 1.1)))
    ce = weighted_cross_entropy(logits, target, weights)
    if kind == "ce_dice" or "dice_weight" in spec:
        dice = dice_loss(logits, target, float(spec.get("dice_smooth", 1e-6)), str(spec.get("dice_reduction", "sum")))
        return float(spec.get("ce_weight", 0.9)) * ce + float(spec.get("dice_weight", 0.1)) * dice
    return ce

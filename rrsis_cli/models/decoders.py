"""Mask decoders shared by the LAVT family."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling of ``x`` to ``ref``'s spatial size, only when smaller."""
    if x.shape[-2] < ref.shape[-2] or x.shape[-1] < ref.shape[-1]:
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)
    return x


class SimpleDecoder(nn.Module):
    """LAVT's ``SimpleDecoding``: three top-down fusion steps at 1/16, 1/8, 1/4 and a 1x1 classifier.

    Each step: ``concat(upsample(top), skip) -> conv3x3 (no bias) -> BN -> ReLU -> conv3x3 -> BN -> ReLU``.
    ``in_channels`` = (C1, C2, C3, C4) of the four stages; the hidden width is C4 // 2 (512 for Swin-B).
    Returns (B, num_classes, H/4, W/4) logits. Attribute names follow the official keys (``conv1_4`` ...).
    """

    def __init__(self, in_channels: tuple[int, int, int, int], num_classes: int = 2, hidden: int | None = None):
        super().__init__()
        c1, c2, c3, c4 = in_channels
        hidden = hidden or c4 // 2
        for step, skip, top in ((4, c3, c4), (3, c2, hidden), (2, c1, hidden)):
            setattr(self, f"conv1_{step}", nn.Conv2d(top + skip, hidden, 3, padding=1, bias=False))
            setattr(self, f"bn1_{step}", nn.BatchNorm2d(hidden))
            setattr(self, f"conv2_{step}", nn.Conv2d(hidden, hidden, 3, padding=1, bias=False))
            setattr(self, f"bn2_{step}", nn.BatchNorm2d(hidden))
        self.conv1_1 = nn.Conv2d(hidden, num_classes, 1)

    def fuse(self, step: int, top: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([upsample_to(top, skip), skip], dim=1)
        x = F.relu(getattr(self, f"bn1_{step}")(getattr(self, f"conv1_{step}")(x)))
        return F.relu(getattr(self, f"bn2_{step}")(getattr(self, f"conv2_{step}")(x)))

    def forward(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        x = self.fuse(4, c4, c3)
        x = self.fuse(3, x, c2)
        x = self.fuse(2, x, c1)
        return self.conv1_1(x)

"""Vision-language fusion blocks shared by the LAVT family: pixel-word attention (PWAM) and the tanh gate.

Shapes: visual tokens ``x`` (B, N, C); language features ``words`` (B, C_l, L); word mask ``l_mask`` (B, L, 1)
with 1 on real tokens. Attribute names match the official state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelWordAttention(nn.Module):
    """Cross-attention from every pixel (query) to the words (keys/values) of the expression.

    ``out = InstanceNorm(W(softmax(q k^T / sqrt(C_key) + (1e4 * mask - 1e4)) v))`` with
    ``q = InstanceNorm(f_query(x))`` and ``k, v = f_key(l) * mask, f_value(l) * mask`` (1x1 Conv1d each).
    A padding word gets a logit of about -1e4, so its softmax weight is exactly 0 in fp32: appending padding
    tokens does not change the output.
    """

    def __init__(self, v_in: int, l_in: int, key_channels: int, value_channels: int, num_heads: int = 1):
        super().__init__()
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.num_heads = num_heads
        self.f_key = nn.Sequential(nn.Conv1d(l_in, key_channels, 1))
        self.f_query = nn.Sequential(nn.Conv1d(v_in, key_channels, 1), nn.InstanceNorm1d(key_channels))
        self.f_value = nn.Sequential(nn.Conv1d(l_in, value_channels, 1))
        self.W = nn.Sequential(nn.Conv1d(value_channels, value_channels, 1), nn.InstanceNorm1d(value_channels))

    def forward(self, x: torch.Tensor, words: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        heads = self.num_heads
        mask = l_mask.permute(0, 2, 1)  # (B, 1, L)
        query = self.f_query(x.permute(0, 2, 1)).permute(0, 2, 1)  # (B, N, Ck)
        key = self.f_key(words) * mask  # (B, Ck, L)
        value = self.f_value(words) * mask  # (B, Cv, L)
        words = value.shape[-1]
        query = query.reshape(b, n, heads, self.key_channels // heads).permute(0, 2, 1, 3)
        key = key.reshape(b, heads, self.key_channels // heads, words)
        value = value.reshape(b, heads, self.value_channels // heads, words)
        logits = (self.key_channels ** -0.5) * torch.matmul(query, key)
        logits = logits + (1e4 * mask.unsqueeze(1) - 1e4)
        attn = F.softmax(logits, dim=-1)
        out = torch.matmul(attn, value.permute(0, 1, 3, 2))  # (B, heads, N, Cv/heads)
        out = out.permute(0, 2, 1, 3).reshape(b, n, self.value_channels).permute(0, 2, 1)
        return self.W(out).permute(0, 2, 1)  # (B, N, Cv)


class PWAM(nn.Module):
    """Pixel-word attention module: ``GELU(project_mm(GELU(vis_project(x)) * attend(x, l)))`` -> (B, N, C)."""

    def __init__(self, dim: int, l_in: int, num_heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = PixelWordAttention(dim, l_in, dim, dim, num_heads=num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, words: torch.Tensor, l_mask: torch.Tensor) -> torch.Tensor:
        vis = self.vis_project(x.permute(0, 2, 1))
        lang = self.image_lang_att(x, words, l_mask).permute(0, 2, 1)
        return self.project_mm(vis * lang).permute(0, 2, 1)


def tanh_gate(dim: int) -> nn.Sequential:
    """Language gate ``tanh(Linear(ReLU(Linear(x))))`` (bias-free); used as ``x + gate(r) * r``."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())

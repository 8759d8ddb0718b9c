"""Adaptive rotated convolution (Pu et al., ICCV 2023) in pure PyTorch, with the numerics of RMSIN's copy.

A routing function looks at the input and predicts, per sample, ``n`` rotation angles and ``n`` mixing weights;
the ``n`` learnt 3x3 kernels are rotated by their angles, scaled by their weights and summed into one kernel
per sample, which is then applied with a grouped convolution (one group per sample).

Rotation of a 3x3 kernel is a linear map on its 9 taps: every tap of the rotated kernel is a bilinear
interpolation of the original taps at the back-rotated position. For ``cos = x``, ``sin = y`` and
``a = x - y``, ``b = x * y``, ``c = x + y`` the map has the entries listed in :data:`_POSITIVE` (angle >= 0)
and :data:`_NEGATIVE` (angle < 0); row = tap of the rotated kernel, column = tap of the original kernel, taps
numbered row-major. The centre tap is fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (row, column, coefficient name) of the non-zero entries of the 9x9 tap map.
_POSITIVE = (
    (0, 0, "a"), (0, 1, "1-a"),
    (1, 1, "x-b"), (1, 2, "b"), (1, 4, "1-c+b"), (1, 5, "y-b"),
    (2, 2, "a"), (2, 5, "1-a"),
    (3, 0, "b"), (3, 1, "y-b"), (3, 3, "x-b"), (3, 4, "1-c+b"),
    (4, 4, "1"),
    (5, 4, "1-c+b"), (5, 5, "x-b"), (5, 7, "y-b"), (5, 8, "b"),
    (6, 3, "1-a"), (6, 6, "a"),
    (7, 3, "y-b"), (7, 4, "1-c+b"), (7, 6, "b"), (7, 7, "x-b"),
    (8, 7, "1-a"), (8, 8, "a"),
)
_NEGATIVE = (
    (0, 0, "c"), (0, 3, "1-c"),
    (1, 0, "-b"), (1, 1, "x+b"), (1, 3, "b-y"), (1, 4, "1-a-b"),
    (2, 1, "1-c"), (2, 2, "c"),
    (3, 3, "x+b"), (3, 4, "1-a-b"), (3, 6, "-b"), (3, 7, "b-y"),
    (4, 4, "1"),
    (5, 1, "b-y"), (5, 2, "-b"), (5, 4, "1-a-b"), (5, 5, "x+b"),
    (6, 6, "c"), (6, 7, "1-c"),
    (7, 4, "1-a-b"), (7, 5, "b-y"), (7, 7, "x+b"), (7, 8, "-b"),
    (8, 5, "1-c"), (8, 8, "c"),
)


def _coefficients(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y = torch.cos(theta), torch.sin(theta)
    a, b, c = x - y, x * y, x + y
    return {"a": a, "1-a": 1 - a, "x-b": x - b, "b": b, "1-c+b": 1 - c + b, "y-b": y - b, "1": torch.ones_like(x),
            "c": c, "1-c": 1 - c, "-b": -b, "x+b": x + b, "b-y": b - y, "1-a-b": 1 - a - b}


def rotation_matrices(theta: torch.Tensor) -> torch.Tensor:
    """(B, n) angles in radians -> (B, n, 9, 9) tap maps of the rotated 3x3 kernels."""
    coef = _coefficients(theta)

    def build(entries) -> torch.Tensor:
        m = theta.new_zeros(*theta.shape, 9, 9)
        for row, col, name in entries:
            m[..., row, col] = coef[name]
        return m

    positive = (theta >= 0)[..., None, None]
    return torch.where(positive, build(_POSITIVE), build(_NEGATIVE))


def rotate_kernels(weight: torch.Tensor, alphas: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Mix the ``n`` kernels (n, Cout, Cin, 3, 3), rotated by ``thetas`` (B, n) and scaled by ``alphas`` (B, n),
    into one kernel per sample: (B * Cout, Cin, 3, 3)."""
    n, cout, cin, k, _ = weight.shape
    if k != 3:
        raise ValueError("adaptive rotated convolution supports 3x3 kernels only")
    b = thetas.shape[0]
    maps = rotation_matrices(thetas) * alphas[..., None, None]  # (B, n, 9, 9)
    maps = maps.permute(0, 2, 1, 3).reshape(b * 9, n * 9)
    taps = weight.permute(0, 3, 4, 1, 2).reshape(n * 9, cout * cin)
    mixed = torch.mm(maps, taps).view(b, k, k, cout, cin)
    return mixed.permute(0, 3, 4, 1, 2).reshape(b * cout, cin, k, k)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (attribute ``norm`` as the official key)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RoutingFunction(nn.Module):
    """Depthwise 3x3 -> channel LayerNorm -> ReLU -> global average -> (sigmoid mixing weights,
    softsign angles scaled to +-``max_angle`` degrees)."""

    def __init__(self, in_channels: int, kernel_number: int, dropout: float = 0.2, max_angle: float = 40.0):
        super().__init__()
        self.dwc = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.norm = ChannelLayerNorm(in_channels)
        self.dropout1 = nn.Dropout(dropout)
        self.fc_alpha = nn.Linear(in_channels, kernel_number, bias=True)
        self.dropout2 = nn.Dropout(dropout)
        self.fc_theta = nn.Linear(in_channels, kernel_number, bias=False)
        self.proportion = max_angle / 180.0 * math.pi
        for w in (self.dwc.weight, self.fc_alpha.weight, self.fc_theta.weight):
            nn.init.trunc_normal_(w, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.relu(self.norm(self.dwc(x))).mean(dim=(2, 3))
        alphas = torch.sigmoid(self.fc_alpha(self.dropout1(pooled)))
        angles = F.softsign(self.fc_theta(self.dropout2(pooled))) * self.proportion
        return alphas, angles


class AdaptiveRotatedConv2d(nn.Module):
    """3x3 convolution whose kernel is rotated and mixed per sample by a routing function (no bias).

    Keys: ``weight`` (n, Cout, Cin, 3, 3) and ``rounting_func.*`` (the official spelling).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_number: int = 1, padding: int = 1,
                 routing_dropout: float = 0.2, max_angle: float = 40.0):
        super().__init__()
        self.out_channels = out_channels
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(kernel_number, out_channels, in_channels, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.rounting_func = RoutingFunction(in_channels, kernel_number, routing_dropout, max_angle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alphas, angles = self.rounting_func(x)
        weight = rotate_kernels(self.weight, alphas, angles)
        b, c, h, w = x.shape
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.reshape(b, self.out_channels, *out.shape[2:])

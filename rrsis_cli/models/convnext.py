"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) as a 4-level feature-pyramid backbone.

Standard design, written from the paper's description:

* stem: Conv2d(3, d_0, 4, stride 4) + LayerNorm over channels;
* stage i (i = 0..3): ``depths[i]`` blocks at width ``d_i``; stages 1..3 start with a downsampling layer
  LayerNorm + Conv2d(d_{i-1}, d_i, 2, stride 2);
* block: depthwise Conv2d(d, d, 7, padding 3) -> LayerNorm -> Linear(d, 4d) -> GELU -> Linear(4d, d) ->
  layer scale ``gamma`` (a per-channel vector, initialised to ``layer_scale_init``, 1e-6) -> stochastic depth ->
  residual sum;
* every stage output gets its own LayerNorm (``norm0..norm3``, the dense-prediction variant of the release), and
  the classification head and final norm are absent.

ConvNeXt-B: widths 128/256/512/1024, depths 3/3/27/3 (87.6 M parameters without the head). Attribute names
follow the official release (``downsample_layers.i``, ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``) so an
official ImageNet checkpoint maps key for key. Initialisation: trunc-normal(0.02) weights and zero biases for
convolutions and Linear layers. An odd map is padded right/bottom by one pixel before a stride-2 downsampling
(the release assumes even sizes; inputs divisible by 32 are never padded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.models.swin import DropPath, drop_path_schedule

CONVNEXT_VARIANTS: dict[str, dict] = {
    "tiny": {"dims": [96, 192, 384, 768], "depths": [3, 3, 9, 3]},
    "small": {"dims": [96, 192, 384, 768], "depths": [3, 3, 27, 3]},
    "base": {"dims": [128, 256, 512, 1024], "depths": [3, 3, 27, 3]},
    "large": {"dims": [192, 384, 768, 1536], "depths": [3, 3, 27, 3]},
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, H, W) map (keys ``weight``, ``bias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * pwconv2(GELU(pwconv1(LN(dwconv7x7(x))))))`` on a (B, C, H, W) map."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Downsample(nn.Sequential):
    """LayerNorm + Conv2d(k=2, s=2); an odd map is padded right/bottom first."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__(LayerNorm2d(dim_in, eps=1e-6), nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x)
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return self[1](x)


class ConvNeXt(nn.Module):
    """``forward(image)`` -> four maps (B, d_i, H/2^(i+2), W/2^(i+2)), each LayerNorm-ed (``norm{i}``)."""

    def __init__(self, dims: list[int], depths: list[int], in_chans: int = 3, drop_path_rate: float = 0.0,
                 layer_scale_init: float = 1e-6):
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"ConvNeXt needs one width per stage: dims {dims}, depths {depths}")
        self.num_features = list(dims)
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.downsample_layers = nn.ModuleList(
            [stem] + [Downsample(dims[i - 1], dims[i]) for i in range(1, len(dims))])
        rates = drop_path_schedule(depths, drop_path_rate)
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dims[i], rates[i][j], layer_scale_init) for j in range(depths[i])))
            for i in range(len(dims))
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", LayerNorm2d(dim, eps=1e-6))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = stage(down(x))
            outs.append(getattr(self, f"norm{i}")(x))
        return outs


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def convnext_parameter_count(dims: list[int], depths: list[int], in_chans: int = 3, stage_norms: bool = True) -> int:
    """Closed-form parameter count of :class:`ConvNeXt` (layer scale on), for checks against the module.

    Block of width C: depthwise 7x7 (49C + C), LayerNorm (2C), Linear C->4C (4C^2 + 4C), Linear 4C->C
    (4C^2 + C), gamma (C) = 8C^2 + 58C. Stem: 16 * in_chans * d_0 + d_0 + 2 d_0. Downsampling i:
    2 d_{i-1} + 4 d_{i-1} d_i + d_i. Stage norms: 2 d_i each.
    """
    total = 16 * in_chans * dims[0] + dims[0] + 2 * dims[0]
    for i, (c, n) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            total += 2 * dims[i - 1] + 4 * dims[i - 1] * c + c
        total += n * (8 * c * c + 58 * c)
        if stage_norms:
            total += 2 * c
    return total

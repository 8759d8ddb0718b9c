"""RMSIN: Rotated Multi-Scale Interaction Network (Liu et al., CVPR 2024), faithful to the official numerics
(Lsan2401/RMSIN).

LAVT's multi-modal Swin plus three additions:

* intra-scale branch, per stage: the channel-mean map (B, 1, h, w) of the blocks' output goes through a
  RepVGG-style block (two rounds of 1x1+BN -> 3x3+BN, 1x1+BN and identity-BN branches, ReLU between, sigmoid at
  the end) giving a spatial weight ``w``; ``v = x * w`` gets its own tanh gate:
  ``x <- x + g_l(mm) * mm + g_v(v) * v`` (``mm`` = PWAM output, handed to the decoder as in LAVT);
* cross-scale interaction module (``backbone.cim``) on the four normalised stage outputs: adaptive average
  pooling to a common grid and concatenation (sum C_i channels), 1x1 down to a quarter, a block of cross-scale
  attention (queries from the grid, keys/values from the grid plus stride-2 and stride-3 depthwise
  downsampled copies), per-scale split feed-forwards, a second cross-scale attention, a feed-forward, BN, 1x1
  back up; the result is split per stage and merged into each stage output by a scale-aware gate
  (``local * h_sigmoid(global_act) + global``, global terms resized bilinearly, align_corners=False);
* decoder: LAVT's, with the second 3x3 convolution of every fusion step an adaptive rotated convolution.

The official code hard-codes Swin-B at 480 px: 1920/480 channels, a 15x15 grid and 314 attention tokens. Here
the channels come from the backbone and the grid from ``cim.grid`` (default: the stage-4 size of
``image_size``; 15x15 for 480 px). At that input size the numerics are the official ones. For other input
sizes (the official code fails there) the stage outputs are pooled to the configured grid, and the
scale-aware gates resize the result back to each stage (they resize in the official code too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.decoders import SimpleDecoder
from rrsis_cli.models.fusion import tanh_gate
from rrsis_cli.models.lavt import LAVT, LanguageSwinBackbone, LanguageSwinStage
from rrsis_cli.models.rotated_conv import AdaptiveRotatedConv2d
from rrsis_cli.models.swin import init_transformer_weights

# ----------------------------------------------------------------------------------------------------------
# Intra-scale ("various receptive") branch
# ----------------------------------------------------------------------------------------------------------

def _conv_bn(channels: int, kernel: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(channels))
    return seq


def _conv1x1_bn_conv3x3_bn(channels: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv1", nn.Conv2d(channels, channels, 1, bias=False))
    seq.add_module("bn1", nn.BatchNorm2d(channels))
    seq.add_module("conv2", nn.Conv2d(channels, channels, 3, padding=1, bias=False))
    seq.add_module("bn2", nn.BatchNorm2d(channels))
    return seq


class RepBlock(nn.Module):
    """Two rounds of (1x1+BN -> 3x3+BN) + (1x1+BN) + identity BN, ReLU between and sigmoid at the end."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.brb_3x3 = _conv1x1_bn_conv3x3_bn(channels)
        self.brb_1x1 = _conv_bn(channels, 1)
        self.brb_identity = nn.BatchNorm2d(channels)
        self.brb_3x3_2 = _conv1x1_bn_conv3x3_bn(channels)
        self.brb_1x1_2 = _conv_bn(channels, 1)
        self.brb_identity_2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.brb_1x1(x) + self.brb_3x3(x) + self.brb_identity(x))
        return torch.sigmoid(self.brb_1x1_2(x) + self.brb_3x3_2(x) + self.brb_identity_2(x))


class VariousReceptive(nn.Module):
    """Tokens (B, N, C) on an h x w grid -> tokens weighted by a spatial map computed from their channel mean."""

    def __init__(self):
        super().__init__()
        self.repblock = RepBlock(1)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        grid = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        weight = self.repblock(grid.mean(dim=1, keepdim=True))  # (B, 1, h, w)
        return (grid * weight).reshape(b, c, n).permute(0, 2, 1)


class RMSINStage(LanguageSwinStage):
    """LAVT stage + the intra-scale branch: ``x + g_l(mm) * mm + g_v(v) * v``."""

    def __init__(self, dim: int, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.visual_residual = VariousReceptive()
        self.visual_gate = tanh_gate(dim)
        self._grid = (0, 0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        self._grid = (h, w)  # the intra-scale branch in fuse() needs the grid of these tokens
        return super().forward(x, h, w)

    def fuse(self, x: torch.Tensor, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual_residual(x, *self._grid)
        mm = self.fusion(x, text.features, text.mask)
        return x + self.res_gate(mm) * mm + self.visual_gate(v) * v, mm


# ----------------------------------------------------------------------------------------------------------
# Cross-scale interaction module
# ----------------------------------------------------------------------------------------------------------

def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def cim_tokens(grid: tuple[int, int]) -> int:
    """Attention tokens of the cross-scale attention: the grid plus its stride-2 (3x3) and stride-3 (5x5) copies."""
    h, w = grid
    return h * w + _conv_out(h, 3, 2) * _conv_out(w, 3, 2) + _conv_out(h, 5, 3) * _conv_out(w, 5, 3)


class Residual(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class LinearBN(nn.Module):
    """Bias-free Linear followed by BatchNorm1d over all tokens (keys ``c``, ``bn``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.c = nn.Linear(dim_in, dim_out, bias=False)
        self.bn = nn.BatchNorm1d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


class CrossScaleTokenAttention(nn.Module):
    """Attention of the grid tokens over the grid + downsampled tokens, as the official ``Attention``.

    Two reshapes of the official code reinterpret memory rather than transpose (the value map fed to the
    parallel depthwise conv, and the attention output before ``proj``); they are reproduced as they are,
    since the released weights were trained with them.
    """

    def __init__(self, dim: int, grid: tuple[int, int], key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 2):
        super().__init__()
        self.grid = grid
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim ** -0.5
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads
        self.qkv = LinearBN(dim, self.dh + 2 * key_dim * num_heads)
        self.parallel_conv = nn.Sequential(nn.Hardswish(), nn.Conv2d(self.dh, self.dh, 3, padding=1, groups=self.dh))
        self.to_out = nn.Linear(self.dh, dim)
        n_grid = grid[0] * grid[1]
        self.proj = nn.Linear(cim_tokens(grid), n_grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        n_grid = self.grid[0] * self.grid[1]
        v_map = v[:, :, :n_grid].reshape(b, self.dh, *self.grid)  # memory reinterpretation (official)
        v_conv = self.parallel_conv(v_map).flatten(2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, n)  # memory reinterpretation (official)
        out = self.proj(out) + v_conv
        return self.to_out(out.permute(0, 2, 1))


class CrossScaleAttention(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.bn1 = nn.BatchNorm2d(dim)
        self.DWConv1 = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1, groups=dim), nn.BatchNorm2d(dim))
        self.DWConv2 = nn.Sequential(nn.Conv2d(dim, dim, 5, stride=3, padding=2, groups=dim), nn.BatchNorm2d(dim))
        self.attention = CrossScaleTokenAttention(dim, grid)
        self.bn4 = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.bn1(x)
        tokens = torch.cat([x0.flatten(2), self.DWConv1(x0).flatten(2), self.DWConv2(x0).flatten(2)], dim=2)
        out = self.attention(tokens.permute(0, 2, 1))
        out = out.permute(0, 2, 1).reshape(x.shape[0], x.shape[1], *self.grid)
        return self.conv(F.hardswish(self.bn4(out)))


class FeedForward(nn.Module):
    """BN -> 1x1 -> BN -> depthwise-grouped 3x3 -> ReLU6 -> 1x1."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=dim)
        self.conv3 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu6(self.conv2(self.bn2(self.conv1(self.bn1(x))))))


class IntraFeedForward(nn.Module):
    """A residual feed-forward per scale on its share (C_i / 4 channels) of the hidden map."""

    def __init__(self, channels: list[int], mlp_ratio: int = 2):
        super().__init__()
        self.split = [c // 4 for c in channels]
        for i, c in enumerate(self.split, start=1):
            setattr(self, f"ff{i}", Residual(FeedForward(c, mlp_ratio * c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.split, dim=1)
        return torch.cat([getattr(self, f"ff{i}")(p) for i, p in enumerate(parts, start=1)], dim=1)


class CIMBlock(nn.Module):
    def __init__(self, dim: int, channels: list[int], grid: tuple[int, int], mlp_ratio: int = 2):
        super().__init__()
        self.csa1 = Residual(CrossScaleAttention(dim, grid))
        self.intra_ff = Residual(IntraFeedForward(channels, mlp_ratio))
        self.csa2 = Residual(CrossScaleAttention(dim, grid))
        self.ff = Residual(FeedForward(dim, dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(self.csa2(self.intra_ff(self.csa1(x))))


class ScaleAwareGate(nn.Module):
    """``BN(local(x_l)) * up(h_sigmoid(BN(act(x_g)))) + up(BN(global(x_g)))`` (1x1 convs; bilinear resize)."""

    def __init__(self, dim: int):
        super().__init__()
        self.local_embedding = nn.Conv2d(dim, dim, 1)
        self.bn1 = nn.BatchNorm2d(dim)
        self.global_embedding = nn.Conv2d(dim, dim, 1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.global_act = nn.Conv2d(dim, dim, 1)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor) -> torch.Tensor:
        size = x_l.shape[-2:]
        local = self.bn1(self.local_embedding(x_l))
        glob = F.interpolate(self.bn2(self.global_embedding(x_g)), size=size, mode="bilinear", align_corners=False)
        act = F.relu6(self.bn3(self.global_act(x_g)) + 3) / 6  # h_sigmoid
        return local * F.interpolate(act, size=size, mode="bilinear", align_corners=False) + glob


class CIM(nn.Module):
    """Cross-scale interaction module: four stage maps -> four enhanced stage maps (same shapes)."""

    def __init__(self, channels: list[int], grid: tuple[int, int], num_layers: int = 1, mlp_ratio: int = 2):
        super().__init__()
        total = sum(channels)
        hidden = total // 4
        self.channels = list(channels)
        self.grid = grid
        self.down_channel = nn.Conv2d(total, hidden, 1)
        self.up_channel = nn.Conv2d(hidden, total, 1)
        self.block = nn.ModuleList(CIMBlock(hidden, channels, grid, mlp_ratio) for _ in range(num_layers))
        self.bn = nn.BatchNorm2d(hidden)
        self.fusion = nn.ModuleList(ScaleAwareGate(c) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = torch.cat([F.adaptive_avg_pool2d(f, self.grid) for f in feats], dim=1)
        x = self.down_channel(x)
        for layer in self.block:
            x = layer(x)
        x = self.up_channel(self.bn(x))
        return [gate(f, g) for gate, f, g in zip(self.fusion, feats, x.split(self.channels, dim=1), strict=True)]


# ----------------------------------------------------------------------------------------------------------
# Backbone, decoder, model
# ----------------------------------------------------------------------------------------------------------

def stage4_size(image_size: int, stages: int = 4, patch: int = 4) -> int:
    """Side of the last stage's map for a square input (patch embedding pads; merging rounds up)."""
    side = -(-image_size // patch)
    for _ in range(stages - 1):
        side = (side + 1) // 2
    return side


class RMSINBackbone(LanguageSwinBackbone):
    stage_class = RMSINStage

    def __init__(self, cfg: dict, text_dim: int, fusion_cfg: dict, cim_cfg: dict, image_size: int):
        super().__init__(cfg, text_dim, fusion_cfg)
        grid = cim_cfg.get("grid")
        if grid is None:
            side = stage4_size(image_size, len(self.num_features), int(cfg.get("patch_size", 4)))
            grid = [side, side]
        self.cim = CIM(self.num_features, (int(grid[0]), int(grid[1])), int(cim_cfg.get("num_layers", 1)),
                       int(cim_cfg.get("mlp_ratio", 2)))
        init_transformer_weights(self.cim)  # the official init_weights covers the whole backbone

    def forward(self, image: torch.Tensor, text: TextFeatures) -> list[torch.Tensor]:
        return self.cim(super().forward(image, text))


class RotatedDecoder(SimpleDecoder):
    """LAVT's decoder with adaptive rotated convolutions as the second 3x3 conv of each fusion step.

    Upsampling to the skip's size with align_corners=True equals the official ``scale_factor=2`` whenever the
    skip is exactly twice as large (always at 480 px), and also handles odd sizes.
    """

    def __init__(self, in_channels: tuple[int, int, int, int], num_classes: int = 2, hidden: int | None = None,
                 kernel_number: int = 1, max_angle: float = 40.0, routing_dropout: float = 0.2):
        super().__init__(in_channels, num_classes, hidden)
        width = self.conv2_4.out_channels
        for step in (4, 3, 2):
            setattr(self, f"conv2_{step}", AdaptiveRotatedConv2d(width, width, kernel_number, padding=1,
                                                                 routing_dropout=routing_dropout,
                                                                 max_angle=max_angle))


class RMSIN(LAVT):
    """RMSIN with the text encoder inside (keys ``text_encoder.*``, ``backbone.*``, ``classifier.*``)."""

    arch = "rmsin"
    official_layout = "text_encoder"

    def unused_parameters(self) -> tuple[str, ...]:
        """LAVT's, plus the last stage's visual residual branch and gate (they too update unread tokens)."""
        last = f"backbone.layers.{len(self.backbone.layers) - 1}"
        return (*super().unused_parameters(), f"{last}.visual_residual", f"{last}.visual_gate")

    def __init__(self, config: dict):
        ReferringSegmenter.__init__(self, config)
        self.backbone = RMSINBackbone(config["backbone"], self.text_dim, config.get("fusion", {}),
                                      config.get("cim", {}), int(config.get("image_size", 480)))
        dec = config.get("decoder", {})
        self.classifier = RotatedDecoder(tuple(self.backbone.num_features), 2, dec.get("hidden"),
                                         int(dec.get("kernel_number", 1)), float(dec.get("max_angle", 40.0)),
                                         float(dec.get("routing_dropout", 0.2)))

    @staticmethod
    def official_config_extras(state: dict[str, torch.Tensor]) -> dict:
        """The CIM grid and the rotated kernels per conv, read off the checkpoint's shapes."""
        proj = state.get("backbone.cim.block.0.csa1.m.attention.proj.weight")
        extras: dict = {"decoder": {"kernel_number": 1, "max_angle": 40.0, "routing_dropout": 0.2}}
        weight = state.get("classifier.conv2_4.weight")
        if weight is not None and weight.ndim == 5:
            extras["decoder"]["kernel_number"] = int(weight.shape[0])
        if proj is not None:
            n_grid = int(proj.shape[0])
            side = int(round(n_grid ** 0.5))
            if side * side == n_grid and cim_tokens((side, side)) == int(proj.shape[1]):
                ff = state.get("backbone.cim.block.0.ff.m.conv1.weight")
                ratio = int(ff.shape[0] // ff.shape[1]) if ff is not None else 2
                extras["cim"] = {"grid": [side, side], "num_layers": _count_cim_layers(state), "mlp_ratio": ratio}
                if stage4_size(480) != side:
                    extras["image_size"] = side * 32
        return extras


def _count_cim_layers(state: dict[str, torch.Tensor]) -> int:
    found = {int(k.split(".")[3]) for k in state if k.startswith("backbone.cim.block.")}
    return max(found) + 1 if found else 1


MODEL_CLASS = RMSIN
DEFAULT_CARD = "rmsin-swin-b"

"""LGCE: LAVT + language-guided cross-scale enhancement (Yuan et al., "RRSIS: Referring Remote Sensing Image
Segmentation", IEEE TGRS 2024), faithful to the numerics of the published code (``lib/RRSIS`` copy).

Image path: LAVT's multi-modal Swin backbone (PWAM + tanh language gates). Before LAVT's decoder:

* a sentence vector ``s`` = mean of the text features over **all** token positions, padding included
  (``sentence_pool: all``, the official numerics; ``masked`` averages the real tokens only);
* per-scale guide tokens ``g_i = lg_layer_i(s)`` (Linear text_dim -> C_i);
* a CrossViT-style multi-scale block (``msb1``) on the stage-3 and stage-4 tokens: each branch prepends its
  guide token as a class token and runs ViT blocks (1 at C3, 3 at C4); the class tokens are then exchanged by
  class-token cross-attention. The decoder keeps the patch tokens only (the class tokens are dropped), so the
  enhanced c3/c4 are the ViT-block outputs conditioned on the guide tokens.

Unused modules of the published code are kept so that official checkpoints load strictly, and are listed in
:data:`UNUSED_OFFICIAL_MODULES`: ``classifier.msb2`` / ``msb3`` (their calls are commented out officially),
``msb*.patch_embed`` (the convolutions of CrossViT's image patch embedding, never called) and
``lg_layer1`` / ``lg_layer2`` (computed but unused officially; not computed here).

Sizes hard-coded by the official code for Swin-B (512/1024 channels, 768-d text) are derived from the
configuration here, so tiny configurations work; the official configuration gives the official shapes.

The sentence vector averages padding positions too, so with ``sentence_pool: all`` appending padding tokens
changes the output (the official behaviour); everything else is padding invariant.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.decoders import SimpleDecoder
from rrsis_cli.models.lavt import LAVT, LanguageSwinBackbone
from rrsis_cli.models.swin import Mlp

UNUSED_OFFICIAL_MODULES = (
    "classifier.msb1.patch_embed", "classifier.msb2", "classifier.msb3",
    "classifier.lg_layer1", "classifier.lg_layer2",
)


class TokenAttention(nn.Module):
    """ViT multi-head self-attention (timm ``Attention``): ``qkv`` (bias optional) and ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClassTokenCrossAttention(nn.Module):
    """CrossViT's cross-attention: the class token (position 0) queries every token; returns (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.wq(x[:, :1]).reshape(b, 1, h, c // h).transpose(1, 2)
        k = self.wk(x).reshape(b, n, h, c // h).transpose(1, 2)
        v = self.wv(x).reshape(b, n, h, c // h).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, 1, c))


class CrossAttentionBlock(nn.Module):
    """``cls + cross_attn(norm1(tokens))`` (CrossViT block without MLP, as the published configuration)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassTokenCrossAttention(dim, num_heads, qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.attn(self.norm1(x))


def _projection(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim_in), nn.GELU(), nn.Linear(dim_in, dim_out))


class MultiScaleBlock(nn.Module):
    """CrossViT multi-scale block over branches of (B, 1 + N_i, C_i) tokens (class token first).

    Per branch: ViT blocks; then the class token of branch i is projected to branch i+1's width, attends to
    branch i+1's patch tokens, and is projected back. Patch tokens are the ViT-block outputs.
    """

    def __init__(self, dims: list[int], depths: list[int], num_heads: list[int], mlp_ratio: float,
                 cross_depth: int = 1, qkv_bias: bool = False):
        super().__init__()
        n = len(dims)
        self.num_branches = n
        self.blocks = nn.ModuleList(
            nn.Sequential(*(ViTBlock(dims[d], num_heads[d], mlp_ratio, qkv_bias) for _ in range(depths[d])))
            for d in range(n)
        )
        self.projs = nn.ModuleList(_projection(dims[d], dims[(d + 1) % n]) for d in range(n))
        self.fusion = nn.ModuleList(
            nn.Sequential(*(CrossAttentionBlock(dims[(d + 1) % n], num_heads[(d + 1) % n], qkv_bias)
                            for _ in range(cross_depth)))
            for d in range(n)
        )
        self.revert_projs = nn.ModuleList(_projection(dims[(d + 1) % n], dims[d]) for d in range(n))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [block(x) for x, block in zip(xs, self.blocks, strict=True)]
        result = []
        for i in range(self.num_branches):
            other = outs[(i + 1) % self.num_branches]
            cls = self.fusion[i](torch.cat([self.projs[i](outs[i][:, :1]), other[:, 1:]], dim=1))
            result.append(torch.cat([self.revert_projs[i](cls[:, :1]), outs[i][:, 1:]], dim=1))
        return result


class ImagePatchEmbed(nn.Module):
    """CrossViT's image patch embedding (``proj`` conv); kept for checkpoint compatibility, never called."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)


class GuidedMultiScaleBlock(nn.Module):
    """The official ``MSB``: prepend one guide token per branch, run the multi-scale block."""

    def __init__(self, dims: tuple[int, int], cfg: dict):
        super().__init__()
        self.patch_embed = nn.ModuleList(
            ImagePatchEmbed(3, d, p) for d, p in zip(dims, cfg.get("patch_sizes", [8, 16]), strict=True)
        )
        self.msb = MultiScaleBlock(list(dims), list(cfg.get("msb_depths", [1, 3])),
                                   list(cfg.get("msb_heads", [8, 16])), float(cfg.get("msb_mlp_ratio", 2.0)),
                                   int(cfg.get("cross_depth", 1)))

    def forward(self, tokens: list[torch.Tensor], guides: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.msb([torch.cat([g, t], dim=1) for g, t in zip(guides, tokens, strict=True)])


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _map(tokens: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(ref.shape)


class LGCEDecoder(SimpleDecoder):
    """LAVT's decoder preceded by the language-guided cross-scale enhancement of c3 and c4."""

    def __init__(self, in_channels: tuple[int, int, int, int], text_dim: int, cfg: dict, num_classes: int = 2):
        super().__init__(in_channels, num_classes, cfg.get("hidden"))
        c1, c2, c3, c4 = in_channels
        self.msb1 = GuidedMultiScaleBlock((c3, c4), cfg)
        self.msb2 = GuidedMultiScaleBlock((c2, c3), cfg)  # unused (official checkpoint compatibility)
        self.msb3 = GuidedMultiScaleBlock((c1, c2), cfg)  # unused (official checkpoint compatibility)
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"lg_layer{i}", nn.Linear(text_dim, c))  # lg_layer1/2 unused

    def forward(self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor,
                sentence: torch.Tensor | None = None) -> torch.Tensor:
        if sentence is None:
            raise ValueError("the LGCE decoder needs the sentence vector")
        guides = [self.lg_layer3(sentence).unsqueeze(1), self.lg_layer4(sentence).unsqueeze(1)]
        out3, out4 = self.msb1([_tokens(c3), _tokens(c4)], guides)
        return super().forward(c1, c2, _map(out3[:, 1:], c3), _map(out4[:, 1:], c4))


class GateInitBackbone(LanguageSwinBackbone):
    """LAVT's backbone with a choice of language-gate initialisation (``fusion.gate_init``).

    The published LGCE stage constructor zero-initialises both Linear layers of every gate, but its factory then
    calls the backbone's ``init_weights``, which re-draws every Linear weight trunc-normal(0.02): the published
    training starts from LAVT's initialisation. That is the default here (``trunc_normal``). ``zero`` reproduces
    the constructor alone; note that with both Linear layers at zero the gates receive exactly zero gradient and
    stay closed for the whole training. Converted weights are identical either way.
    """

    def __init__(self, cfg: dict, text_dim: int, fusion_cfg: dict):
        super().__init__(cfg, text_dim, fusion_cfg)
        mode = fusion_cfg.get("gate_init", "trunc_normal")
        if mode not in ("trunc_normal", "zero"):
            raise ValueError(f"fusion.gate_init must be 'trunc_normal' or 'zero', not {mode!r}")
        if mode == "zero":
            for stage in self.layers:
                nn.init.zeros_(stage.res_gate[0].weight)
                nn.init.zeros_(stage.res_gate[2].weight)


def sentence_vector(text: TextFeatures, pool: str) -> torch.Tensor:
    """(B, C_l): mean over all L positions (``all``, official) or over the real tokens (``masked``)."""
    if pool == "all":
        return text.features.mean(-1)
    if pool == "masked":
        mask = text.mask.permute(0, 2, 1)  # (B, 1, L)
        return (text.features * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    raise ValueError(f"sentence_pool must be 'all' or 'masked', not {pool!r}")


class LGCE(LAVT):
    """LGCE with the text encoder inside (keys ``text_encoder.*``, ``backbone.*``, ``classifier.*``)."""

    arch = "lgce"
    official_layout = "bert_model"

    @property
    def padding_invariant(self) -> bool:
        """Not with the official ``sentence_pool: all``: the sentence vector averages padding positions too."""
        return self.sentence_pool != "all"

    def unused_parameters(self) -> tuple[str, ...]:
        """LAVT's, plus :data:`UNUSED_OFFICIAL_MODULES`."""
        return (*super().unused_parameters(), *UNUSED_OFFICIAL_MODULES)

    def __init__(self, config: dict):
        ReferringSegmenter.__init__(self, config)
        decoder_cfg = dict(config.get("decoder", {}))
        self.sentence_pool = str(decoder_cfg.get("sentence_pool", "all"))
        if self.sentence_pool not in ("all", "masked"):
            raise ValueError(f"decoder.sentence_pool must be 'all' or 'masked', not {self.sentence_pool!r}")
        self.backbone = GateInitBackbone(config["backbone"], self.text_dim, config.get("fusion", {}))
        self.classifier = LGCEDecoder(tuple(self.backbone.num_features), self.text_dim, decoder_cfg)

    @staticmethod
    def official_config_extras(state: dict[str, torch.Tensor]) -> dict:
        """Decoder settings read off the checkpoint: ViT blocks per branch, cross blocks, patch sizes.

        Head counts leave no trace in the shapes; the published values (8, 16) are used.
        """
        prefix = "classifier.msb1."

        def count(pattern: str) -> int:
            found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + pattern, k))}
            return max(found) + 1 if found else 0

        decoder = {"sentence_pool": "all", "msb_heads": [8, 16], "msb_mlp_ratio": 2.0,
                   "msb_depths": [count(r"msb\.blocks\.0\.(\d+)\."), count(r"msb\.blocks\.1\.(\d+)\.")],
                   "cross_depth": count(r"msb\.fusion\.0\.(\d+)\.")}
        sizes = [state.get(f"{prefix}patch_embed.{i}.proj.weight") for i in (0, 1)]
        if all(w is not None for w in sizes):
            decoder["patch_sizes"] = [int(w.shape[-1]) for w in sizes]
        fc1 = state.get(f"{prefix}msb.blocks.0.0.mlp.fc1.weight")
        if fc1 is not None:
            decoder["msb_mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
        return {"decoder": decoder}

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        text = text.expand(pixel_values.shape[0])
        c1, c2, c3, c4 = self.backbone(pixel_values, text)
        logits = self.classifier(c1, c2, c3, c4, sentence_vector(text, self.sentence_pool))
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)


MODEL_CLASS = LGCE
DEFAULT_CARD = "lgce-swin-b"

"""CroBIM: Cross-modal Bidirectional Interaction Model (Dong et al., "Cross-Modal Bidirectional Interaction Model
for Referring Remote Sensing Image Segmentation", arXiv:2410.08613; the paper that introduced RISBench).

No reference code is public and the method section could not be read: the design follows the data flow of the
official figure and the reconstruction in ``shared/reference/papers.md`` §2 (tags there: [P] figure/abstract,
[INF] inferred). Where two readings are plausible the choice is a configuration switch (in brackets below).

Data flow (shapes for Swin-B / ConvNeXt-B at 480 px, L tokens, D = 768 BERT width, N_p prompts, g grid):

1. **Image encoder** (``backbone.type: swin | convnext``), no language inside (late fusion, as the figure draws
   it): four maps F_i (B, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32, C = 128, 256, 512, 1024.
2. **CAPM**, context-aware prompt modulation: every F_i is average-pooled to a g x g grid (``capm.grid``, 4),
   projected Linear(C_i -> D), plus a level and a grid-position embedding -> visual context (B, 4 g^2, D).
   N_p learnable prompts (``capm.num_prompts``, 4 as drawn) query it with one pre-norm cross-attention + MLP
   layer (``capm.num_heads``) -> modulated prompts (B, N_p, D). They are appended after the word embeddings and
   the text encoder runs on ``[E_w ; P]`` with mask ``[M ; 1]`` -> T_aug (B, L + N_p, D).
   The prompts take the position ids ``n + 0 .. n + N_p - 1`` with ``n`` the number of real tokens (the
   figure draws them right after the words); with those ids and padding masked as keys, appending padding
   tokens to the expression leaves the output unchanged. Token-type ids are 0 [INF].
3. **Text encoder, plain pass**: T_w = BERT(ids, M) (B, L, D), read by LGFA. The figure draws two encoder
   passes (prompted for MID, plain for LGFA); ``capm.text_passes: 1`` instead reads T_aug[:, :L] in LGFA.
4. **LGFA**, language-guided feature aggregation:
   * language-to-vision interaction per level (``lgfa.interaction``): ``attention`` (default)
     F_i' = F_i + gamma_i * Attn(q = LN(F_i), k = v = T_w) with padded words masked and gamma_i a learnable
     scalar (``lgfa.gamma_init``); ``pwam``: LAVT's pixel-word attention and tanh gate,
     F_i' = F_i + gate(PWAM(F_i, T_w)) * PWAM(F_i, T_w); ``lgfa.num_blocks`` (1) such blocks in a row per level;
   * multi-scale attention fusion (``lgfa.scale_fusion``): each F_i' -> 1x1 conv + BN + ReLU to C_f
     (``lgfa.channels``, 256), resized to stride ``lgfa.stride`` (8: 60 x 60); ``attention``: per-pixel softmax
     weights over the levels from a 3x3 conv on their concatenation, F_fus = sum_i w_i * P_i; ``concat``: a
     3x3 conv + BN + ReLU on the concatenation;
   * attention-deficit compensation (``lgfa.adc``, speculative: only the name is known). Relevance
     a = sigmoid(tau * cos(F_fus, W_s mean(T_w))) per pixel (tau learnable, ``lgfa.adc_tau``);
     ``relevance``: F_out = a * F_fus + (1 - a) * G(F_fus) with G a 3x3 conv + BN + ReLU on F_fus plus its
     global-average context; ``residual``: F_out = F_fus + lambda * (1 - a) * sum_i P_i(pre-language F_i);
     ``none``: F_out = F_fus; lambda is learnable, initialised at ``lgfa.adc_lambda`` (1.0).
     Output (B, C_f, H/8, W/8).
5. **MID**, mutual-interaction decoder: V_0 = F_out tokens (B, N, C_f) with 2-D sine positions,
   T_0 = Linear(D -> C_f)(T_aug). ``mid.num_layers`` (3) cascaded pairs, pre-norm:
   language-to-vision alignment T <- T + Attn(q = T, k = V + pos, v = V), T <- T + MLP(T) (the text tokens
   gather visual evidence), then vision-to-language alignment V <- V + Attn(q = V + pos, k = v = T, masked),
   V <- V + MLP(V) (``mid.order: text_first``; ``pixels_first`` runs the pixel update first in every pair).
   The block names follow the figure, whose arrows only make sense with this reading (§2.3).
   Skip (the figure's sum node): P = V_L + V_0, LayerNorm-ed per pixel [INF].
6. **Mask head** (the figure's product node), ``mid.head``: ``kernels`` (default) k = MLP(masked mean of
   LN(T_L)) -> (B, 2, C_f) and logits = k . P / sqrt(C_f); ``token_max``: z = max over valid tokens of
   LN(T_L) . P / sqrt(C_f), logits = [-z, z]. ``mid.refine_stride4`` [INF, not drawn] first upsamples P x2 and
   merges the language-enhanced stride-4 map F_1'. Logits are upsampled bilinearly (align_corners=True, as in
   the LAVT lineage) to the input size.

Contract (DESIGN §3): :meth:`CroBIM.encode_text` caches what depends on the prompt alone: ``features`` =
T_w (the plain BERT pass, (B, D, L)), ``mask`` (B, L, 1) and ``extras["word_embeddings"]`` = the word-embedding
lookup E_w (B, L, D). :meth:`CroBIM.forward_with_text` does the image-dependent rest, including CAPM and the
prompted BERT pass over L + N_p tokens, which therefore runs once per tile. With ``capm.text_passes: 1`` the
plain pass is still cached (one BERT pass per prompt) but only the prompted pass feeds the model.
Real tokens must come first in every row (as :func:`rrsis_cli.models.text.tokenize` produces them).

Other assumptions (all [INF]): widths C_f = 256 and MID heads 8 / MLP ratio 4; LGFA heads per level; a plain
Swin / ConvNeXt encoder with a LayerNorm on every output (the dense-prediction variants); prompts and CAPM
embeddings trunc-normal(0.02); every Linear of the new modules trunc-normal(0.02), LayerNorm 1/0; loss in the
cards: RMSIN's 0.9 CE + 0.1 Dice; training recipe: the LAVT/RMSIN one (BERT layers 0-9 train, the embeddings
stay frozen, so the prompts learn through CAPM's own parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.errors import ModelError
from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.convnext import ConvNeXt
from rrsis_cli.models.fusion import PWAM, tanh_gate
from rrsis_cli.models.swin import (
    Mlp,
    PatchMerging,
    SwinStage,
    drop_path_schedule,
    init_transformer_weights,
    patch_embed_for,
    swin_dims,
)

# ----------------------------------------------------------------------------------------------------------
# Image encoders (no language inside)
# ----------------------------------------------------------------------------------------------------------


class SwinEncoderStage(SwinStage):
    """A Swin stage followed (except the last) by patch merging; keys as the official release."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: list[float], downsample: bool):
        super().__init__(dim, depth, num_heads, window, mlp_ratio, drop_path)
        self.downsample = PatchMerging(dim) if downsample else None


class SwinEncoder(nn.Module):
    """Plain hierarchical Swin: ``forward(image)`` -> four LayerNorm-ed maps (B, C_i, H/2^(i+2), W/2^(i+2)).

    Keys (``patch_embed``, ``layers.i.blocks.j``, ``layers.i.downsample``, ``norm{i}``) match LAVT's backbone
    minus its fusion modules, so ``models init --backbone-weights`` loads an official Swin release.
    """

    def __init__(self, cfg: dict):
        super().__init__()
        embed, depths, heads, window, self.num_features = swin_dims(cfg)
        self.patch_embed = patch_embed_for(cfg)
        rates = drop_path_schedule(depths, float(cfg.get("drop_path_rate", 0.3)))
        self.layers = nn.ModuleList(
            SwinEncoderStage(self.num_features[i], depths[i], heads[i], window, float(cfg.get("mlp_ratio", 4.0)),
                             rates[i], downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        init_transformer_weights(self)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(image)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x, h, w)
            out = getattr(self, f"norm{i}")(x)
            outs.append(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outs


def build_image_encoder(cfg: dict) -> nn.Module:
    """``backbone.type``: ``swin`` (embed_dim, depths, num_heads, window_size, ...) or ``convnext``
    (``dims``, or ``embed_dim`` doubled per stage; depths, drop_path_rate, layer_scale_init)."""
    kind = cfg.get("type", "swin")
    if kind == "swin":
        return SwinEncoder(cfg)
    if kind == "convnext":
        depths = list(cfg["depths"])
        dims = list(cfg.get("dims") or [int(cfg["embed_dim"]) * 2 ** i for i in range(len(depths))])
        return ConvNeXt(dims, depths, int(cfg.get("in_chans", 3)), float(cfg.get("drop_path_rate", 0.0)),
                        float(cfg.get("layer_scale_init", 1e-6)))
    raise ModelError(f"unknown CroBIM backbone.type {kind!r}; known: swin, convnext")


# ----------------------------------------------------------------------------------------------------------
# Attention helpers
# ----------------------------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Nq, dim) over keys/values (B, Nk, kv_dim) -> (B, Nq, dim).

    ``key_mask`` (B, Nk) bool, True on keys that take part; a masked key gets exactly zero weight.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"attention width {dim} is not divisible by {num_heads} heads")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention + MLP: ``x + Attn(LN(x) + pos_x, LN(c) + pos_c, LN(c))``, ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None):
        super().__init__()
        context_dim = context_dim or dim
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.attn = CrossAttention(dim, num_heads, context_dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                pos_x: torch.Tensor | None = None, pos_context: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_query(x)
        c = self.norm_context(context)
        x = x + self.attn(q if pos_x is None else q + pos_x, c if pos_context is None else c + pos_context, c,
                          context_mask)
        return x + self.mlp(self.norm_mlp(x))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, C) tokens over the positions where ``mask`` (B, T) is true -> (B, C)."""
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1.0)


def sine_positions(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype,
                   temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine/cosine position embedding (1, h * w, dim) on coordinates normalised to (0, 2 pi]: the first
    half of the channels encodes y, the second x (DETR style)."""
    if dim % 4:
        raise ModelError(f"sine positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / h) * 2 * math.pi
    xs = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / w) * 2 * math.pi
    ey = ys[:, None] / freqs  # (h, quarter)
    ex = xs[:, None] / freqs  # (w, quarter)
    ey = torch.cat([ey.sin(), ey.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    ex = torch.cat([ex.sin(), ex.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([ey, ex], dim=-1).reshape(1, h * w, dim).to(dtype)


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average pooling to a smaller map, bilinear (align_corners=False) interpolation to a larger one."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


# ----------------------------------------------------------------------------------------------------------
# CAPM: context-aware prompt modulation
# ----------------------------------------------------------------------------------------------------------


class CAPM(nn.Module):
    """Learnable prompts modulated by pooled multi-scale visual context: four maps -> (B, N_p, D).

    ``visual_context``: each level adaptive-average-pooled to ``grid`` x ``grid``, Linear(C_i -> D), plus a
    level embedding and a grid-position embedding (shared by the levels) -> (B, levels * grid^2, D).
    ``forward``: one pre-norm cross-attention + MLP layer, prompts as queries over that context.
    """

    def __init__(self, in_channels: list[int], text_dim: int, num_prompts: int = 4, grid: int = 4,
                 num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = grid
        self.context_proj = nn.ModuleList(nn.Linear(c, text_dim) for c in in_channels)
        self.level_embed = nn.Parameter(torch.zeros(len(in_channels), text_dim))
        self.grid_embed = nn.Parameter(torch.zeros(grid * grid, text_dim))
        self.prompts = nn.Parameter(torch.zeros(num_prompts, text_dim))
        self.interaction = CrossAttentionLayer(text_dim, num_heads, mlp_ratio)
        init_transformer_weights(self)
        for p in (self.level_embed, self.grid_embed, self.prompts):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    def visual_context(self, feats: list[torch.Tensor]) -> torch.Tensor:
        tokens = []
        for i, (f, proj) in enumerate(zip(feats, self.context_proj, strict=True)):
            pooled = _tokens(F.adaptive_avg_pool2d(f, self.grid))  # (B, g*g, C_i)
            tokens.append(proj(pooled) + self.level_embed[i] + self.grid_embed)
        return torch.cat(tokens, dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        context = self.visual_context(feats)
        prompts = self.prompts.unsqueeze(0).expand(context.shape[0], -1, -1)
        return self.interaction(prompts, context)


# ----------------------------------------------------------------------------------------------------------
# LGFA: language-guided feature aggregation
# ----------------------------------------------------------------------------------------------------------


class LanguageToVisionAttention(nn.Module):
    """``F + gamma * Attn(q = LN(F), k = v = words)`` on a (B, C, h, w) map; padded words masked."""

    def __init__(self, dim: int, text_dim: int, num_heads: int, gamma_init: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads, text_dim)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def forward(self, f: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _tokens(f)
        x = x + self.gamma * self.attn(self.norm(x), words, words, mask)
        return _map(x, *f.shape[-2:])


class LanguageToVisionPWAM(nn.Module):
    """LAVT's gated pixel-word attention on a (B, C, h, w) map: ``F + gate(mm) * mm``, ``mm = PWAM(F, words)``."""

    def __init__(self, dim: int, text_dim: int, num_heads: int):
        super().__init__()
        self.fusion = PWAM(dim, text_dim, num_heads=num_heads)
        self.res_gate = tanh_gate(dim)

    def forward(self, f: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = _tokens(f)
        mm = self.fusion(x, words.transpose(1, 2), mask.to(x.dtype).unsqueeze(-1))
        return _map(x + self.res_gate(mm) * mm, *f.shape[-2:])


class ScaleFusion(nn.Module):
    """Multi-scale attention fusion: per level 1x1 conv + BN + ReLU to ``dim``, resize to ``size``, then a
    per-pixel softmax over the levels (``attention``) or a 3x3 conv over their concatenation (``concat``)."""

    def __init__(self, in_channels: list[int], dim: int, mode: str = "attention"):
        super().__init__()
        if mode not in ("attention", "concat"):
            raise ModelError(f"unknown lgfa.scale_fusion {mode!r}; known: attention, concat")
        self.mode = mode
        self.proj = nn.ModuleList(conv_bn_relu(c, dim, 1) for c in in_channels)
        n = len(in_channels)
        if mode == "attention":
            self.scale_weights = nn.Conv2d(n * dim, n, 3, padding=1)
        else:
            self.merge = conv_bn_relu(n * dim, dim, 3)

    def project(self, feats: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        return [resize_to(proj(f), size) for proj, f in zip(self.proj, feats, strict=True)]

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        levels = self.project(feats, size)
        stacked = torch.cat(levels, dim=1)
        if self.mode == "concat":
            return self.merge(stacked)
        weights = self.scale_weights(stacked).softmax(dim=1)  # (B, levels, h, w)
        return sum(weights[:, i:i + 1] * level for i, level in enumerate(levels))


class DeficitCompensation(nn.Module):
    """Attention-deficit compensation (speculative reconstruction, see the module docstring).

    Relevance ``a = sigmoid(tau * cos(F, W_s mean(words)))`` (B, 1, h, w); ``relevance`` mode:
    ``a * F + (1 - a) * G(F)``; ``residual`` mode: ``F + lambda * (1 - a) * pre``.
    """

    def __init__(self, dim: int, text_dim: int, mode: str = "relevance", tau_init: float = 10.0,
                 lambda_init: float = 1.0):
        super().__init__()
        if mode not in ("relevance", "residual"):
            raise ModelError(f"unknown lgfa.adc {mode!r}; known: relevance, residual, none")
        self.mode = mode
        self.sentence = nn.Linear(text_dim, dim)
        self.tau = nn.Parameter(torch.tensor(float(tau_init)))
        if mode == "relevance":
            self.context = nn.Conv2d(dim, dim, 1)
            self.refine = conv_bn_relu(dim, dim, 3)
        else:
            self.lam = nn.Parameter(torch.tensor(float(lambda_init)))

    def relevance(self, fused: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.sentence(masked_mean(words, mask))  # (B, C)
        cos = F.cosine_similarity(fused, s[:, :, None, None].expand_as(fused), dim=1, eps=1e-6)
        return torch.sigmoid(self.tau * cos).unsqueeze(1)

    def forward(self, fused: torch.Tensor, words: torch.Tensor, mask: torch.Tensor,
                pre: torch.Tensor | None = None) -> torch.Tensor:
        a = self.relevance(fused, words, mask)
        if self.mode == "relevance":
            g = self.refine(fused + self.context(F.adaptive_avg_pool2d(fused, 1)))
            return a * fused + (1 - a) * g
        return fused + self.lam * (1 - a) * pre


class LGFA(nn.Module):
    """Language-guided feature aggregation: four maps + words -> (fused (B, C_f, H/stride, W/stride),
    the four language-enhanced maps F_i')."""

    def __init__(self, in_channels: list[int], text_dim: int, cfg: dict):
        super().__init__()
        interaction = cfg.get("interaction", "attention")
        heads = list(cfg.get("num_heads", [1] * len(in_channels)))
        if interaction not in ("attention", "pwam"):
            raise ModelError(f"unknown lgfa.interaction {interaction!r}; known: attention, pwam")
        blocks = int(cfg.get("num_blocks", 1))
        if blocks < 1:
            raise ModelError(f"lgfa.num_blocks must be at least 1, got {blocks}")
        gamma = float(cfg.get("gamma_init", 0.0))

        def level_blocks() -> nn.ModuleList:
            if interaction == "attention":
                return nn.ModuleList(LanguageToVisionAttention(c, text_dim, h, gamma)
                                     for c, h in zip(in_channels, heads, strict=True))
            return nn.ModuleList(LanguageToVisionPWAM(c, text_dim, h) for c, h in zip(in_channels, heads, strict=True))

        # the first block per level keeps the keys ``interaction.<level>``; further ones (``lgfa.num_blocks``)
        # are ``interaction_more.<block>.<level>``
        self.interaction = level_blocks()
        self.interaction_more = nn.ModuleList(level_blocks() for _ in range(blocks - 1)) if blocks > 1 else None
        channels = int(cfg.get("channels", 256))
        self.stride = int(cfg.get("stride", 8))
        if self.stride not in (4, 8, 16, 32):
            raise ModelError(f"lgfa.stride must be 4, 8, 16 or 32, got {self.stride}")
        self.fusion = ScaleFusion(in_channels, channels, cfg.get("scale_fusion", "attention"))
        adc = cfg.get("adc", "relevance")
        self.adc = None if adc == "none" else DeficitCompensation(
            channels, text_dim, adc, float(cfg.get("adc_tau", 10.0)), float(cfg.get("adc_lambda", 1.0)))
        init_transformer_weights(self)

    def forward(self, feats: list[torch.Tensor], words: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        enhanced = [block(f, words, mask) for block, f in zip(self.interaction, feats, strict=True)]
        for more in self.interaction_more or ():
            enhanced = [block(f, words, mask) for block, f in zip(more, enhanced, strict=True)]
        size = tuple(feats[int(math.log2(self.stride)) - 2].shape[-2:])
        fused = self.fusion(enhanced, size)
        if self.adc is not None:
            pre = sum(self.fusion.project(feats, size)) if self.adc.mode == "residual" else None
            fused = self.adc(fused, words, mask, pre)
        return fused, enhanced


# ----------------------------------------------------------------------------------------------------------
# MID: mutual-interaction decoder and the mask head
# ----------------------------------------------------------------------------------------------------------


class MID(nn.Module):
    """Cascaded bidirectional cross-attention between pixels (B, C, h, w) and text tokens (B, T, D).

    Returns (pixel map P = V_L + V_0 LayerNorm-ed, (B, C, h, w); text tokens T_L, (B, T, C)).
    """

    ORDERS = ("text_first", "pixels_first")

    def __init__(self, dim: int, text_dim: int, num_layers: int = 3, num_heads: int = 8, mlp_ratio: float = 4.0,
                 order: str = "text_first"):
        super().__init__()
        if order not in self.ORDERS:
            raise ModelError(f"unknown mid.order {order!r}; known: {', '.join(self.ORDERS)}")
        self.order = order
        self.text_proj = nn.Linear(text_dim, dim)
        self.l2v_align = nn.ModuleList(CrossAttentionLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.v2l_align = nn.ModuleList(CrossAttentionLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.pixel_norm = nn.LayerNorm(dim)
        init_transformer_weights(self)

    def forward(self, visual: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = visual.shape
        v0 = _tokens(visual)
        pos = sine_positions(h, w, c, visual.device, visual.dtype)
        v, t = v0, self.text_proj(text)
        for l2v, v2l in zip(self.l2v_align, self.v2l_align, strict=True):
            if self.order == "text_first":
                t = l2v(t, v, pos_context=pos)  # text tokens gather visual evidence
                v = v2l(v, t, text_mask, pos_x=pos)  # pixels read the updated text
            else:
                v = v2l(v, t, text_mask, pos_x=pos)  # pixels read the text first
                t = l2v(t, v, pos_context=pos)
        return _map(self.pixel_norm(v + v0), h, w), t


class MaskHead(nn.Module):
    """The product node: pixel features x language vectors -> (B, 2, h, w) logits (``kernels`` | ``token_max``);
    with ``refine_channels``, P is first upsampled to stride 4 and refined with the language-enhanced first
    level: ``P <- up(P) + conv3x3-BN-ReLU([up(P), F_1'])``."""

    def __init__(self, dim: int, head: str = "kernels", refine_channels: int | None = None):
        super().__init__()
        if head not in ("kernels", "token_max"):
            raise ModelError(f"unknown mid.head {head!r}; known: kernels, token_max")
        self.head = head
        self.scale = dim ** -0.5
        self.text_norm = nn.LayerNorm(dim)
        if head == "kernels":
            self.kernel_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2 * dim))
        self.refine = None
        if refine_channels is not None:
            self.refine = conv_bn_relu(dim + refine_channels, dim, 3)
        init_transformer_weights(self)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                stride4: torch.Tensor | None = None) -> torch.Tensor:
        if self.refine is not None:
            up = F.interpolate(pixels, size=stride4.shape[-2:], mode="bilinear", align_corners=False)
            pixels = up + self.refine(torch.cat([up, stride4], dim=1))
        tokens = self.text_norm(tokens)
        if self.head == "kernels":
            kernels = self.kernel_mlp(masked_mean(tokens, mask)).view(tokens.shape[0], 2, -1)
            return torch.einsum("bkc,bchw->bkhw", kernels, pixels) * self.scale
        scores = torch.einsum("btc,bchw->bthw", tokens, pixels) * self.scale
        scores = scores.masked_fill(~mask[:, :, None, None], float("-inf"))
        z = scores.amax(dim=1, keepdim=True)
        return torch.cat([-z, z], dim=1)


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------


class CroBIM(ReferringSegmenter):
    """CroBIM with the text encoder inside (keys ``text_encoder.*``, ``backbone.*``, ``capm.*``, ``lgfa.*``,
    ``mid.*``, ``head.*``). See the module docstring for the data flow and what ``encode_text`` caches."""

    arch = "crobim"

    def __init__(self, config: dict):
        super().__init__(config)
        self.backbone = build_image_encoder(config["backbone"])
        channels = list(self.backbone.num_features)
        capm = config.get("capm", {})
        self.text_passes = int(capm.get("text_passes", 2))
        if self.text_passes not in (1, 2):
            raise ModelError(f"capm.text_passes must be 1 or 2, got {self.text_passes}")
        self.capm = None
        if capm.get("enabled", True):
            self.capm = CAPM(channels, self.text_dim, int(capm.get("num_prompts", 4)), int(capm.get("grid", 4)),
                             int(capm.get("num_heads", 8)), float(capm.get("mlp_ratio", 4.0)))
        lgfa = config.get("lgfa", {})
        self.lgfa = LGFA(channels, self.text_dim, lgfa)
        dim = int(lgfa.get("channels", 256))
        mid = config.get("mid", {})
        self.mid = MID(dim, self.text_dim, int(mid.get("num_layers", 3)), int(mid.get("num_heads", 8)),
                       float(mid.get("mlp_ratio", 4.0)), str(mid.get("order", "text_first")))
        refine = channels[0] if mid.get("refine_stride4", False) else None
        self.head = MaskHead(dim, mid.get("head", "kernels"), refine)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Prompt-only part: the plain BERT pass T_w (``features``), the mask, and the word-embedding lookup
        (``extras["word_embeddings"]``, (B, L, D)) that the image-dependent prompted pass starts from."""
        text = super().encode_text(input_ids, attention_mask)
        text.extras["word_embeddings"] = self.text_encoder.embeddings.word_embeddings(input_ids)
        return text

    def prompted_text(self, prompts: torch.Tensor, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT over ``[E_w ; prompts]`` with mask ``[M ; 1]``; the prompts sit at positions n .. n + N_p - 1
        (n real tokens). Returns T_aug (B, L + N_p, D) and its bool mask (B, L + N_p)."""
        words = text.extras["word_embeddings"]
        mask = text.mask[..., 0]
        b, length, _ = words.shape
        n_prompts = prompts.shape[1]
        real = mask.sum(1).long()
        word_pos = torch.arange(length, device=words.device).expand(b, length)
        prompt_pos = real[:, None] + torch.arange(n_prompts, device=words.device)
        full_mask = torch.cat([mask, mask.new_ones(b, n_prompts)], dim=1)
        hidden = self.text_encoder(
            inputs_embeds=torch.cat([words, prompts.to(words.dtype)], dim=1),
            attention_mask=full_mask.long(),
            position_ids=torch.cat([word_pos, prompt_pos], dim=1),
            token_type_ids=torch.zeros((b, length + n_prompts), dtype=torch.long, device=words.device),
        )[0]
        return hidden, full_mask > 0

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        text = text.expand(pixel_values.shape[0])
        feats = self.backbone(pixel_values)
        words = text.features.transpose(1, 2)  # T_w (B, L, D)
        mask = text.mask[..., 0] > 0
        if self.capm is not None:
            augmented, aug_mask = self.prompted_text(self.capm(feats), text)
        else:
            augmented, aug_mask = words, mask
        lang = words if self.text_passes == 2 else augmented[:, : words.shape[1]]
        fused, enhanced = self.lgfa(feats, lang, mask)
        pixels, tokens = self.mid(fused, augmented, aug_mask)
        logits = self.head(pixels, tokens, aug_mask, enhanced[0] if self.head.refine is not None else None)
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)


MODEL_CLASS = CroBIM
DEFAULT_CARD = "crobim-swin-b"

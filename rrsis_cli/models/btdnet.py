"""BTDNet: Bidirectional Alignment Guided Joint Prediction (Zhang et al., arXiv:2502.08486), rebuilt from the
paper's abstract and the implementer's notes (``shared/reference/papers.md`` §4). No official code could be read,
so everything below the module names is a reconstruction; the choices are listed at the end of this docstring
and, where two readings are plausible, are configuration switches.

Data flow (B batch, H x W input, L tokens, D text width, C_i = embed * 2^(i-1) Swin widths, s_i = 4 * 2^(i-1))::

    text:  BERT(ids, mask) -> T (B, L, D)                           [cached by ``encode_text``]
    image: Swin patch embedding + stages 1..4; after the blocks of stage i, BSC_i:
        F~ = norm(W_v F_i)  (B, N_i, d_i)      T~ = norm(W_t T)  (B, L, d_i)     (L2-normalised)
        S  = F~ T~^T / tau  (B, N_i, L), padded words masked
        vision <- language   F_i'  = F_i + W_o softmax_L(S) T~                (B, N_i, C_i)
        language <- vision   T     = T + W_o' softmax_N(S^T) F~              (B, L, D), refined level by level
        spatial correlation  c_i   = sigmoid(max_l S)  (or masked mean)      (B, N_i, 1)
        placement ``encoder``: F_i'' = F_i' * (1 + c_i) continues into patch merging and stage i+1 (early fusion,
        as LAVT); ``post``: stage i+1 sees the plain stage output (late fusion, same BSC weights).
        Stage output for the decoder: LayerNorm_i(F_i') and c_i, as (B, C_i, H/s_i, W/s_i) and (B, 1, ., .).
    T-BTD (target-background twin-stream decoder), two streams with LAVT's ``SimpleDecoder`` architecture
        (three top-down steps 1/32 -> 1/16 -> 1/8 -> 1/4, width ``hidden``) and their own weights:
        target stream inputs      X_i^t = F_i' * (1 + c_i)
        background stream inputs  X_i^b = F_i' * (2 - c_i)   (``background: complement``, the (1 - c) map)
                                  or X_i^t with a learned background query (``background: query``)
        after every step: FiLM from the refined sentence vector s = masked-mean(T) (background: s + q_b),
        then the exchange  D_t <- D_t - a_t D_b,  D_b <- D_b - a_b D_t  (learnable a per step, simultaneous)
        1x1 heads: z_t, z_b (B, 1, H/4, W/4), bilinearly upsampled (align_corners=True) to H x W.
    joint prediction: logits = [z_b, z_t] (B, 2, H, W): channel 0 the background stream, channel 1 the target
        stream. Softmax of this pair is the product of the two streams' beliefs:
        P(target) = a (1 - b) / (a (1 - b) + b (1 - a)),  a = sigmoid(z_t), b = sigmoid(z_b)
        (the two streams as independent experts; the target odds are e^(z_t - z_b)).

Training only (``training_losses``; inference needs none of it):

* joint weighted CE on [z_b, z_t] — the card's ``loss:`` section, added by the Trainer;
* ``aux_losses.target_dice`` x Dice(sigmoid(z_t), G) and ``aux_losses.background_dice`` x Dice(sigmoid(z_b), 1 - G):
  the two streams are supervised with complementary targets;
* ``aux_losses.bsc_contrastive`` x InfoNCE per level between the BSC sentence vector and the mean BSC visual
  feature of the target (area-pooled ground truth), with the pure-background pixels as negatives;
* D-MOLS (dual-modal object learning), ``aux_losses.reconstruction`` x (L_vis + L_txt): a second pass over the same
  sample with ``dmols.image_mask_ratio`` of the ``image_mask_patch`` px patches zeroed (the normalised mean) and
  ``dmols.word_mask_ratio`` of the real words replaced by [MASK]; from the masked pass' target-region feature
  o = pool_G(F'_k) (level ``dmols.level``) a vision head reconstructs the unmasked pass' pool_G(F'_k) and a text
  head reconstructs the unmasked sentence embedding masked-mean(BERT(ids)); targets carry no gradient;
  L = 1 - cosine (``dmols.loss: cosine``) or the mean squared error (``l2``). The heads (``dmols.*``) are stored with the model but are not used by ``forward``.

Assumptions and deviations (all [INF] in papers.md unless stated; the paper's formulas were not readable):

1. Backbone Swin-B (window 12, ImageNet-22k init) and BERT-base, 480 px, 20 tokens: the lineage defaults; the
   paper's backbone is not known (BERT is, from a third-party summary).
2. BSC as above, one head (``bsc.num_heads``: the width split into heads, each L2-normalised and correlated
   on its own, the spatial maps averaged over heads), width d_i = C_i (``bsc.dim``), learnable temperature initialised at 0.07, placed after
   every Swin stage (``bsc.placement: encoder``; ``post`` is the late-fusion reading). The text is refined
   level by level (``bsc.update_text``), which is how "multi-scale interaction" is read here; the refined text
   depends on the image, so only BERT's output is cached per prompt.
3. T-BTD reuses LAVT's decoder per stream at width 256 for Swin-B (half of LAVT's 512, so the two streams cost
   about as much as LAVT's one); FiLM layers start as the identity (zero init), the exchange at 0.1.
4. The two logits are [z_b, z_t] (documented choice above); no separate fusion layer.
5. Loss weights 1 (joint CE, LAVT class weights [0.9, 1.1]) / 0.5 / 0.5 / 0.1 (reconstruction) /
   0.1 (contrastive) are the notes' proposal; the paper's are not known. D-MOLS masking 30 % of 16 px patches and
   15 % of the words, level 3 (stride 16, one token per masked patch), cosine reconstruction losses.
6. D-MOLS doubles the backbone and text-encoder work of a training step (one extra forward and backward, no
   decoder); it is skipped when its weight is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.decoders import SimpleDecoder
from rrsis_cli.models.swin import (
    Mlp,
    PatchMerging,
    SwinStage,
    drop_path_schedule,
    init_transformer_weights,
    patch_embed_for,
    swin_dims,
)

PLACEMENTS = ("encoder", "post")
SPATIAL_POOLS = ("max", "mean")
BACKGROUND_MODES = ("complement", "query")
RECONSTRUCTION_LOSSES = ("cosine", "l2")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: x (B, L, D), mask (B, L, 1) with 1 on real tokens -> (B, D)."""
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _choice(cfg: dict, key: str, default: str, allowed: tuple[str, ...], section: str) -> str:
    value = str(cfg.get(key, default))
    if value not in allowed:
        raise ValueError(f"{section}.{key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------
# BSC: bidirectional spatial correlation
# ----------------------------------------------------------------------------------------------------------

@dataclass
class BSCTrace:
    """What the training losses need from one BSC level: the normalised visual projection (B, N, d), the
    normalised sentence projection (B, d), the correlation scale 1/tau and the token grid."""

    visual: torch.Tensor
    sentence: torch.Tensor
    scale: torch.Tensor
    grid: tuple[int, int]


class BidirectionalSpatialCorrelation(nn.Module):
    """Cosine correlation between pixels and words, used in both directions plus a spatial gate.

    ``forward(x (B, N, C), words (B, L, D), mask (B, L, 1))`` -> ``(x' (B, N, C), c (B, N, 1), words' (B, L, D),
    trace)``. Padded words get exactly zero attention and are excluded from the spatial map, so appending padding
    changes nothing; padded words are updated too but never read.
    """

    def __init__(self, vis_dim: int, text_dim: int, dim: int | None = None, temperature: float = 0.07,
                 spatial_pool: str = "max", update_text: bool = True, num_heads: int = 1):
        super().__init__()
        dim = int(dim or vis_dim)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"bsc.num_heads must divide the correlation width {dim}, not {num_heads}")
        self.num_heads = num_heads
        self.spatial_pool = spatial_pool
        self.vis_proj = nn.Linear(vis_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.vis_out = nn.Linear(dim, vis_dim)
        self.text_out = nn.Linear(dim, text_dim) if update_text else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> per-head L2-normalised (B, heads, T, d / heads)."""
        b, n, _ = t.shape
        return F.normalize(t.view(b, n, self.num_heads, -1), dim=-1).transpose(1, 2)

    def forward(self, x: torch.Tensor, words: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BSCTrace]:
        b, n, _ = x.shape
        length = words.shape[1]
        vis = self._heads(self.vis_proj(x))  # (B, h, N, d/h)
        txt = self._heads(self.text_proj(words))  # (B, h, L, d/h)
        scale = self.scale()
        corr = scale * vis @ txt.transpose(-1, -2)  # (B, h, N, L)
        real = (mask.transpose(1, 2) > 0).unsqueeze(1)  # (B, 1, 1, L)
        corr_words = corr.masked_fill(~real, torch.finfo(corr.dtype).min)
        x = x + self.vis_out((corr_words.softmax(dim=-1) @ txt).transpose(1, 2).reshape(b, n, -1))
        if self.text_out is not None:
            words = words + self.text_out(
                (corr.transpose(-1, -2).softmax(dim=-1) @ vis).transpose(1, 2).reshape(b, length, -1))
        if self.spatial_pool == "max":
            score = corr_words.amax(dim=-1, keepdim=True)
        else:
            weights = real.to(corr.dtype)
            score = (corr * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp_min(1.0)
        score = score.mean(dim=1)  # (B, N, 1): the heads' spatial maps averaged
        # for the contrastive loss: the heads side by side, scaled back to unit length
        root = self.num_heads ** 0.5
        vis_flat = vis.transpose(1, 2).reshape(b, n, -1) / root
        txt_flat = txt.transpose(1, 2).reshape(b, length, -1) / root
        sentence = F.normalize(masked_mean(txt_flat, mask), dim=-1)
        return x, torch.sigmoid(score), words, BSCTrace(vis_flat, sentence, scale, (0, 0))


class BSCStage(SwinStage):
    """A Swin stage, its BSC module and (except the last stage) patch merging. Keys ``blocks``/``downsample``
    follow the Swin release, so ``load_swin_release`` fills them."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: list[float], text_dim: int, bsc_cfg: dict, downsample: bool):
        super().__init__(dim, depth, num_heads, window, mlp_ratio, drop_path)
        self.bsc = BidirectionalSpatialCorrelation(
            dim, text_dim, bsc_cfg.get("dim"), float(bsc_cfg.get("temperature", 0.07)),
            _choice(bsc_cfg, "spatial_pool", "max", SPATIAL_POOLS, "bsc"), bool(bsc_cfg.get("update_text", True)),
            int(bsc_cfg.get("num_heads", 1)))
        self.downsample = PatchMerging(dim) if downsample else None


@dataclass
class BackboneOutput:
    features: list[torch.Tensor]  # LayerNorm_i(F_i') as (B, C_i, h_i, w_i)
    maps: list[torch.Tensor]  # c_i as (B, 1, h_i, w_i)
    words: torch.Tensor  # refined text (B, L, D)
    traces: list[BSCTrace] = field(default_factory=list)


class BSCSwinBackbone(nn.Module):
    """Swin stages with a BSC module after each: ``forward(image, words, mask)`` -> :class:`BackboneOutput`."""

    def __init__(self, cfg: dict, text_dim: int, bsc_cfg: dict):
        super().__init__()
        embed, depths, heads, window, self.num_features = swin_dims(cfg)
        self.placement = _choice(bsc_cfg, "placement", "encoder", PLACEMENTS, "bsc")
        self.patch_embed = patch_embed_for(cfg)
        rates = drop_path_schedule(depths, float(cfg.get("drop_path_rate", 0.3)))
        self.layers = nn.ModuleList(
            BSCStage(self.num_features[i], depths[i], heads[i], window, float(cfg.get("mlp_ratio", 4.0)), rates[i],
                     text_dim, bsc_cfg, downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        init_transformer_weights(self)

    def forward(self, image: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> BackboneOutput:
        x = self.patch_embed(image)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        out = BackboneOutput([], [], words)
        for i, stage in enumerate(self.layers):
            x = stage(x, h, w)
            fused, corr, out.words, trace = stage.bsc(x, out.words, mask)
            trace.grid = (h, w)
            out.traces.append(trace)
            feat = getattr(self, f"norm{i}")(fused)
            out.features.append(feat.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            out.maps.append(corr.view(-1, h, w, 1).permute(0, 3, 1, 2))
            if self.placement == "encoder":
                x = fused * (1 + corr)
            if stage.downsample is not None:
                x = stage.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return out


# ----------------------------------------------------------------------------------------------------------
# T-BTD: target-background twin-stream decoder
# ----------------------------------------------------------------------------------------------------------

class FiLM(nn.Module):
    """``x * (1 + gamma(q)) + beta(q)`` per channel; zero-initialised, so it starts as the identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class TwinStreamDecoder(nn.Module):
    """Target and background streams (LAVT decoder architecture each), FiLM-conditioned and exchanging
    information after every top-down step. ``forward(features, maps, sentence)`` -> ``(z_b, z_t)``, each
    (B, 1, H/4, W/4)."""

    STEPS = (4, 3, 2)  # SimpleDecoder's fusion steps: into the stage-3, stage-2 and stage-1 skips

    def __init__(self, in_channels: tuple[int, int, int, int], text_dim: int, cfg: dict):
        super().__init__()
        hidden = int(cfg.get("hidden") or in_channels[-1] // 2)
        self.background_mode = _choice(cfg, "background", "complement", BACKGROUND_MODES, "decoder")
        self.target = SimpleDecoder(in_channels, 1, hidden)
        self.background = SimpleDecoder(in_channels, 1, hidden)
        self.target_film = nn.ModuleList(FiLM(text_dim, hidden) for _ in self.STEPS)
        self.background_film = nn.ModuleList(FiLM(text_dim, hidden) for _ in self.STEPS)
        if self.background_mode == "query":
            self.background_query = nn.Parameter(torch.zeros(text_dim))
            nn.init.trunc_normal_(self.background_query, std=0.02)
        self.exchange = bool(cfg.get("exchange", True))
        if self.exchange:
            init = float(cfg.get("exchange_init", 0.1))
            self.target_exchange = nn.Parameter(torch.full((len(self.STEPS),), init))
            self.background_exchange = nn.Parameter(torch.full((len(self.STEPS),), init))

    def stream_inputs(self, features: list[torch.Tensor],
                      maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        target = [f * (1 + c) for f, c in zip(features, maps, strict=True)]
        if self.background_mode == "complement":
            return target, [f * (2 - c) for f, c in zip(features, maps, strict=True)]
        return target, target

    def forward(self, features: list[torch.Tensor], maps: list[torch.Tensor],
                sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_t, x_b = self.stream_inputs(features, maps)
        cond_b = sentence + self.background_query if self.background_mode == "query" else sentence
        d_t, d_b = x_t[3], x_b[3]
        for k, step in enumerate(self.STEPS):
            d_t = self.target_film[k](self.target.fuse(step, d_t, x_t[step - 2]), sentence)
            d_b = self.background_film[k](self.background.fuse(step, d_b, x_b[step - 2]), cond_b)
            if self.exchange:
                d_t, d_b = d_t - self.target_exchange[k] * d_b, d_b - self.background_exchange[k] * d_t
        return self.background.conv1_1(d_b), self.target.conv1_1(d_t)


# ----------------------------------------------------------------------------------------------------------
# D-MOLS heads and the training losses
# ----------------------------------------------------------------------------------------------------------

class DMOLSHeads(nn.Module):
    """Reconstruction heads of the dual-modal object learning strategy (training only).

    ``vision``: target-region feature of the masked pass (C_k) -> that of the unmasked pass (C_k);
    ``text``: the same feature -> the unmasked sentence embedding (D).
    """

    def __init__(self, vis_dim: int, text_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = int(hidden or vis_dim)
        self.vision = Mlp(vis_dim, hidden)
        self.text = nn.Sequential(nn.Linear(vis_dim, hidden), nn.GELU(), nn.Linear(hidden, text_dim))

    def forward(self, obj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vision(obj), self.text(obj)


def binary_dice(logit: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice of sigmoid(logit) (B, 1, H, W) against a {0, 1} target (B, H, W), averaged over the batch."""
    prob = torch.sigmoid(logit.float()).flatten(1)
    tgt = target.float().flatten(1)
    inter = (prob * tgt).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + tgt.sum(1) + eps)).mean()


def reconstruction_error(pred: torch.Tensor, goal: torch.Tensor, form: str = "cosine") -> torch.Tensor:
    """Per-sample D-MOLS reconstruction error (B, C) x (B, C) -> (B,): ``cosine`` 1 - cos(pred, goal);
    ``l2`` the mean squared difference over the channels (scale-dependent, unlike cosine)."""
    pred, goal = pred.float(), goal.float()
    if form == "cosine":
        return 1 - F.cosine_similarity(pred, goal, dim=-1)
    return (pred - goal).pow(2).mean(-1)


def region_weights(target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of target pixels in every cell of ``grid`` (area pooling): (B, H, W) -> (B, h * w)."""
    return F.adaptive_avg_pool2d(target.float()[:, None], grid).flatten(1)


def region_pool(tokens: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of tokens (B, N, C) over the target region -> ((B, C), valid (B,) bool)."""
    total = weights.sum(1)
    pooled = (weights[..., None] * tokens).sum(1) / total.clamp_min(1e-6)[:, None]
    return pooled, total > 1e-6


def mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B,) over the valid samples; 0 (still in the graph) when none is valid."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def bsc_contrastive_loss(traces: list[BSCTrace], target: torch.Tensor) -> torch.Tensor:
    """InfoNCE per level: the sentence vector against the target prototype (positive) and every pure-background
    pixel (negatives), at BSC's temperature; averaged over samples with a target and over levels."""
    losses = []
    for tr in traces:
        weights = region_weights(target, tr.grid)
        proto, valid = region_pool(tr.visual.float(), weights)
        sentence = tr.sentence.float()
        scale = tr.scale.float()
        pos = scale * (F.normalize(proto, dim=-1) * sentence).sum(-1)
        neg = scale * torch.einsum("bnd,bd->bn", tr.visual.float(), sentence)
        neg = neg.masked_fill(weights > 0, float("-inf"))
        nce = torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos
        losses.append(mean_over(nce, valid))
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

@dataclass
class BTDNetOutput:
    z_b: torch.Tensor  # background-stream logit (B, 1, H, W)
    z_t: torch.Tensor  # target-stream logit (B, 1, H, W)
    backbone: BackboneOutput

    @property
    def logits(self) -> torch.Tensor:
        return torch.cat([self.z_b, self.z_t], dim=1)


class BTDNet(ReferringSegmenter):
    """BTDNet with the text encoder inside (keys ``text_encoder.*``, ``backbone.*``, ``decoder.*``, ``dmols.*``)."""

    arch = "btdnet"

    def __init__(self, config: dict):
        super().__init__(config)
        self.backbone = BSCSwinBackbone(config["backbone"], self.text_dim, config.get("bsc", {}))
        channels = tuple(self.backbone.num_features)
        self.decoder = TwinStreamDecoder(channels, self.text_dim, config.get("decoder", {}))
        self.dmols_cfg = dict(config.get("dmols", {}))
        self.dmols_level = int(self.dmols_cfg.get("level", 3))
        self.dmols_loss = _choice(self.dmols_cfg, "loss", "cosine", RECONSTRUCTION_LOSSES, "dmols")
        if not 1 <= self.dmols_level <= len(channels):
            raise ValueError(f"dmols.level must be in 1..{len(channels)}, not {self.dmols_level}")
        self.dmols = DMOLSHeads(channels[self.dmols_level - 1], self.text_dim, self.dmols_cfg.get("head_hidden"))
        self.aux_weights = {k: float(v) for k, v in dict(config.get("aux_losses", {})).items()}
        unknown = set(self.aux_weights) - {"target_dice", "background_dice", "bsc_contrastive", "reconstruction"}
        if unknown:
            raise ValueError(f"unknown aux_losses entries: {', '.join(sorted(unknown))}")

    # ------------------------------------------------------------------------------------------ inference
    def run(self, pixel_values: torch.Tensor, text: TextFeatures) -> BTDNetOutput:
        """Backbone with BSC, then the twin streams; stream logits at input resolution."""
        text = text.expand(pixel_values.shape[0])
        words = text.features.permute(0, 2, 1)
        feats = self.backbone(pixel_values, words, text.mask)
        z_b, z_t = self.decoder(feats.features, feats.maps, masked_mean(feats.words, text.mask))
        size = pixel_values.shape[-2:]
        z_b = F.interpolate(z_b, size=size, mode="bilinear", align_corners=True)
        z_t = F.interpolate(z_t, size=size, mode="bilinear", align_corners=True)
        return BTDNetOutput(z_b, z_t, feats)

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        return self.run(pixel_values, text).logits

    # ------------------------------------------------------------------------------------------- training
    def mask_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D-MOLS masking: zero random ``image_mask_patch`` px patches and replace random real words by [MASK]."""
        cfg = self.dmols_cfg
        patch = int(cfg.get("image_mask_patch", 16))
        b, _, h, w = pixel_values.shape
        grid = (b, 1, -(-h // patch), -(-w // patch))
        keep = (torch.rand(grid, device=pixel_values.device) >= float(cfg.get("image_mask_ratio", 0.3)))
        keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
        pixels = pixel_values * keep.to(pixel_values.dtype)
        special = torch.tensor(list(cfg.get("special_token_ids", [0, 101, 102])), device=input_ids.device)
        hit = torch.rand(input_ids.shape, device=input_ids.device) < float(cfg.get("word_mask_ratio", 0.15))
        hit &= (attention_mask > 0) & ~torch.isin(input_ids, special)
        return pixels, input_ids.masked_fill(hit, int(cfg.get("mask_token_id", 103)))

    def reconstruction_losses(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor, target: torch.Tensor, text: TextFeatures,
                              clean: BackboneOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_vis, L_txt) of D-MOLS (``dmols.loss``: 1 - cosine or mean squared error per sample), averaged over
        samples whose target reaches level k."""
        k = self.dmols_level - 1
        pixels, ids = self.mask_inputs(pixel_values, input_ids, attention_mask)
        masked_text = self.encode_text(ids, attention_mask)
        masked = self.backbone(pixels, masked_text.features.permute(0, 2, 1), masked_text.mask)
        grid = tuple(clean.features[k].shape[-2:])
        weights = region_weights(target, grid)
        obj, valid = region_pool(masked.features[k].flatten(2).transpose(1, 2), weights)
        goal_vis, _ = region_pool(clean.features[k].flatten(2).transpose(1, 2).detach(), weights)
        goal_txt = masked_mean(text.features.permute(0, 2, 1), text.mask).detach()
        rec_vis, rec_txt = self.dmols(obj)
        loss_vis = reconstruction_error(rec_vis, goal_vis, self.dmols_loss)
        loss_txt = reconstruction_error(rec_txt, goal_txt, self.dmols_loss)
        return mean_over(loss_vis, valid), mean_over(loss_txt, valid)

    def training_losses(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": joint logits, name: weighted term}`` for the Trainer, which adds the card's joint loss."""
        weights = self.aux_weights
        text = self.encode_text(input_ids, attention_mask)
        out = self.run(pixel_values, text)
        terms: dict[str, torch.Tensor] = {"logits": out.logits}
        if weights.get("target_dice", 0.0):
            terms["target_dice"] = weights["target_dice"] * binary_dice(out.z_t, target)
        if weights.get("background_dice", 0.0):
            terms["background_dice"] = weights["background_dice"] * binary_dice(out.z_b, 1 - target)
        if weights.get("bsc_contrastive", 0.0):
            terms["bsc_contrastive"] = weights["bsc_contrastive"] * bsc_contrastive_loss(out.backbone.traces, target)
        if weights.get("reconstruction", 0.0):
            loss_vis, loss_txt = self.reconstruction_losses(pixel_values, input_ids, attention_mask, target, text,
                                                            out.backbone)
            terms["dmols_vision"] = weights["reconstruction"] * loss_vis
            terms["dmols_text"] = weights["reconstruction"] * loss_txt
        return terms

    def inference_parameter_count(self) -> int:
        """Parameters used by ``forward`` (all but the D-MOLS heads)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("dmols."))


MODEL_CLASS = BTDNet
DEFAULT_CARD = "btdnet-swin-b"

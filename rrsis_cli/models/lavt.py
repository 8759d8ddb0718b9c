"""LAVT: Language-Aware Vision Transformer (Yang et al., CVPR 2022), faithful to the official numerics.

Image path: Swin stages; after the blocks of every stage, pixel-word attention (PWAM) fuses the words into
the pixels and a tanh gate adds the result back (``x + gate(mm) * mm``) before patch merging. The feature
handed to the decoder from stage i is ``norm_i(mm)`` (the PWAM output, not the gated sum). The
``SimpleDecoder`` predicts 2-class logits at 1/4 resolution, upsampled bilinearly (align_corners=True).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures
from rrsis_cli.models.decoders import SimpleDecoder
from rrsis_cli.models.fusion import PWAM, tanh_gate
from rrsis_cli.models.swin import (
    PatchMerging,
    SwinStage,
    drop_path_schedule,
    init_transformer_weights,
    patch_embed_for,
    swin_dims,
)


class LanguageSwinStage(SwinStage):
    """A Swin stage followed by PWAM, the language gate and (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: list[float], text_dim: int, fusion_heads: int, fusion_dropout: float,
                 downsample: bool):
        super().__init__(dim, depth, num_heads, window, mlp_ratio, drop_path)
        self.fusion = PWAM(dim, text_dim, num_heads=fusion_heads, dropout=fusion_dropout)
        self.res_gate = tanh_gate(dim)
        self.downsample = PatchMerging(dim) if downsample else None

    def fuse(self, x: torch.Tensor, text: TextFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (updated tokens, stage output for the decoder)."""
        mm = self.fusion(x, text.features, text.mask)
        return x + self.res_gate(mm) * mm, mm


class LanguageSwinBackbone(nn.Module):
    """Multi-modal Swin encoder: ``forward(image, text)`` -> four (B, C_i, H/2^(i+2), W/2^(i+2)) maps."""

    stage_class = LanguageSwinStage

    def __init__(self, cfg: dict, text_dim: int, fusion_cfg: dict):
        super().__init__()
        embed, depths, heads, window, self.num_features = swin_dims(cfg)
        self.patch_embed = patch_embed_for(cfg)
        if cfg.get("ape"):  # Swin's optional absolute position embedding, resized bicubically to the input
            grid = int(cfg.get("ape_grid", 24))
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        rates = drop_path_schedule(depths, float(cfg.get("drop_path_rate", 0.3)))
        fusion_heads = list(fusion_cfg.get("num_heads", [1] * len(depths)))
        self.layers = nn.ModuleList(
            self.stage_class(
                self.num_features[i], depths[i], heads[i], window, float(cfg.get("mlp_ratio", 4.0)), rates[i],
                text_dim, fusion_heads[i], float(fusion_cfg.get("dropout", 0.0)), downsample=i < len(depths) - 1,
            )
            for i in range(len(depths))
        )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        init_transformer_weights(self)

    def forward(self, image: torch.Tensor, text: TextFeatures) -> list[torch.Tensor]:
        x = self.patch_embed(image)
        h, w = x.shape[-2:]
        if hasattr(self, "absolute_pos_embed"):
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x, h, w)
            x, out = stage.fuse(x, text)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outs


class LAVT(ReferringSegmenter):
    """LAVT with the text encoder inside (keys ``text_encoder.*``, ``backbone.*``, ``classifier.*``)."""

    arch = "lavt"
    official_layout = "bert_model"  # the `lavt` scripts; `lavt_one` (BERT inside) converts too

    def __init__(self, config: dict):
        super().__init__(config)
        self.backbone = LanguageSwinBackbone(config["backbone"], self.text_dim, config.get("fusion", {}))
        self.classifier = SimpleDecoder(tuple(self.backbone.num_features), 2,
                                        config.get("decoder", {}).get("hidden"))

    def unused_parameters(self) -> tuple[str, ...]:
        """The last stage's language gate: it updates tokens that no later stage reads (as officially)."""
        return (f"backbone.layers.{len(self.backbone.layers) - 1}.res_gate",)

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        text = text.expand(pixel_values.shape[0])
        c1, c2, c3, c4 = self.backbone(pixel_values, text)
        logits = self.classifier(c1, c2, c3, c4)
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)


MODEL_CLASS = LAVT
DEFAULT_CARD = "lavt-swin-b"

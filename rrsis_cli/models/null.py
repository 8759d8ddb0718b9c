"""The ``null`` model: no learned cost, for measuring the host pipeline and for checkable outputs.

Its foreground logit at each pixel is a fixed function of that pixel and of the prompt:
``8 · (r − 0.5 g − 0.25 b) + 2 · bias(prompt)``, where r, g, b are the tile's first three channels as
normalised by predict (mean 0, std 1 in the card: uint8 scenes arrive as value / 255) and ``bias`` ∈ [−1, 1)
is a hash of the token ids. So the output at a pixel depends on that pixel alone (tiling and blending must
reproduce the whole-image computation exactly), different prompts give different masks, and a forward costs a
handful of element-wise operations: run with it, ``rrsis predict`` measures reading, normalising, blending,
writing and vectorising, not a network. It has no weights to load (``needs_weights = False``); its text encoder
is the tiny preset, kept only so that the model contract (``text_encoder``, ``tokenize``) holds, and unused.
"""

from __future__ import annotations

import torch

from rrsis_cli.models.base import ReferringSegmenter, TextFeatures


class NullModel(ReferringSegmenter):
    arch = "null"
    needs_weights = False
    large_activations = False

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """(B, 1, 1) prompt bias from the token ids (a fixed integer hash), no encoder call."""
        positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
        code = ((input_ids * attention_mask * positions * 2654435761) % 1000).sum(1) % 1000
        bias = code.to(torch.float32) / 500.0 - 1.0
        return TextFeatures(bias.view(-1, 1, 1), attention_mask.unsqueeze(-1).float())

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        x = pixel_values.float()
        bias = text.features.reshape(-1, 1, 1).to(x.device)
        foreground = 8.0 * (x[:, 0] - 0.5 * x[:, 1] - 0.25 * x[:, 2]) + 2.0 * bias
        return torch.stack([torch.zeros_like(foreground), foreground], 1)


MODEL_CLASS = NullModel
DEFAULT_CARD = "null"

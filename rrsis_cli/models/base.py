"""The model contract shared by every architecture (DESIGN §3).

``m(pixel_values, input_ids, attention_mask)`` -> (B, 2, H, W) logits at input resolution.
``m.encode_text(input_ids, attention_mask)`` -> :class:`TextFeatures`, computed once per prompt;
``m.forward_with_text(pixel_values, text)`` reuses them for every tile (a batch-1 ``text`` is broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rrsis_cli.models.text import build_text_encoder, tokenize


@dataclass
class TextFeatures:
    """Everything that depends on the prompt alone.

    ``features``: (B, C_l, L) last hidden states of the text encoder, channels first (as the official code);
    ``mask``: (B, L, 1) float word mask, 1 on real tokens; ``extras``: architecture-specific cached tensors.
    """

    features: torch.Tensor
    mask: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    def expand(self, batch: int) -> TextFeatures:
        """Broadcast batch-1 features to ``batch`` samples (no copy); other sizes must match."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"text batch {self.batch_size} does not match image batch {batch}")
        return TextFeatures(
            self.features.expand(batch, *self.features.shape[1:]),
            self.mask.expand(batch, *self.mask.shape[1:]),
            {k: v.expand(batch, *v.shape[1:]) for k, v in self.extras.items()},
        )

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.features.to(device), self.mask.to(device),
                            {k: v.to(device) for k, v in self.extras.items()})


class ReferringSegmenter(nn.Module):
    """Base class: a text encoder (``self.text_encoder``) plus an architecture-specific image path.

    Subclasses set ``arch`` and implement :meth:`forward_with_text`. ``config`` is the full model configuration
    written to ``config.json``; ``tokenizer`` is attached by ``build_model`` / ``load_model``.
    """

    arch: str = ""
    # False for an architecture without learned parameters (e.g. a deterministic per-pixel baseline): its cards
    # run as they are, while cards of the others need weights (a model directory) or --allow-random-weights.
    needs_weights: bool = True
    # False when the forward allocates no large activations (a few element-wise ops): predict then treats the host
    # heap as holding only the pipeline's buffers, as with a model on a GPU (:func:`rrsis_cli.pipeline.bound_heap`).
    large_activations: bool = True
    # How the architecture's official training code lays out its checkpoints, for ``rrsis convert``:
    # "bert_model" (BERT outside the model: its state dict saved next to "model") or "text_encoder" (BERT inside:
    # text_encoder.* keys in "model"); None when there is no official checkpoint to convert.
    official_layout: str | None = None

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.text_encoder = build_text_encoder(config["text_encoder"]["bert_config"])
        self.tokenizer = None
        self.sha256: str | None = None

    @property
    def text_dim(self) -> int:
        return int(self.config["text_encoder"]["bert_config"]["hidden_size"])

    @property
    def max_tokens(self) -> int:
        return int(self.config["max_tokens"])

    @property
    def padding_invariant(self) -> bool:
        """Whether appending padding tokens leaves the output unchanged (an official decoder may average the
        padding positions too)."""
        return True

    def unused_parameters(self) -> tuple[str, ...]:
        """State-dict prefixes of parameters that no output (nor training loss) depends on: kept because the
        official checkpoints hold them. Every other parameter gets a gradient (tests/test_model_contract.py)."""
        return ()

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer attached (build it with build_model/load_model)")
        device = next(self.parameters()).device
        ids, mask = tokenize(self.tokenizer, list(texts), self.max_tokens)
        return ids.to(device), mask.to(device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return TextFeatures(hidden.permute(0, 2, 1), attention_mask.unsqueeze(-1).to(hidden.dtype))

    def forward_with_text(self, pixel_values: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_text(pixel_values, self.encode_text(input_ids, attention_mask))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters in total, in the text encoder, and in the rest (the official "model" count)."""
        total = sum(p.numel() for p in self.parameters())
        text = sum(p.numel() for p in self.text_encoder.parameters())
        return {"total": total, "text_encoder": text, "vision_and_fusion": total - text}

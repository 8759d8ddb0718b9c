"""Models without a network for the predict tests: each output pixel is a fixed function of that pixel (and of
the prompt where said), so outputs can be computed independently of tiling. They carry what predict reads of a
model: ``config``, ``sha256``, ``tokenize``, ``encode_text`` (calls counted) and ``forward_with_text``."""

from __future__ import annotations

import hashlib

import torch

from rrsis_cli.models.base import TextFeatures


class StubModel(torch.nn.Module):
    name = "stub"
    image_size = 64

    def __init__(self, size: int | None = None):
        super().__init__()
        self.config = {"name": self.name, "image_size": size or self.image_size, "mean": [0.0, 0.0, 0.0],
                       "std": [1.0, 1.0, 1.0]}
        self.sha256 = f"{self.name}-test"
        self.encoder_calls = 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def tokenize(self, texts):
        return torch.ones(len(texts), 4, dtype=torch.long), torch.ones(len(texts), 4, dtype=torch.long)

    def encode_text(self, ids, mask):
        self.encoder_calls += 1
        return TextFeatures(torch.zeros(ids.shape[0], 1, 4), mask.unsqueeze(-1).float())

    @staticmethod
    def logits(foreground: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(foreground), foreground], 1)


class PointwiseModel(StubModel):
    """logit = w · rgb + b at each pixel (fixed)."""

    name = "pointwise"

    def forward_with_text(self, x, text):
        return self.logits(8.0 * (x[:, 0] - 0.5 * x[:, 1] - 0.25 * x[:, 2]) - 0.6)


class ForegroundModel(StubModel):
    """Foreground everywhere (probability ~1): the mask is 1 on every valid pixel."""

    name = "foreground"
    image_size = 32

    def forward_with_text(self, x, text):
        return self.logits(torch.full_like(x[:, 0], 10.0))


class PromptPointwise(StubModel):
    """Pointwise, with a threshold that depends on the exact prompt, so different prompts give different masks."""

    name = "prompt-pointwise"

    def tokenize(self, texts):
        ids = torch.tensor([[int(hashlib.sha256(t.encode()).hexdigest(), 16) % 1000] for t in texts])
        return ids, torch.ones_like(ids)

    def encode_text(self, ids, mask):
        self.encoder_calls += 1
        return TextFeatures(ids.float().unsqueeze(-1), mask.unsqueeze(-1).float())

    def forward_with_text(self, x, text):
        bias = text.features.reshape(-1)[0] / 1000.0 - 0.5
        return self.logits(8.0 * (x[:, 0] - 0.5 * x[:, 1] - 0.25 * x[:, 2]) + 2.0 * bias)


def use_model(monkeypatch, model: torch.nn.Module) -> torch.nn.Module:
    """Make ``rrsis_cli.models.load_model`` return ``model`` whatever it is asked for."""
    monkeypatch.setattr("rrsis_cli.models.load_model", lambda spec, device="cpu": model)
    return model

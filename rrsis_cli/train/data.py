"""Training batches: resize to the model's input size, normalise, tokenize, optional occlusion; deterministic order.

Randomness (the epoch's order, the occlusion boxes) derives from ``(seed, epoch, index)`` only, so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from rrsis_cli.models.text import tokenize


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, size, size) float in [0, 1], bilinear with antialiasing."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool/int -> (size, size) int64 in {0, 1}, nearest neighbour."""
    m = torch.from_numpy(np.ascontiguousarray(mask).astype(np.uint8))[None, None].float()
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return (m[0, 0] > 0).long()


def occlude(image: torch.Tensor, gen: torch.Generator, max_fraction: float = 0.25) -> torch.Tensor:
    """Fill one random box (side up to ``max_fraction`` of the image side) with zeros (the normalised mean)."""
    _, h, w = image.shape
    bh = int(torch.randint(1, max(2, int(h * max_fraction)), (1,), generator=gen))
    bw = int(torch.randint(1, max(2, int(w * max_fraction)), (1,), generator=gen))
    y = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
    image = image.clone()
    image[:, y:y + bh, x:x + bw] = 0.0
    return image


class ReferringTrainSet(Dataset):
    """Wraps a sequence of samples and a loader ``load(sample) -> (image HxWxC uint8, mask HxW, expression)``."""

    def __init__(self, samples: Sequence[Any], load: Callable[[Any], tuple[np.ndarray, np.ndarray, str]],
                 image_size: int, mean: Sequence[float], std: Sequence[float], tokenizer, max_tokens: int,
                 occlusion_prob: float = 0.0, seed: int = 0):
        self.samples = samples
        self.load = load
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.occlusion_prob = occlusion_prob
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask, expression = self.load(self.samples[index])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        pixels = (resize_image(image[..., :3], self.image_size) - self.mean) / self.std
        if self.occlusion_prob > 0:
            gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
            if float(torch.rand(1, generator=gen)) < self.occlusion_prob:
                pixels = occlude(pixels, gen)
        ids, attn = tokenize(self.tokenizer, [expression], self.max_tokens)
        return {"pixel_values": pixels, "input_ids": ids[0], "attention_mask": attn[0],
                "mask": resize_mask(mask, self.image_size), "index": torch.tensor(index)}


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, split across ``world`` ranks like DistributedSampler (padded by wrapping),
    starting ``skip`` samples into this rank's share (used to resume mid-epoch)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0
        self.skip = 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        order = (order * math.ceil(total / max(1, self.n)))[:total]
        return order[self.rank:total:self.world]

    def __iter__(self):
        return iter(self.indices()[self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip

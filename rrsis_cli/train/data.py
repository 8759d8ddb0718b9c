"""Training batches: occlusion, resize to the model's input size, normalise, tokenize; deterministic order.

Resizing follows the official LAVT-family pipeline (PIL's ``Image.resize``: ``BILINEAR`` for the image,
``NEAREST`` for the mask), so an 8-bit image and its mask come out bit-identical to the official inputs; the
functions live in :mod:`rrsis_cli.data.transforms`, next to the torch resizing that evaluation uses.

Occlusion (RMSIN ``data/dataset_refer_bert.py``): a fixed share of the training *refs* (``occlusion_prob``,
0.2 officially) is drawn once, and every time one of them is loaded 20-60 black 32 x 32 boxes are painted on
the image at its original size, before resizing and normalisation — see :func:`paint_boxes` for the exact
draw, which reproduces the official one call for call, including its oddity of drawing both corner
coordinates from the image *width*.

Randomness (the epoch's order, the occluded subset, the boxes) derives from the seed, the epoch and the
sample index only, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rrsis_cli.data.transforms import official_resize_image, official_resize_mask
from rrsis_cli.errors import UsageError
from rrsis_cli.models.text import tokenize

# RMSIN's occlusion: 20 % of the training refs, 20-60 boxes of 32 x 32 px painted 0 (black) on the raw image.
OFFICIAL_OCCLUSION = {"min_boxes": 20, "max_boxes": 60, "size": 32, "fill": 0}


def paint_boxes(image: np.ndarray, rng: random.Random, min_boxes: int = 20, max_boxes: int = 60,
                size: int = 32, fill: int = 0) -> np.ndarray:
    """RMSIN's occlusion on a copy of ``image`` (H, W[, C]) at its original size.

    Draws, with ``rng`` (a :class:`random.Random`) and in this order: the number of boxes
    ``n = randint(min_boxes, max_boxes)``, then per box the top row ``y = randint(0, W - size)`` and the left
    column ``x = randint(0, W - size)``, and sets ``image[y:y+size, x:x+size] = fill``. Both coordinates are
    drawn from the image **width**, as in the official code: on an image taller than wide the bottom rows are
    never covered, on one wider than tall boxes may be cut off at the bottom. Boxes may overlap. Given a
    ``random.Random`` in the same state, the official ``add_random_boxes`` paints the same pixels.
    """
    out = np.array(image, copy=True)
    width = out.shape[1]
    if width < size:
        raise UsageError(f"occlusion boxes of {size} px need images at least {size} px wide (got {width}); "
                         "lower occlusion.size or set occlusion_prob 0")
    count = rng.randint(min_boxes, max_boxes)
    for _ in range(count):
        y, x = rng.randint(0, width - size), rng.randint(0, width - size)
        out[y:y + size, x:x + size] = fill
    return out


def occluded_subset(keys: Sequence[Hashable], fraction: float, seed: int) -> frozenset:
    """The refs that get boxes: ``random.Random(seed).sample(distinct keys in first-seen order,
    int(n * fraction))`` — the official ``random.sample(ref_ids, int(len(ref_ids) * 0.2))`` drawn from a
    generator seeded with ``seed``. With RRSIS-D's refs in file order (as the reader lists them) and seed 2401
    (RMSIN's ``seed_everything``), this is the official subset, provided nothing else drew from Python's global
    generator before the official dataset was built."""
    distinct = list(dict.fromkeys(keys))
    if fraction <= 0 or not distinct:
        return frozenset()
    return frozenset(random.Random(seed).sample(distinct, int(len(distinct) * fraction)))


def ref_key(sample: Any, index: int) -> Hashable:
    """What identifies the ref (object) of a sample: RRSIS-D's ``ref_id`` (a ref may have several sentences),
    else the sample id, else its index (in-memory samples)."""
    extra = getattr(sample, "extra", None)
    if isinstance(extra, dict) and extra.get("ref_id") is not None:
        return ("ref", extra["ref_id"])
    sample_id = getattr(sample, "id", None)
    return ("id", sample_id) if sample_id is not None else ("index", index)


def occlusion_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's boxes in one epoch (a function of these three numbers only)."""
    return random.Random((((seed % 2**31) * 1_000_003 + epoch) * 1_000_003 + index) % 2**63)


class ReferringTrainSet(Dataset):
    """Wraps a sequence of samples and a loader ``load(sample) -> (image HxWxC uint8, mask HxW, expression)``.

    ``occlusion_prob`` is the share of refs in the fixed occluded subset (RMSIN: 0.2; 0 = off), drawn once from
    ``occlusion_seed`` (default ``seed``); ``occlusion`` overrides the box parameters of
    :data:`OFFICIAL_OCCLUSION`.
    """

    def __init__(self, samples: Sequence[Any], load: Callable[[Any], tuple[np.ndarray, np.ndarray, str]],
                 image_size: int, mean: Sequence[float], std: Sequence[float], tokenizer, max_tokens: int,
                 occlusion_prob: float = 0.0, seed: int = 0, occlusion: dict | None = None,
                 occlusion_seed: int | None = None):
        self.samples = samples
        self.load = load
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.occlusion_prob = float(occlusion_prob)
        self.occlusion = {**OFFICIAL_OCCLUSION, **(occlusion or {})}
        unknown = set(self.occlusion) - set(OFFICIAL_OCCLUSION)
        if unknown:
            raise UsageError(f"unknown occlusion setting(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(OFFICIAL_OCCLUSION)})")
        self.seed = seed
        self.occlusion_seed = seed if occlusion_seed is None else int(occlusion_seed)
        self.epoch = 0
        self.keys = [ref_key(s, i) for i, s in enumerate(samples)]
        self.occluded = occluded_subset(self.keys, self.occlusion_prob, self.occlusion_seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def is_occluded(self, index: int) -> bool:
        return self.keys[index] in self.occluded

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask, expression = self.load(self.samples[index])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3]
        if self.occluded and self.is_occluded(index):
            image = paint_boxes(image, occlusion_rng(self.seed, self.epoch, index), **self.occlusion)
        pixels = (official_resize_image(image, self.image_size) - self.mean) / self.std
        ids, attn = tokenize(self.tokenizer, [expression], self.max_tokens)
        return {"pixel_values": pixels, "input_ids": ids[0], "attention_mask": attn[0],
                "mask": official_resize_mask(mask, self.image_size), "index": torch.tensor(index)}


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

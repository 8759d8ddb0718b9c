"""A language-dependent toy task: every image holds a red and a blue square; the expression picks one.

An expression-blind model sees the same input for both expressions of an image, so it predicts one mask P for
both targets A and B (disjoint). Since U = |P ∪ A| >= |P| and I_A + I_B <= |P|, IoU_A + IoU_B <= 1: the
expression-blind mIoU on this task is at most 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}
BLIND_MIOU_BOUND = 0.5


def make_samples(n_images: int, seed: int, size: int = 64) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``2 * n_images`` samples ``(image HxWx3 uint8, mask HxW bool, expression)``."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_images):
        image = rng.normal(110, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
        boxes: list[tuple[int, int, int]] = []
        while len(boxes) < 2:
            side = int(rng.integers(size // 5, size // 3))
            y, x = (int(v) for v in rng.integers(0, size - side, 2))
            if all(y + side <= by or by + bs <= y or x + side <= bx or bx + bs <= x for by, bx, bs in boxes):
                boxes.append((y, x, side))
        masks = {}
        for (y, x, side), (name, colour) in zip(boxes, COLOURS.items(), strict=True):
            image[y:y + side, x:x + side] = colour
            mask = np.zeros((size, size), bool)
            mask[y:y + side, x:x + side] = True
            masks[name] = mask
        samples.extend((image, masks[name], f"the {name} square") for name in COLOURS)
    return samples


def write_folder_dataset(root: Path, splits: dict[str, int], seed: int = 0, size: int = 64) -> Path:
    """The samples in the ``folder`` format: images/*.png, masks/*.png and ``<split>.csv``
    (columns image, mask, expression, category, attribute)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(splits.items()):
        rows = ["image,mask,expression,category,attribute"]
        for i, (image, mask, expression) in enumerate(make_samples(n, seed + k, size)):
            stem = f"{split}_{i // 2:04d}"
            colour = expression.split()[1]
            if i % 2 == 0:
                Image.fromarray(image).save(root / "images" / f"{stem}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{stem}_{colour}.png")
            rows.append(f"images/{stem}.png,masks/{stem}_{colour}.png,{expression},{colour},colour")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root

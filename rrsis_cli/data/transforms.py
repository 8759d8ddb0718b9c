"""Model-input preprocessing shared by training and evaluation: resizing an image and its mask to the model's
input size.

Two conventions, both kept bit-for-bit:

* :func:`official_resize_image` / :func:`official_resize_mask` — the official LAVT-family training pipeline
  (torchvision 0.8 ``F.resize`` on PIL images, i.e. PIL's ``Image.resize``: ``BILINEAR`` for the image, antialiased
  and rounded to uint8, ``NEAREST`` for the mask). ``rrsis train`` uses them, so an 8-bit image and its mask come
  out identical to the official inputs (``tests/test_recipe.py``).
* :func:`resize_image` / :func:`resize_mask` — torch resizing (bilinear with antialiasing; nearest), used by
  ``rrsis evaluate`` to bring images to the scoring size and by the official-resize functions for inputs PIL
  does not take (not 8-bit RGB). ``torch.nn.functional.interpolate`` does not reproduce PIL's NEAREST (on an
  800 -> 480 resize it takes another source pixel for 44 % of the output pixels) and its bilinear differs from
  PIL's by up to one grey level, so the two conventions are not interchangeable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, size, size) float in [0, 1], bilinear with antialiasing (torch)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool/int -> (size, size) int64 in {0, 1}, nearest neighbour (torch)."""
    m = torch.from_numpy(np.ascontiguousarray(mask).astype(np.uint8))[None, None].float()
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return (m[0, 0] > 0).long()


def official_resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [0, 1] exactly as the official pipeline makes it: PIL
    ``resize((size, size), BILINEAR)`` then ``/ 255``. Other dtypes fall back to :func:`resize_image`."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return resize_image(image, size)
    if image.shape[:2] != (size, size):
        from PIL import Image

        image = np.array(Image.fromarray(np.ascontiguousarray(image), "RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def official_resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool/int -> (size, size) int64 in {0, 1}: PIL ``resize((size, size), NEAREST)`` as officially."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.shape != (size, size):
        from PIL import Image

        m = np.array(Image.fromarray(np.ascontiguousarray(m), "L").resize((size, size), Image.NEAREST))
    return torch.from_numpy(np.ascontiguousarray(m)).long()

"""Scene-level grounding (``predict --grounding scene``): coarse-to-fine prediction for expressions that name one
object of a whole scene ("the largest pond in the north", "the green square in the upper left").

Tiled inference judges every tile alone, so every tile holding a look-alike claims it. Here:

1. **Coarse pass.** The whole scene is read decimated (GDAL uses overviews when present; ``average``
   resampling) to ``coarse_size`` × ``coarse_size`` (the model's input size by default, so the scene looks like
   one training image), normalised with the scene's statistics, and run through the model once with the prompt.
2. **Candidates.** Connected regions of coarse probability ≥ the threshold; each becomes a window in full
   resolution pixels, its bounding box grown by ``refine_margin`` × its size (and at least half a tile).
3. **Fine pass.** Only the grid tiles that intersect a candidate window are run at full resolution (stored,
   journaled and blended exactly as in tiled mode).
4. **Fusion.** Inside refined tiles the probability is ``coarse_weight`` × the coarse probability (bilinearly
   upsampled) + (1 − ``coarse_weight``) × the fine probability; everywhere else it is 0. A pixel is target when
   that probability ≥ the threshold **and** the coarse probability ≥ ``coarse_support`` — fine detections of
   look-alikes that the coarse grounding did not choose are dropped. All of this is computed block by block.

The default ``coarse_weight`` 0.75 lets the fine pass move boundaries where the coarse map is uncertain while
the coarse pass decides *which* object; it was chosen on the synthetic scene-grounding scenario
(``benchmarks/RESULTS.md``), where the fine pass of the single-scale demo model alone is poor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CoarseGrounding:
    """Result of pass 1: the coarse probability map and the refine windows (row0, row1, col0, col1)."""

    prob: np.ndarray
    scale: tuple[float, float]  # full-resolution pixels per coarse pixel (rows, cols)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    windows: list[tuple[int, int, int, int]] = field(default_factory=list)

    def upsample(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Coarse probability bilinearly interpolated at the centres of full-resolution pixels of a block."""
        from scipy.ndimage import map_coordinates

        ys = (np.arange(row0, row1) + 0.5) / self.scale[0] - 0.5
        xs = (np.arange(col0, col1) + 0.5) / self.scale[1] - 0.5
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return map_coordinates(self.prob, [yy, xx], order=1, mode="nearest").astype(np.float32)


def read_coarse_view(reader, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) normalised float view of the whole scene and its (size, size) valid mask."""
    from rasterio.enums import Resampling

    ds = reader.ds
    shape = (len(reader.bands), size, size)
    data = reader.normalise(ds.read(reader.bands, out_shape=shape, resampling=Resampling.average))
    valid = reader.valid(out_shape=(size, size))
    data[:, ~valid] = 0.0
    return data, valid


def coarse_pass(reader, model, text, size: int, threshold: float, margin: float, tile: int, device,
                precision: str) -> CoarseGrounding:
    """Pass 1 and the candidate windows (see the module docstring)."""
    from scipy.ndimage import find_objects, label

    from rrsis_cli.predict import infer

    view, valid = read_coarse_view(reader, size)
    prob = infer(model, text, [view], device, precision)[0]
    prob[~valid] = 0.0
    height, width = reader.ds.height, reader.ds.width
    grounding = CoarseGrounding(prob, (height / size, width / size))
    labels, count = label(prob >= threshold)
    for index, region in enumerate(find_objects(labels), start=1):
        if region is None:
            continue
        pixels = labels[region] == index
        r0, r1 = region[0].start * height / size, region[0].stop * height / size
        c0, c1 = region[1].start * width / size, region[1].stop * width / size
        grow_r = max(margin * (r1 - r0), tile / 2)
        grow_c = max(margin * (c1 - c0), tile / 2)
        window = (max(0, int(r0 - grow_r)), min(height, int(np.ceil(r1 + grow_r))),
                  max(0, int(c0 - grow_c)), min(width, int(np.ceil(c1 + grow_c))))
        grounding.windows.append(window)
        grounding.candidates.append({
            "bbox_pixels": [int(r0), int(np.ceil(r1)), int(c0), int(np.ceil(c1))],
            "coarse_pixels": int(pixels.sum()), "score": float(prob[region][pixels].mean()),
            "window": list(window)})
    return grounding


def tiles_in_windows(grid, windows: list[tuple[int, int, int, int]]) -> list[int]:
    """Sorted indices of the grid tiles that intersect any window."""
    active: set[int] = set()
    for row0, row1, col0, col1 in windows:
        active.update(grid.overlapping(row0, row1, col0, col1))
    return sorted(active)


def fuse(fine: np.ndarray, covered: np.ndarray, coarse: np.ndarray, coarse_weight: float) -> np.ndarray:
    """Pass-2 probability of a block: the weighted mean of coarse and fine where tiles ran, else 0."""
    return np.where(covered, coarse_weight * coarse + (1.0 - coarse_weight) * fine, 0.0).astype(np.float32)

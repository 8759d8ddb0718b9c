"""The tile grid of a scene and the blending weights.

Tiles of ``tile`` pixels every ``stride`` pixels cover the scene; the last tile of a row or column ends at the
scene's edge (a scene smaller than a tile gets one padded tile). Overlapping tiles are blended with separable
sine² weights (:mod:`rrsis_cli.blend` streams the blend row band by row band).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``: ``0, stride, ...`` with the last tile ending at ``length``
    (a scene shorter than a tile gets one tile, padded)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_weights(tile: int, floor: float = 0.05) -> np.ndarray:
    """Separable sine² window (Hann-like) with a floor, so the scene's outer edges still count: (tile, tile)."""
    ramp = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    ramp = np.maximum(ramp, floor).astype(np.float32)
    return np.outer(ramp, ramp)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` pixels every ``stride`` pixels over a ``height`` x ``width`` raster, row-major."""

    height: int
    width: int
    tile: int
    stride: int

    @classmethod
    def for_scene(cls, height: int, width: int, tile: int, overlap: float) -> TileGrid:
        return cls(height, width, tile, max(1, int(round(tile * (1 - overlap)))))

    @property
    def rows(self) -> list[int]:
        return tile_origins(self.height, self.tile, self.stride)

    @property
    def cols(self) -> list[int]:
        return tile_origins(self.width, self.tile, self.stride)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def origin(self, index: int) -> tuple[int, int]:
        cols = self.cols
        return self.rows[index // len(cols)], cols[index % len(cols)]

    def batches(self, batch_size: int, active: list[int] | None = None) -> list[list[int]]:
        """Fixed batches of tile indices, of every tile or of the sorted ``active`` ones (a resumed run
        recomputes exactly the same batches). A batch is identified by its first index."""
        indices = list(range(len(self))) if active is None else sorted(active)
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]

    def overlapping(self, row0: int, row1: int, col0: int, col1: int) -> list[int]:
        """Indices of the tiles that intersect rows [row0, row1) x cols [col0, col1), in row-major order."""
        rows, cols = self.rows, self.cols
        r_lo = bisect.bisect_right(rows, row0 - self.tile)
        r_hi = bisect.bisect_left(rows, row1)
        c_lo = bisect.bisect_right(cols, col0 - self.tile)
        c_hi = bisect.bisect_left(cols, col1)
        return [r * len(cols) + c for r in range(r_lo, r_hi) for c in range(c_lo, c_hi)]


def window_rows(grid: TileGrid, split_tiles: int) -> list[tuple[int, int]]:
    """Tile-row ranges ``(first, last)`` (both included) of the window tasks of a grid of more than
    ``split_tiles`` tiles: consecutive whole tile rows, about ``split_tiles`` tiles each (at least one row).
    Empty when the grid is not split (``split_tiles`` 0, a grid of at most ``split_tiles`` tiles, one row)."""
    nrows, ncols = len(grid.rows), len(grid.cols)
    if split_tiles <= 0 or nrows * ncols <= split_tiles or nrows < 2:
        return []
    step = max(1, split_tiles // ncols)
    return [(first, min(first + step, nrows) - 1) for first in range(0, nrows, step)]

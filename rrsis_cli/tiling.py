"""The tile grid of a scene, the blending weights, and the on-disk tile store with its journal.

Each tile's foreground probability is stored as its own chunk of a zarr array in the work directory (zarr
writes every chunk under a temporary name and renames it, so a chunk is either whole or absent). Tiles are run
in fixed batches; the journal (``journal.txt``, one line per finished batch, flushed and fsynced) records which
batches are complete. A killed run therefore resumes from the finished batches, and because a batch is always
recomputed whole with the same tiles, the resumed result is byte-identical to an uninterrupted one.

Finalisation blends the stored tiles block by block with separable sine² weights: every output block reads only
the tiles that overlap it, so memory depends on the tile and block sizes, never on the scene size, and the sum
is taken in a fixed (row-major tile) order, so it is deterministic.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JOURNAL = "journal.txt"


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


class TileStore:
    """Per-tile probabilities in ``work/tiles.zarr`` plus the batch journal. ``job`` (a JSON-able dict: config
    hash, grid, batch size) must match for an existing work directory to be resumed; otherwise it is reset."""

    def __init__(self, work: Path, grid: TileGrid, job: dict):
        import zarr

        self.work = work
        self.grid = grid
        work.mkdir(parents=True, exist_ok=True)
        job_path = work / "job.json"
        resumable = job_path.is_file() and json.loads(job_path.read_text()) == job and (work / "tiles.zarr").exists()
        if resumable:
            group = zarr.open_group(str(work / "tiles.zarr"), mode="r+")
            self.tiles = group["prob"]
            self.done, self.skipped = self._read_journal()
        else:
            for stale in (work / JOURNAL, job_path):
                stale.unlink(missing_ok=True)
            group = zarr.open_group(str(work / "tiles.zarr"), mode="w")
            self.tiles = group.create_array("prob", shape=(len(grid), grid.tile, grid.tile),
                                            chunks=(1, grid.tile, grid.tile), dtype="float32", fill_value=0)
            tmp = work / ".job.json.tmp"
            tmp.write_text(json.dumps(job))
            os.replace(tmp, job_path)
            self.done, self.skipped = set(), set()
        self.resumed_batches = len(self.done)

    def _read_journal(self) -> tuple[set[int], set[int]]:
        """Finished batch starts and nodata tiles. A torn last line (killed mid-write) is ignored."""
        done: set[int] = set()
        skipped: set[int] = set()
        path = self.work / JOURNAL
        if not path.is_file():
            return done, skipped
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.add(int(record["batch"]))
            skipped.update(int(i) for i in record["nodata"])
        return done, skipped

    def write_batch(self, start: int, probs: dict[int, np.ndarray], nodata: list[int]) -> None:
        """Store a finished batch's tiles, then journal it (the journal line is written last)."""
        for index, prob in probs.items():
            self.tiles[index] = prob
        with open(self.work / JOURNAL, "a") as journal:
            journal.write(json.dumps({"batch": start, "nodata": nodata}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.done.add(start)
        self.skipped.update(nodata)

    def blend(self, row0: int, row1: int, col0: int, col1: int, weights: np.ndarray,
              active: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean probability over rows [row0, row1) x cols [col0, col1) (0 where no tile ran) and the
        mask of pixels some tile covered. Only ``active`` tiles count when given (scene grounding)."""
        height, width = row1 - row0, col1 - col0
        psum = np.zeros((height, width), np.float32)
        wsum = np.zeros((height, width), np.float32)
        tile = self.grid.tile
        for index in self.grid.overlapping(row0, row1, col0, col1):
            if index in self.skipped or (active is not None and index not in active):
                continue
            r, c = self.grid.origin(index)
            # intersection of the tile with the block, in block and in tile coordinates
            y0, y1 = max(r, row0), min(r + tile, row1, self.grid.height)
            x0, x1 = max(c, col0), min(c + tile, col1, self.grid.width)
            if y0 >= y1 or x0 >= x1:
                continue
            prob = self.tiles[index, y0 - r:y1 - r, x0 - c:x1 - c]
            w = weights[y0 - r:y1 - r, x0 - c:x1 - c]
            psum[y0 - row0:y1 - row0, x0 - col0:x1 - col0] += prob * w
            wsum[y0 - row0:y1 - row0, x0 - col0:x1 - col0] += w
        return np.where(wsum > 0, psum / np.maximum(wsum, 1e-12), 0.0).astype(np.float32), wsum > 0

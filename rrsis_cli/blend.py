"""Streaming blend: tile probabilities become finished rows one tile row at a time, in bounded memory, with a
journal of finished row bands that is the only work state on disk.

Tiles are processed in row-major order. Tile row ``r`` covers scene rows ``[rows[r], rows[r] + tile)``; once it
is added, no later tile touches rows above ``rows[r + 1]``, so the band ``[rows[r], rows[r + 1])`` is final:
:class:`RowBlender` keeps weighted sums for one tile's height × the scene width, hands the finished band out,
and shifts. Each pixel's sum is taken over its tiles in row-major order, as the previous block-wise blend did,
so the result is the same to the bit.

:class:`BandJournal` stores each finished band quantised to uint8 (probability × 254, 255 nodata: 1 byte per
scene pixel, the value ``prob.tif`` holds and the mask is derived from) in one file (positioned writes, so no
mapping of the whole file stays in the process's memory), fsyncs it,
then appends the band to ``journal.txt``: a handful of files per (scene, prompt) whatever its size. A run
killed mid-scene resumes after the last journaled band; the rows a later band still needs from earlier tile rows
(the overlap carried in the blender) are rebuilt by recomputing those few tile rows (:meth:`TileGrid`-order
batches, so the sums are the same as in an uninterrupted run).

Memory: 4 bytes × tile × scene width per (scene, prompt) in flight (the float32 probability sums; weight sums are
rebuilt per band), 2 bytes × band × width for the finished band, plus the batches in flight; independent of the
scene's height and of the number of polygons found.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import numpy as np

from rrsis_cli.tiling import TileGrid

JOURNAL = "journal.txt"
PROB_FILE = "prob.u8"
SUPPORT_FILE = "support.u8"


def band_rows(grid: TileGrid, r: int) -> tuple[int, int]:
    """Scene rows finished once tile row ``r`` has been added: ``[rows[r], rows[r + 1])`` (to the bottom for the
    last tile row)."""
    rows = grid.rows
    return rows[r], rows[r + 1] if r + 1 < len(rows) else grid.height


def carry_rows(grid: TileGrid, finished: int) -> list[int]:
    """Tile rows up to ``finished`` whose tiles reach below its band: what a resumed blender must re-add."""
    end = band_rows(grid, finished)[1]
    return [k for k in range(finished + 1) if grid.rows[k] + grid.tile > end]


def quantise(prob: np.ndarray) -> np.ndarray:
    """The uint8 probability of ``prob.tif``: round(probability × 254), 0–254 (255 is nodata)."""
    return np.clip(np.round(prob * 254), 0, 254).astype(np.uint8)


class RowBlender:
    """Weighted probability sums of the tiles of the current tile row and the overlap it carries: (tile, width)
    float32. :meth:`add` tiles of tile row ``r`` (in column order, rows in order), then :meth:`finish` or
    :meth:`finish_band` ``r``.

    The weight sums are not stored: a band's are rebuilt when it is finished, from the tiles added over it, in the
    order they were added, so every pixel's sum is the same float32 additions in the same order as a stored sum
    (the same to the bit) at a quarter of the memory. Bands are finished :data:`CHUNK` columns at a time, so the
    temporaries of the division and quantisation do not grow with the scene's width either."""

    CHUNK = 1024

    def __init__(self, grid: TileGrid, weights: np.ndarray):
        self.grid = grid
        self.weights = weights
        self.psum = np.zeros((grid.tile, grid.width), np.float32)
        self.top = 0  # scene row of psum[0]
        self.scratch = np.empty((grid.tile, grid.tile), np.float32)  # prob × weights of one tile, reused
        self.added: list[tuple[int, int, int, int]] = []  # (y, x, h, w) of the tiles added that reach below top

    def _move_to(self, top: int) -> None:
        shift = top - self.top
        if shift <= 0:
            return
        acc = self.psum
        if shift < acc.shape[0]:
            acc[:-shift] = acc[shift:]
            acc[-shift:] = 0
        else:
            acc[:] = 0
        self.top = top
        self.added = [t for t in self.added if t[0] + t[2] > top]

    def add(self, r: int, c: int, prob: np.ndarray) -> None:
        """Add the (tile, tile) probability of tile (row ``r``, column ``c``) of the grid."""
        grid, tile = self.grid, self.grid.tile
        y, x = grid.rows[r], grid.cols[c]
        self._move_to(y)
        h, w = min(tile, grid.height - y), min(tile, grid.width - x)
        weighted = np.multiply(prob[:h, :w], self.weights[:h, :w], out=self.scratch[:h, :w])
        self.psum[:h, x:x + w] += weighted
        self.added.append((y, x, h, w))

    def _weight_sums(self, y0: int, y1: int, c0: int, c1: int) -> np.ndarray:
        """The weight sums of scene rows [y0, y1) × columns [c0, c1), added tile by tile in the order the tiles
        were added (as a stored sum would have been)."""
        wsum = np.zeros((y1 - y0, c1 - c0), np.float32)
        for y, x, h, w in self.added:
            a, b = max(y, y0), min(y + h, y1)
            left, right = max(x, c0), min(x + w, c1)
            if a < b and left < right:
                wsum[a - y0:b - y0, left - c0:right - c0] += self.weights[a - y:b - y, left - x:right - x]
        return wsum

    def _chunks(self, r: int):
        """(row0, row1, col0, col1, probability, covered) of the band tile row ``r`` finished, column chunk by
        column chunk: the weighted mean (0 where no tile ran) and the pixels some tile covered."""
        y0, y1 = band_rows(self.grid, r)
        self._move_to(self.grid.rows[r])
        a, b = y0 - self.top, y1 - self.top
        for c0 in range(0, self.grid.width, self.CHUNK):
            c1 = min(c0 + self.CHUNK, self.grid.width)
            psum, wsum = self.psum[a:b, c0:c1], self._weight_sums(y0, y1, c0, c1)
            prob = np.where(wsum > 0, psum / np.maximum(wsum, 1e-12), 0.0).astype(np.float32)
            yield y0, y1, c0, c1, prob, wsum > 0

    def finish(self, r: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(row0, row1, probability, covered) of the band tile row ``r`` finished, as float32."""
        y0, y1 = band_rows(self.grid, r)
        prob = np.zeros((y1 - y0, self.grid.width), np.float32)
        covered = np.zeros((y1 - y0, self.grid.width), bool)
        for _, _, c0, c1, part, cover in self._chunks(r):
            prob[:, c0:c1], covered[:, c0:c1] = part, cover
        return y0, y1, prob, covered

    def finish_band(self, r: int, valid=None) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(row0, row1, p8, covered) of the band tile row ``r`` finished: the probability quantised
        (:func:`quantise`) and 255 where ``valid(row0, row1, col0, col1)`` (a bool block) is False. Memory: the
        uint8 band and its bool coverage, plus one chunk's float32 temporaries."""
        y0, y1 = band_rows(self.grid, r)
        p8 = np.empty((y1 - y0, self.grid.width), np.uint8)
        covered = np.empty((y1 - y0, self.grid.width), bool)
        for _, _, c0, c1, prob, cover in self._chunks(r):
            block = quantise(prob)
            if valid is not None:
                block[~valid(y0, y1, c0, c1)] = 255
            p8[:, c0:c1], covered[:, c0:c1] = block, cover
        return y0, y1, p8, covered


class RowFile:
    """A height × width uint8 raster stored row-major in a plain file: rows written with ``pwrite`` and fsynced,
    read back with ``pread``; memory holds only the rows asked for."""

    def __init__(self, path: Path, width: int):
        self.width = width
        self.fd = os.open(path, os.O_RDWR)

    def write(self, row: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=np.uint8)
        written = os.pwrite(self.fd, memoryview(data.reshape(-1)), row * self.width)  # no copy of the band
        if written != data.nbytes:
            raise OSError(f"short write to the work journal ({written} of {data.nbytes} bytes)")
        os.fsync(self.fd)

    def read(self, row0: int, row1: int) -> np.ndarray:
        size = (row1 - row0) * self.width
        data = os.pread(self.fd, size, row0 * self.width)
        return np.frombuffer(data, np.uint8).reshape(row1 - row0, self.width)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BandJournal:
    """Finished bands of one (scene, prompt) in ``work``: ``prob.u8`` (height × width uint8, row-major),
    optionally ``support.u8`` (scene grounding: 1 where the coarse pass supports the target), and
    ``journal.txt`` (one JSON line per finished tile row, written after the data is on disk). ``job`` must match
    for an existing work directory to be resumed; otherwise it is reset.

    ``rows = (first, last)``: the journal of a window task, which writes the bands of those tile rows only (disjoint
    row ranges of the same ``prob.u8``, positioned writes) and journals them in ``journal-F-L.txt``; the window
    tasks of a scene share the work directory (checked or reset under a lock). Resuming reads every journal of
    the directory, so a whole-scene run continues after window tasks and the other way round."""

    def __init__(self, work: Path, grid: TileGrid, job: dict, support: bool = False,
                 rows: tuple[int, int] | None = None):
        self.work = work
        self.grid = grid
        # the tile rows this journal writes, first and last included: all of them, or a window task's range
        self.first, self.last = (0, len(grid.rows) - 1) if rows is None else (int(rows[0]), int(rows[1]))
        self.name = JOURNAL if rows is None else f"journal-{self.first}-{self.last}.txt"
        work.mkdir(parents=True, exist_ok=True)
        names = [PROB_FILE] + ([SUPPORT_FILE] if support else [])
        with _setup_lock(work):  # window tasks of one scene open the same work directory at the same time
            resumable = self._resumable(job, names)
            if not resumable:
                self._reset(job, names)
        self.prob = RowFile(work / PROB_FILE, grid.width)
        self.support = RowFile(work / SUPPORT_FILE, grid.width) if support else None
        self.finished = self._read_journal() if resumable else self.first - 1
        self.skipped = 0

    def _resumable(self, job: dict, names: list[str]) -> bool:
        job_path = self.work / "job.json"
        return (job_path.is_file() and json.loads(job_path.read_text()) == job
                and all((self.work / n).is_file() for n in names))

    def _reset(self, job: dict, names: list[str]) -> None:
        work = self.work
        for stale in (*work.glob("journal*.txt"), work / "job.json", work / PROB_FILE, work / SUPPORT_FILE):
            stale.unlink(missing_ok=True)
        for name in names:
            with open(work / name, "wb") as f:
                f.truncate(self.grid.height * self.grid.width)  # sparse: disk is used as bands are written
        tmp = work / ".job.json.tmp"
        tmp.write_text(json.dumps(job))
        os.replace(tmp, work / "job.json")

    def _read_journal(self) -> int:
        """The last tile row of this journal's range up to which every band is on disk (``first - 1`` for none),
        from every journal of the work directory (``journal.txt`` of a whole-scene run, ``journal-F-L.txt`` of
        window tasks): a band is journaled after its data is durable; a torn last line (killed mid-write) is
        ignored."""
        journaled: set[int] = set()
        for path in self.work.glob("journal*.txt"):
            for line in path.read_text().splitlines():
                try:
                    journaled.add(int(json.loads(line)["tile_row"]))
                except (json.JSONDecodeError, KeyError, ValueError):
                    break
        last = self.first - 1
        while last < self.last and last + 1 in journaled:
            last += 1
        return last

    def write_band(self, r: int, p8: np.ndarray, support: np.ndarray | None = None) -> None:
        """Store tile row ``r``'s finished band (uint8 probability, and the support bits with grounding), make
        it durable, then journal it."""
        y0, _ = band_rows(self.grid, r)
        self.prob.write(y0, p8)
        if self.support is not None:
            self.support.write(y0, support)
        y1 = y0 + p8.shape[0]
        with open(self.work / self.name, "a") as journal:
            journal.write(json.dumps({"tile_row": r, "rows": [y0, y1], "pid": os.getpid()}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.finished = r

    def close(self) -> None:
        for rows in (self.prob, self.support):
            if rows is not None:
                rows.close()

    @property
    def done(self) -> bool:
        return self.finished == self.last

    def disk_bytes(self) -> int:
        files = [self.work / PROB_FILE, self.work / SUPPORT_FILE, *self.work.glob("journal*.txt")]
        return sum(os.stat(p).st_blocks * 512 for p in files if p.is_file())


@contextlib.contextmanager
def _setup_lock(work: Path):
    """Exclusive ``fcntl`` lock on ``work/.setup.lock`` while a journal checks or resets the work directory."""
    with open(work / ".setup.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield

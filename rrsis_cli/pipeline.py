"""The tile pipeline of one scene: parallel reads → batched inference for every prompt → streaming blend →
journaled bands → the mask and probability rasters; and the background writer that overlaps a scene's output
writing with the next scene's tiles.

* **Reads**: a pool of ``read_workers`` threads, each with its own handle on the scene (GDAL releases the GIL
  while it decodes), reads the raw tiles (the scene's dtype, no host normalisation) of the batches ahead of the
  model into a fixed set of reused batch buffers (pinned on CUDA); at most ``read_ahead`` batches wait. Whether
  a tile holds data is decided from its values where the scene's masks are plain nodata values.
* **One read per tile for all prompts**: each batch is read once and run for every (scene, prompt) pair that
  still needs it; the manifest counts reads per tile. The batch is normalised once, on the device
  (:class:`~rrsis_cli.inference.BatchNormaliser`, the same float32 operations as the host normalisation).
* **Batches** are fixed chunks of the grid's tiles in row-major order (of the active tiles with scene grounding),
  so a resumed run recomputes exactly the batches of an uninterrupted one.
* **Blend**: each pair's :class:`~rrsis_cli.blend.RowBlender` turns finished tile rows into bands, quantised and
  journaled by its :class:`~rrsis_cli.blend.BandJournal` (1 byte per pixel, a handful of files); a killed run
  resumes after the last journaled band.
* :func:`assemble` writes the mask and (when something reads it) ``prob`` GeoTIFFs (tiled, in the work
  directory) from the journal, one internal block at a time, for the COG and vector writers.
* :class:`BackgroundWriter` runs those output steps in one thread, in order, with a bounded queue.

Memory, per (scene, prompt) run together: 4 B × tile × width (probability sums) + 2 B × band × width; plus
(read_ahead + 1) batch buffers of batch × bands × tile² in the scene's dtype, the float32 model input of one
batch, GDAL's block cache (:data:`rrsis_cli.scene.GDAL_CACHE_MB`), for a remote scene two tile rows of its width
(:class:`rrsis_cli.scene.WholeRowReader`) and the model: independent of the scene's height; :func:`bound_heap`
keeps freed band-sized arrays from staying resident (with a GPU or the null model: :func:`heap_bound_pays`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.blend import BandJournal, RowBlender, band_rows, carry_rows, quantise
from rrsis_cli.tiling import TileGrid, blend_weights


def mask_from_probability(p8: np.ndarray, threshold: float) -> np.ndarray:
    """The mask rule, one for full runs and re-thresholding: 1 where the *quantised* probability p8 / 254 is
    ≥ ``threshold``, 0 below, 255 where p8 is 255 (nodata). Comparing the quantised value (what ``prob.tif``
    stores) rather than the float makes a mask re-thresholded from ``prob.tif`` identical to a full run."""
    table = (np.arange(256, dtype=np.float64) / 254.0 >= threshold).astype(np.uint8)
    table[255] = 255
    return table[p8]


@dataclass
class Pair:
    """One (scene, prompt) in the pipeline: its text features, journal and blender, the tiles it runs
    (``active``: scene grounding; None = all) and, with scene grounding, the coarse map and fusion settings."""

    prompt: str
    text: Any
    journal: BandJournal
    blender: RowBlender
    active: set[int] | None = None
    coarse: Any = None
    coarse_weight: float = 0.75
    coarse_support: float = 0.25
    start_tile: int = 0  # first tile index this pair needs (resume: the first tile of its carried rows)
    end_tile: int = 0  # tile indices from here on are not needed (the end of the journal's rows)
    next_row: int = 0  # next tile row to close
    tiles: int = 0
    tiles_resumed: int = 0
    nodata_tiles: int = 0

    def __post_init__(self) -> None:
        grid, journal = self.journal.grid, self.journal
        finished = journal.finished
        carried = carry_rows(grid, finished) if finished >= 0 else []
        first_row = carried[0] if carried else finished + 1
        self.start_tile = first_row * len(grid.cols)
        self.end_tile = (journal.last + 1) * len(grid.cols)
        self.next_row = first_row
        self.tiles_resumed = (finished + 1 - journal.first) * len(grid.cols)

    def needs(self, index: int) -> bool:
        return self.start_tile <= index < self.end_tile and (self.active is None or index in self.active)


@dataclass
class PipelineStats:
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "read_wait": 0.0, "infer": 0.0,
                                                               "blend": 0.0, "journal": 0.0})
    tiles_read: int = 0
    tiles_total: int = 0


@dataclass
class Batch:
    """One batch as read: its tile indices, the raw values (scene dtype) of those with data, in order, in rows
    ``0..len(with_data)`` of a reused buffer, and those without data."""

    indices: list[int]
    data: np.ndarray
    with_data: list[int]
    nodata: list[int]
    buffer: np.ndarray
    seconds: float = 0.0

    def rows_of(self, indices: list[int]) -> np.ndarray:
        """The raw values of ``indices`` (tiles with data of this batch, in order): a view when they are all of
        them, else a copy."""
        if indices == self.with_data:
            return self.data
        position = {index: k for k, index in enumerate(self.with_data)}
        return self.data[[position[i] for i in indices]]


class ReadPool:
    """Threads reading batches of tiles in the scene's own dtype, one :class:`~rrsis_cli.scene.SceneReader`
    clone each (made up front, in the calling thread), into a fixed set of reused batch buffers (pinned memory
    for CUDA): ``buffers`` batches at most are read or in use, and no tile is allocated or converted on the
    host. The consumer hands a buffer back with :meth:`release` once every pair has run the batch."""

    def __init__(self, reader, workers: int, shape: tuple[int, int, int, int], buffers: int, pinned: bool = False,
                 whole_rows: bool = False):
        self.workers = max(1, int(workers))
        # the caller keeps ``reader`` for itself; ``whole_rows`` (every tile of a row is read): a remote scene's
        # threads share one reader that fetches each tile row once (rrsis_cli.scene.WholeRowReader)
        self.readers = [reader.clone(whole_rows) for _ in range(self.workers)]
        self.free: deque = deque(self.readers)
        self.buffers: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(buffers):
            self.buffers.put(batch_buffer(shape, reader.raw_dtype, pinned))
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="rrsis-read")

    def _read_batch(self, grid: TileGrid, indices: list[int]) -> Batch:
        reader = self.free.popleft()  # each worker thread takes a handle no other thread holds
        buffer = self.buffers.get()
        try:
            started = time.perf_counter()
            with_data, nodata = [], []
            for index in indices:
                if reader.read_raw(*grid.origin(index), grid.tile, buffer[len(with_data)]):
                    with_data.append(index)
                else:
                    nodata.append(index)
            return Batch(indices, buffer[:len(with_data)], with_data, nodata, buffer, time.perf_counter() - started)
        except BaseException:
            self.buffers.put(buffer)
            raise
        finally:
            self.free.append(reader)

    def submit(self, grid: TileGrid, indices: list[int]):
        return self.pool.submit(self._read_batch, grid, indices)

    def release(self, batch: Batch) -> None:
        """Hand the batch's buffer back for the next read."""
        self.buffers.put(batch.buffer)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for reader in self.readers:
            reader.close()


def batch_buffer(shape: tuple[int, int, int, int], dtype: np.dtype, pinned: bool) -> np.ndarray:
    """A (batch, C, tile, tile) array of ``dtype``, in page-locked memory for fast copies to CUDA when asked."""
    if not pinned:
        return np.empty(shape, dtype)
    import torch

    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True).numpy()


HEAP_MMAP_THRESHOLD = 4 << 20


def bound_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc serve every allocation above ``threshold`` bytes by a mapping of its own, returned to
    the system when freed (``mallopt(M_MMAP_THRESHOLD)``). By default the threshold follows the largest block
    freed so far, so the band-sized arrays of a wide scene (a few MB each, allocated in several threads) end up
    in heaps that fragment and stay resident: measured, ~120 MB more peak RSS on a 20000² scene than on a 2000²
    one, against ~50 MB with the fixed threshold. The per-tile path allocates nothing that large (reused
    buffers, chunked bands), so it pays no page faults for it. Not applied when ``MALLOC_MMAP_THRESHOLD_`` is
    set (the user's choice) or the C library is not glibc; returns whether it was applied."""
    import ctypes
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, int(threshold)))


def heap_bound_pays(device, model) -> bool:
    """Whether :func:`bound_heap` is worth its page faults: yes when the model's activations are not on the host
    (a GPU), or when its forward allocates none (the null model). A model whose forward runs on the CPU allocates
    its activations (tensors of 4–200 MB per batch) through malloc: with the fixed 4 MB threshold every one is a
    fresh mapping, faulted in page by page (measured: lavt-swin-t, batch 8 of 480² tiles, 13.4 s per forward
    against 11.1 s with glibc's default), and those activations, not heap fragmentation, set its peak memory."""
    return device.type != "cpu" or not getattr(model, "large_activations", True)


def batches_for(grid: TileGrid, batch_size: int, pairs: list[Pair]) -> list[list[int]]:
    """The fixed batches (of all tiles, or of the union of the pairs' active tiles) that some pair still needs."""
    active = None
    if all(p.active is not None for p in pairs):
        active = sorted(set().union(*(p.active for p in pairs)))
    return [b for b in grid.batches(batch_size, active) if any(p.needs(i) for p in pairs for i in b)]


def close_rows(pair: Pair, reader, upto_index: int, stats: PipelineStats) -> None:
    """Close every tile row of ``pair`` whose last tile index is ≤ ``upto_index``: rows already journaled
    (carried for a resume) are skipped, the others are blended, quantised and journaled."""
    from rasterio.windows import Window

    ncols = len(pair.journal.grid.cols)
    while pair.next_row <= pair.journal.last and (pair.next_row + 1) * ncols - 1 <= upto_index:
        r = pair.next_row
        pair.next_row += 1
        if r <= pair.journal.finished:
            continue
        started = time.perf_counter()
        _, _, p8, covered = pair.blender.finish_band(
            r, lambda y0, y1, c0, c1: reader.valid(Window(c0, y0, c1 - c0, y1 - y0)))
        stats.seconds["blend"] += time.perf_counter() - started
        started = time.perf_counter()
        # with scene grounding the fusion with the coarse levels happens when the rasters are assembled; the band
        # keeps the fine probability and which pixels a refined tile covered
        pair.journal.write_band(r, p8, None if pair.coarse is None else covered.astype(np.uint8))
        stats.seconds["journal"] += time.perf_counter() - started


def run_pairs(reader, model, grid: TileGrid, pairs: list[Pair], batch_size: int, device, precision: str,
              read_workers: int = 2, read_ahead: int = 4, label: str = "tiles") -> PipelineStats:
    """Run the tiles every pair still needs, reading each batch once for all of them, and journal their bands.
    Pairs whose journal is complete are left as they are.

    Per batch the host reads the raw tiles into a reused buffer (:class:`ReadPool`) and blends what comes back;
    the normalisation (:class:`~rrsis_cli.inference.BatchNormaliser`) runs once per batch on the device, shared
    by every pair that runs the whole batch."""
    from rrsis_cli.inference import BatchNormaliser

    stats = PipelineStats(tiles_total=len(grid))
    pairs = [p for p in pairs if not p.journal.done]
    if not pairs:
        return stats
    batches = batches_for(grid, batch_size, pairs)
    channels = len(reader.bands)
    shape = (min(batch_size, max(len(b) for b in batches)) if batches else 1, channels, grid.tile, grid.tile)
    pool = ReadPool(reader, read_workers, shape, read_ahead + 1, pinned=device.type == "cuda",
                    whole_rows=all(p.active is None for p in pairs))
    normalise = BatchNormaliser(reader.lo, reader.hi, reader.raw_dtype, model.config, device)
    pending: deque = deque()
    queue_ = iter(batches)
    done_tiles = min(p.tiles_resumed for p in pairs)
    span = max(p.end_tile - p.journal.first * len(grid.cols) for p in pairs)  # the grid, or a window's rows
    try:
        with console.progress_bar(span, label, unit="tile", initial=done_tiles) as bar:
            for batch in queue_:
                pending.append(pool.submit(grid, batch))
                if len(pending) >= read_ahead:
                    break
            while pending:
                started = time.perf_counter()
                batch = pending.popleft().result()
                stats.seconds["read_wait"] += time.perf_counter() - started
                stats.seconds["read"] += batch.seconds
                stats.tiles_read += len(batch.indices)
                following = next(queue_, None)
                if following is not None:
                    pending.append(pool.submit(grid, following))
                inputs = BatchInputs(batch, normalise)
                for pair in pairs:
                    _run_batch(pair, reader, batch, inputs, model, device, precision, stats)
                    close_rows(pair, reader, batch.indices[-1], stats)
                pool.release(batch)
                bar.update(len(batch.indices))
        for pair in pairs:
            close_rows(pair, reader, len(grid), stats)  # rows after the last batch (no tile needed them)
    finally:
        pool.close()
    return stats


class BatchInputs:
    """The model input of a batch's tiles with data, normalised once and shared by the pairs that run all of
    them; a pair that runs a subset (scene grounding) gets its own."""

    def __init__(self, batch: Batch, normalise):
        self.batch = batch
        self.normalise = normalise
        self.whole = None

    def of(self, indices: list[int]):
        if indices != self.batch.with_data:
            return self.normalise(self.batch.rows_of(indices))
        if self.whole is None:
            self.whole = self.normalise(self.batch.data)
        return self.whole


def _run_batch(pair: Pair, reader, batch: Batch, inputs: BatchInputs, model, device, precision: str,
               stats: PipelineStats) -> None:
    wanted = [i for i in batch.indices if pair.needs(i)]
    if not wanted:
        return
    # a batch is run whole (its tiles that hold data, with or without this pair's use of them), as in every run
    # of the same configuration: the forward sees the same batch, so resumed results are the same to the bit
    indices = [i for i in batch.with_data if pair.active is None or i in pair.active]
    from rrsis_cli import inference

    started = time.perf_counter()
    probs = inference.forward_probability(model, pair.text, inputs.of(indices), device, precision) \
        if indices else []
    stats.seconds["infer"] += time.perf_counter() - started
    ncols = len(pair.journal.grid.cols)
    for index, prob in zip(indices, probs, strict=True):
        if pair.needs(index):
            close_rows(pair, reader, index - 1, stats)  # rows before this tile's row are complete
            started = time.perf_counter()
            pair.blender.add(index // ncols, index % ncols, prob)
            stats.seconds["blend"] += time.perf_counter() - started
    counted = [i for i in wanted if i >= pair.start_tile]
    with_data = set(batch.with_data)
    pair.tiles += sum(i in with_data for i in counted)
    pair.nodata_tiles += sum(i not in with_data for i in counted)


def new_pair(work: Path, grid: TileGrid, job: dict, prompt: str, text, coarse=None, active=None,
             coarse_weight: float = 0.75, coarse_support: float = 0.25,
             tile_rows: tuple[int, int] | None = None) -> Pair:
    """A pair over the whole grid, or over the tile rows ``tile_rows = (first, last)`` of a window task (it
    journals only those rows' bands, recomputing the overlap rows above them)."""
    journal = BandJournal(work, grid, job, support=coarse is not None, rows=tile_rows)
    return Pair(prompt, text, journal, RowBlender(grid, blend_weights(grid.tile)),
                None if active is None else set(active), coarse, coarse_weight, coarse_support)


def assemble(reader, journal: BandJournal, threshold: float, mask_raw: Path, prob_raw: Path | None, profile: dict,
             block: int = 1024, fuse=None) -> None:
    """The mask (:func:`mask_from_probability`) and the uint8 probability (unless ``prob_raw`` is None: nothing
    reads it) as tiled GeoTIFFs in the work directory, from the journal's bands. Without fusion the rasters are
    written one internal block at a time (a row of blocks read from the journal), so neither this process nor
    GDAL holds more than a row of blocks. With scene grounding, ``fuse(fine, covered, row0, row1, col0, col1) ->
    (probability, keep)`` combines each ``block``² block's fine probability (the journal's, p8 / 254) with the
    coarse levels, and ``keep`` is the mask."""
    import contextlib

    import rasterio

    height, width = journal.grid.height, journal.grid.width
    rows, cols = (block, block) if fuse is not None else (profile["blockysize"], profile["blockxsize"])
    with contextlib.ExitStack() as files:
        mask_dst = files.enter_context(rasterio.open(mask_raw, "w", **profile))
        prob_dst = None if prob_raw is None else files.enter_context(rasterio.open(prob_raw, "w", **profile))
        for r in range(0, height, rows):
            r1 = min(r + rows, height)
            p8_rows = journal.prob.read(r, r1)
            covered_rows = None if fuse is None else journal.support.read(r, r1)
            for c in range(0, width, cols):
                c1 = min(c + cols, width)
                p8 = p8_rows[:, c:c1]
                if fuse is None:
                    mask = mask_from_probability(p8, threshold)
                else:
                    nodata = p8 == 255
                    fine = np.where(nodata, 0, p8).astype(np.float32) / 254.0
                    prob, keep = fuse(fine, covered_rows[:, c:c1] == 1, r, r1, c, c1)
                    p8 = quantise(prob)
                    mask = keep.astype(np.uint8)
                    p8[nodata], mask[nodata] = 255, 255
                _write_block(mask_dst, mask, r, c)
                if prob_dst is not None:
                    _write_block(prob_dst, p8, r, c)


def _write_block(dst, values: np.ndarray, row: int, col: int) -> None:
    from rasterio.windows import Window

    dst.write(values, 1, window=Window(col, row, values.shape[1], values.shape[0]))


def start_beside(step) -> Future:
    """Run ``step()`` now in a thread of its own (e.g. a pair's COGs while its vectors are made in the calling
    thread); ``result()`` waits for it and raises its error."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rrsis-beside")
    try:
        return pool.submit(step)
    finally:
        pool.shutdown(wait=False)  # the thread ends once the step is done


class BackgroundWriter:
    """One thread that runs the output steps of (scene, prompt) pairs (assembling the rasters, COG and overview
    writing, vectors) in submission order, while the caller runs the tiles of the next scene.

    * **Bounded**: :meth:`submit` waits while ``depth`` steps are queued, so finished pairs do not pile up.
    * **Errors**: each step records its own failure on its pair (``run_for_pair``); an exception a step lets
      escape is raised by :meth:`submit` or :meth:`close` in the caller's thread, and the remaining steps other
      than clean-ups are dropped.
    * **Stopping** (``close(stop=True)``, e.g. on SIGTERM): the step being run finishes (an output is never left
      half-moved), queued steps are dropped (their pairs stay unfinished: ``interrupted`` in the manifest, and
      their complete journals make the next run write them without running tiles), clean-up steps (closing a
      scene) still run, in order."""

    def __init__(self, depth: int):
        self.depth = max(1, int(depth))
        self.steps: deque = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.stopping = False
        self.error: BaseException | None = None
        self.km2 = 0.0  # area of the pairs the steps finished (added by the scenes' clean-up steps)
        self.thread = threading.Thread(target=self._work, name="rrsis-write", daemon=True)
        self.thread.start()

    def submit(self, step, cleanup: bool = False) -> None:
        """Queue ``step()`` (waiting while ``depth`` steps are queued; a clean-up step never waits)."""
        with self.cond:
            while not cleanup and len(self.steps) >= self.depth and self.error is None:
                self.cond.wait()
            if self.error is not None and not cleanup:
                raise self.error
            self.steps.append((step, cleanup))
            self.cond.notify_all()

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.steps and not self.closed:
                    self.cond.wait()
                if not self.steps:
                    return
                step, cleanup = self.steps.popleft()
                skip = self.stopping and not cleanup
                self.cond.notify_all()
            if skip:
                continue
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                with self.cond:
                    self.error = self.error or exc
                    self.stopping = True
                    self.cond.notify_all()

    def close(self, stop: bool = False) -> None:
        """Wait for the queued steps (``stop``: only the one being run and the clean-ups), end the thread, and
        raise an error a step let escape (not when stopping: the caller is already handling one)."""
        with self.cond:
            self.closed = True
            self.stopping = self.stopping or stop
            self.cond.notify_all()
        self.thread.join()
        if self.error is not None and not stop:
            raise self.error


__all__ = ["BackgroundWriter", "Pair", "PipelineStats", "ReadPool", "assemble", "band_rows", "bound_heap",
           "heap_bound_pays", "mask_from_probability", "new_pair", "quantise", "run_pairs", "start_beside"]

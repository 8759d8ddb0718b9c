"""Reading scenes: one open raster with band selection, nodata mask, optional resampling to a target ground
sample distance, scene-level normalisation and windowed boundless reads; plus a read-ahead helper that reads the
next batches of tiles in a background thread while the model runs (GDAL releases the GIL during reads).

Normalisation is decided once per scene, never per tile (per-tile min-max makes seams): uint8 → /255; other
types a 2–98 % stretch per band over valid pixels of a decimated read (GDAL uses overviews when present), or
the user's ``stretch``. A CRS-less raster is read in pixel space with a warning.

Valid pixels follow GDAL's convention (RFC 15, rasterio's ``dataset_mask()``), computed by :func:`valid_mask` for
every reader of the valid mask (tiles, the final mask and so the vectors, the statistics, scene evaluation): a
per-dataset mask (internal mask, ``.msk`` file, alpha band) decides where there is one; otherwise a pixel is nodata
only where *every* selected band holds its nodata value, so a 0 in one band of an RGB scene with nodata 0 is data.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.errors import InputError, UsageError

# GDAL's block cache defaults to 5 % of RAM and fills up on large scenes; a fixed bound keeps predict's memory
# independent of the scene size. Set GDAL_CACHEMAX yourself (MB) to override.
os.environ.setdefault("GDAL_CACHEMAX", "128")


def resample_to_gsd(ds, gsd: float, path: Path):
    """A WarpedVRT of ``ds`` in its own CRS at ``gsd`` metres per pixel (bilinear), covering the same bounds."""
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT

    if gsd <= 0:
        raise UsageError(f"--gsd must be positive, got {gsd}")
    if ds.crs is None or ds.crs.is_geographic:
        raise InputError("--gsd needs a projected CRS in metres (reproject the scene first)", path)
    left, bottom, right, top = ds.bounds
    width, height = max(1, round((right - left) / gsd)), max(1, round((top - bottom) / gsd))
    return WarpedVRT(ds, crs=ds.crs, transform=from_origin(left, top, gsd, gsd), width=width, height=height,
                     resampling=Resampling.bilinear)


def mask_kind(ds, bands: list[int]) -> str:
    """How the valid mask of ``bands`` of ``ds`` is decided, from GDAL's mask flags: ``"per_dataset"`` (an
    internal mask, ``.msk`` file or alpha band shared by all bands: read once), ``"all_valid"`` (a selected band
    has neither nodata nor a mask, so no pixel has every band nodata: nothing to read) or ``"per_band"`` (nodata
    values: a pixel is nodata where every selected band is)."""
    from rasterio.enums import MaskFlags

    flags = [ds.mask_flag_enums[b - 1] for b in bands]
    if any(MaskFlags.per_dataset in f for f in flags):
        return "per_dataset"
    if any(f == [MaskFlags.all_valid] for f in flags):
        return "all_valid"
    return "per_band"


def valid_mask(ds, bands: list[int], window=None, boundless: bool = False,
               out_shape: tuple[int, int] | None = None, kind: str | None = None) -> np.ndarray:
    """(h, w) bool valid-data mask of ``bands`` in ``window`` (the whole raster by default; ``boundless``: outside
    the raster is invalid; ``out_shape``: a decimated, nearest-neighbour read) with GDAL's semantics (RFC 15, as
    rasterio's ``dataset_mask()`` but over the selected bands only): GDAL's own per-band masks (nodata values,
    internal masks, alpha) combined so that a pixel is nodata only where all the bands are. ``kind`` is
    :func:`mask_kind`, passed by callers that read many windows; rasters without any mask read nothing."""
    from rasterio.windows import Window

    kind = kind or mask_kind(ds, bands)
    if window is None:
        window = Window(0, 0, ds.width, ds.height)
    shape = out_shape or (int(window.height), int(window.width))
    if kind == "all_valid":
        valid = np.ones(shape, bool)
        if boundless and out_shape is None:  # everything outside the raster is invalid
            row, col = int(window.row_off), int(window.col_off)
            valid[:max(0, -row)] = False
            valid[max(0, ds.height - row):] = False
            valid[:, :max(0, -col)] = False
            valid[:, max(0, ds.width - col):] = False
        return valid
    if kind == "per_dataset":
        masks = ds.read_masks(bands[0], window=window, boundless=boundless, out_shape=shape)
        return masks > 0
    masks = ds.read_masks(bands, window=window, boundless=boundless, out_shape=(len(bands), *shape))
    return masks.any(axis=0)


class SceneReader:
    """Owns one open raster: band selection, nodata mask, scene-level normalisation, windowed reads."""

    def __init__(self, path: Path, bands: list[int] | None, gsd: float | None = None,
                 stretch: tuple[list[float], list[float]] | None = None):
        import rasterio

        self.path = path
        if not path.exists():
            raise InputError("file not found", path)
        if path.stat().st_size == 0:
            raise InputError("empty file (0 bytes)", path)
        try:
            self.ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"not a readable raster ({str(exc).splitlines()[0]})", path) from exc
        ds = self._source = self.ds
        if ds.width == 0 or ds.height == 0:
            raise InputError("raster has zero size", path)
        self.bands = bands or list(range(1, min(3, ds.count) + 1))
        if max(self.bands) > ds.count or min(self.bands) < 1:
            raise InputError(f"band selection {self.bands} outside 1..{ds.count}", path)
        dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
        if dtype.kind not in "uif":
            raise InputError(f"unsupported data type {dtype}", path)
        if ds.crs is None:
            console.warn(f"{path}: no CRS; outputs are in pixel coordinates and areas are not computed")
        self.dtype = dtype
        self.native_size = (ds.width, ds.height)
        self.seconds = {"read": 0.0, "normalise": 0.0}
        if gsd is not None:
            self.ds = resample_to_gsd(ds, gsd, path)
        self.mask_kind = mask_kind(self.ds, self.bands)
        if stretch is not None:
            lo, hi = (np.asarray(v, np.float32) for v in stretch)
            if lo.shape != (len(self.bands),) or hi.shape != lo.shape or np.any(hi <= lo):
                raise UsageError(f"--stretch needs {len(self.bands)} low and high values with high > low")
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = self.statistics()

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band value range mapped to [0, 1]: uint8 → 0..255; else the 2–98 % percentiles of a decimated
        read (overviews when present) over valid pixels."""
        n = len(self.bands)
        if self.dtype == np.uint8:
            return np.zeros(n, np.float32), np.full(n, 255.0, np.float32)
        scale = min(1.0, 1024 / max(self.ds.width, self.ds.height))
        shape = (n, max(1, int(self.ds.height * scale)), max(1, int(self.ds.width * scale)))
        data = self.ds.read(self.bands, out_shape=shape).astype(np.float64)
        valid = self.valid(out_shape=shape[1:])
        lo, hi = [], []
        for band in data:
            values = band[valid]
            values = values[np.isfinite(values)]
            a, b = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
            lo.append(a)
            hi.append(b if b > a else a + 1)
        return np.array(lo, np.float32), np.array(hi, np.float32)

    def read(self, row: int, col: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, tile, tile) float in [0, 1] and a (tile, tile) valid mask; outside the scene is invalid.
        Interior windows are plain reads; only edge tiles pay for a boundless read."""
        from rasterio.windows import Window

        started = time.perf_counter()
        window = Window(col, row, tile, tile)
        inside = row + tile <= self.ds.height and col + tile <= self.ds.width
        raw = self.ds.read(self.bands, window=window, boundless=not inside, fill_value=0)
        valid = self.valid(window, boundless=not inside)
        read_done = time.perf_counter()
        data = self.normalise(raw)
        self.seconds["read"] += read_done - started
        self.seconds["normalise"] += time.perf_counter() - read_done
        return data, valid

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """(C, h, w) raw values -> (3, h, w) float in [0, 1] with the scene-level range (one band is repeated)."""
        data = np.clip((raw.astype(np.float32) - self.lo[:, None, None]) / (self.hi - self.lo)[:, None, None], 0, 1)
        if data.shape[0] < 3:
            data = np.repeat(data[:1], 3, axis=0)
        return data[:3]

    def valid(self, window=None, boundless: bool = False, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        """(h, w) bool: valid pixels of the selected bands (:func:`valid_mask`); all-valid rasters read nothing."""
        return valid_mask(self.ds, self.bands, window, boundless, out_shape, self.mask_kind)

    def close(self) -> None:
        self.ds.close()
        if self.ds is not self._source:
            self._source.close()


def prefetch(jobs: Iterable[Callable[[], Any]], depth: int = 2) -> Iterator[tuple[Any, float]]:
    """Run ``jobs`` in order in one background thread, keeping up to ``depth`` ahead of the consumer; yields each
    result with the seconds the consumer waited for it. Exceptions are raised in the consumer."""
    pending: deque = deque()
    iterator = iter(jobs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rrsis-read") as pool:
        for job in iterator:
            pending.append(pool.submit(job))
            if len(pending) >= depth:
                break
        while pending:
            started = time.perf_counter()
            result = pending.popleft().result()
            waited = time.perf_counter() - started
            next_job = next(iterator, None)
            if next_job is not None:
                pending.append(pool.submit(next_job))
            yield result, waited

"""Reading scenes: one open raster with band selection, nodata mask, optional resampling to a target ground
sample distance, scene-level normalisation and windowed boundless reads; plus a read-ahead helper that reads the
next batches of tiles in a background thread while the model runs (GDAL releases the GIL during reads).

Normalisation is decided once per scene, never per tile (per-tile min-max makes seams): uint8 → /255; other
types a 2–98 % stretch per band over valid pixels of a decimated read (GDAL uses overviews when present), or
the user's ``stretch``. A raster without any georeference is read in pixel space with a warning.

Georeferencing (:func:`georeference`): a geotransform is used as it is. A raster placed by ground control points or
by rational polynomial coefficients (level-1 VHR products, scans, drone mosaics) has no grid of its own: it is warped
on the fly (a :class:`rasterio.vrt.WarpedVRT`, GDAL's own GCP polynomial or RPC transformer, nearest neighbour as
gdalwarp: every processed pixel is a pixel of the source, no new values) onto the
north-up grid GDAL suggests, in the GCPs' CRS when it is projected, else in the local UTM zone; every output is then
on that grid. RPCs use a constant height (``rpc_height``, by default the RPCs' own ``HEIGHT_OFF``) or a DEM
(``rpc_dem``; then the scene is warped once into a temporary GeoTIFF, since rasterio's WarpedVRT upper-cases
option values and so cannot pass a file name).

Valid pixels follow GDAL's convention (RFC 15, rasterio's ``dataset_mask()``), computed by :func:`valid_mask` for
every reader of the valid mask (tiles, the final mask and so the vectors, the statistics, scene evaluation): a
per-dataset mask (internal mask, ``.msk`` file, alpha band) decides where there is one; otherwise a pixel is nodata
only where *every* selected band holds its nodata value, so a 0 in one band of an RGB scene with nodata 0 is data.
NaN (and ±inf) is never data: in a float raster a band's pixel that is not finite counts as that band's nodata.

Read failures raise :class:`~rrsis_cli.errors.InputError` naming the file, the window and GDAL's own messages (which
rasterio keeps in the exception chain behind "Read failed. See previous exception for details.").

Remote scenes (:class:`~rrsis_cli.remote.RemotePath`: URLs, object stores, ``/vsi`` paths, in-memory VRTs) are opened
by :func:`open_raster` with the remote GDAL settings; their messages never show credentials or signed query strings.
An area of interest (``aoi``, :mod:`rrsis_cli.aoi`) makes the reader a window of the scene: ``ds`` is then that
window (nearest-neighbour on the scene's own grid, so every pixel is a source pixel) and everything downstream
(tiles, statistics, outputs) sees only it. The normalisation statistics come from the window: the result is what
cropping the scene first would give, and a remote scene without overviews is not read whole for them.

The read threads of a remote scene share one dataset handle (:class:`WholeRowReader`, from
:meth:`SceneReader.clone` with ``whole_rows``): each tile row is fetched once, as one window of the scene's full width
(GDAL asks for the row's blocks in a few large ranges), and its tiles are cut from it. Separate handles per thread
each kept their own caches and raced for the blocks that overlapping tiles share: a whole 4096² COG was fetched
1.22 times (1.56 times the bytes it needed), in 234 requests. Local scenes, and remote scenes warped or resampled on
the fly (whose values depend on the window read), keep one handle per thread and per-tile reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.errors import InputError, UsageError
from rrsis_cli.remote import RemotePath, redact, remote_open_options

# GDAL's block cache defaults to 5 % of RAM and fills up on large scenes; a fixed bound keeps predict's memory
# independent of the scene size (32 MB: a row of 512² blocks of a 20000-wide RGB uint8 scene; a wider compressed
# scene may decode some blocks twice). Set GDAL_CACHEMAX yourself (MB) to override.
GDAL_CACHE_MB = "32"
os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)


def default_bands(count: int) -> list[int]:
    """The bands read without ``--bands``: the first three (or all of a one- or two-band raster)."""
    return list(range(1, min(3, count) + 1))


def gsd_shape(bounds, gsd: float) -> tuple[int, int]:
    """(width, height) of a raster with ``bounds`` (left, bottom, right, top) resampled to ``gsd``."""
    left, bottom, right, top = bounds
    return max(1, round((right - left) / gsd)), max(1, round((top - bottom) / gsd))


def resample_to_gsd(ds, gsd: float, path: Path):
    """A WarpedVRT of ``ds`` in its own CRS at ``gsd`` metres per pixel (bilinear), covering the same bounds."""
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.vrt import WarpedVRT

    if gsd <= 0:
        raise UsageError(f"--gsd must be positive, got {gsd}")
    if ds.crs is None or ds.crs.is_geographic:
        raise InputError("--gsd needs a projected CRS in metres (reproject the scene first)", path)
    left, top = ds.bounds.left, ds.bounds.top
    width, height = gsd_shape(ds.bounds, gsd)
    return WarpedVRT(ds, crs=ds.crs, transform=from_origin(left, top, gsd, gsd), width=width, height=height,
                     resampling=Resampling.bilinear)


def open_raster(path):
    """``rasterio.open(path)``; a remote name (:class:`~rrsis_cli.remote.RemotePath`) with the remote GDAL
    settings for it (:func:`rrsis_cli.remote.remote_open_options`, the user's environment winning)."""
    import rasterio

    if not isinstance(path, RemotePath):
        return rasterio.open(path)
    with rasterio.Env(**remote_open_options(path)):
        return rasterio.open(path)


def crop_to_window(ds, window):
    """A view of ``ds`` limited to ``window`` (a WarpedVRT on the same CRS and pixel grid, nearest neighbour: each
    pixel is the source pixel; an alpha band carries an internal mask)."""
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.vrt import WarpedVRT

    alpha = any(MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags for flags in ds.mask_flag_enums)
    return WarpedVRT(ds, crs=ds.crs, transform=ds.window_transform(window), width=int(window.width),
                     height=int(window.height), resampling=Resampling.nearest, add_alpha=alpha)


# ----------------------------------------------------------------------------------------------- errors
def gdal_messages(exc: BaseException) -> list[str]:
    """GDAL's own messages behind ``exc``: rasterio raises "Read failed. See previous exception for details." and
    keeps GDAL's errors in the exception chain (``__cause__`` / ``__context__``). Outermost first, each once."""
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split()).rstrip(".")
        if text and "See previous exception" not in text and not any(text in m for m in messages):
            messages.append(text)
        current = current.__cause__ or current.__context__
    return messages


def describe_error(exc: BaseException) -> str:
    """One line for any exception: GDAL's messages from the chain when there are some, else ``Type: message``."""
    messages = gdal_messages(exc)
    if not messages:
        return type(exc).__name__
    if len(messages) == 1 and str(exc).strip() == messages[0]:
        return f"{type(exc).__name__}: {messages[0]}"
    return "; ".join(messages)


METHOD_NAMES = {"transform": "geotransform", "gcps": "GCPs", "rpcs": "RPCs", "none": "no georeference"}


def crs_label(crs) -> str:
    """``EPSG:32618``, or the CRS's name when it has no authority code (never a whole WKT)."""
    from pyproj import CRS as ProjCRS

    code = crs.to_authority() if hasattr(crs, "to_authority") else None
    if code:
        return ":".join(code)
    try:
        return repr(ProjCRS.from_wkt(crs.to_wkt()).name)
    except Exception:  # noqa: BLE001
        return "a CRS without a code"


def window_text(window, ds=None) -> str:
    """``rows 0-511, cols 512-1023`` (end inclusive) and, for a tiled file, the internal tiles it touches."""
    if window is None:
        return "whole raster" if ds is None else f"whole raster ({ds.width} x {ds.height})"
    row, col = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    text = f"rows {row}-{row + height - 1}, cols {col}-{col + width - 1}"
    if ds is not None and getattr(ds, "block_shapes", None):
        by, bx = ds.block_shapes[0]
        if by > 1 and bx < ds.width:  # a tiled file: name its tiles as GDAL counts them (X, Y offsets)
            r0, r1 = max(row, 0) // by, max(min(row + height, ds.height) - 1, 0) // by
            c0, c1 = max(col, 0) // bx, max(min(col + width, ds.width) - 1, 0) // bx
            text += (f" (tile X {c0}, Y {r0})" if (r0, c0) == (r1, c1)
                     else f" (tiles X {c0}-{c1}, Y {r0}-{r1})")
    return text


@contextmanager
def read_errors(path: Path, what: str, window=None, ds=None):
    """Turn a failed GDAL read into an :class:`InputError` with the file, the window and GDAL's messages."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        raise InputError(f"{what} failed in {window_text(window, ds)}: {describe_error(exc)}", path) from exc


@contextmanager
def quiet_georeference_warning():
    """rasterio warns (NotGeoreferencedWarning) on opening a raster without geotransform, GCPs or RPCs; the reader
    reports the georeference itself (one line, through the console)."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


# ------------------------------------------------------------------------------------------ georeference
@dataclass
class Georeference:
    """How a scene is placed on the ground and on which grid it is processed (recorded in the manifest).

    ``method``: ``transform`` (a geotransform), ``gcps``, ``rpcs`` or ``none``; ``crs``: the CRS of that
    georeference (the GCPs' CRS; EPSG:4326 for RPCs); ``warped``: processed and written on a grid GDAL suggests
    for warping the scene (GCPs, RPCs), described by ``grid``."""

    method: str
    crs: str | None = None
    warped: bool = False
    gcp_count: int | None = None
    transformer: str | None = None
    rpc_height: float | None = None
    rpc_height_source: str | None = None
    rpc_dem: str | None = None
    grid: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def georeference(ds) -> Georeference:
    """The georeference GDAL would use for ``ds``, in GDAL's order: a geotransform that is not the default
    (identity) one, else GCPs, else RPCs, else none."""
    if not ds.transform.is_identity:
        return Georeference("transform", ds.crs.to_string() if ds.crs else None)
    gcps, gcp_crs = ds.gcps
    if gcps:
        return Georeference("gcps", gcp_crs.to_string() if gcp_crs else None, gcp_count=len(gcps))
    if ds.rpcs:
        return Georeference("rpcs", "EPSG:4326")
    return Georeference("none")


def _utm_zone(lon: float, lat: float):
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    from rasterio.crs import CRS

    found = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(int(found[0].code)) if found else CRS.from_epsg(4326)


def warp_grid_crs(ds, geo: Georeference, options: dict[str, Any], path: Path):
    """CRS of the warped grid: the georeference's own CRS when projected, else the UTM zone (WGS 84) of the
    footprint's centre, so that tiles have square pixels in metres. Fails for a footprint outside the CRS's range
    (GCPs that do not belong to their stated CRS)."""
    from rasterio.crs import CRS
    from rasterio.warp import calculate_default_transform

    crs = CRS.from_user_input(geo.crs)
    if crs.is_projected:
        return crs
    try:
        transform, width, height = calculate_default_transform(
            crs, crs, ds.width, ds.height, gcps=ds.gcps[0] if geo.method == "gcps" else None,
            rpcs=ds.rpcs if geo.method == "rpcs" else None, **options)
    except Exception as exc:  # noqa: BLE001 - GDAL cannot transform the footprint: say so, with its message
        raise InputError(f"GDAL cannot place the scene with its {METHOD_NAMES[geo.method]} "
                         f"({describe_error(exc)})", path) from exc
    lon, lat = transform.c + transform.a * width / 2, transform.f + transform.e * height / 2
    west, north = transform.c, transform.f
    east, south = transform.c + transform.a * width, transform.f + transform.e * height
    if not (-360 <= min(west, east) and max(west, east) <= 360 and -90 <= min(south, north)
            and max(south, north) <= 90):
        raise InputError(f"the {METHOD_NAMES[geo.method]} place the scene at x {west:.6g}..{east:.6g}, "
                         f"y {south:.6g}..{north:.6g}, outside the range of their geographic CRS {crs_label(crs)}",
                         path)
    return _utm_zone(((lon + 180) % 360) - 180, lat)


def needs_alpha(ds) -> bool:
    """True when a warp of ``ds`` needs an alpha band to mark pixels outside the footprint: no nodata value,
    mask or alpha band of its own."""
    from rasterio.enums import MaskFlags

    return all(MaskFlags.all_valid in flags for flags in ds.mask_flag_enums)


def warp_to_map(ds, geo: Georeference, path: Path, rpc_height: float | None, rpc_dem: str | Path | None):
    """``ds`` warped onto a north-up map grid through GDAL's GCP or RPC transformer; returns (dataset, temporary
    directory or None). Fills ``geo``'s warp fields."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    options: dict[str, Any] = {"SRC_METHOD": "GCP_POLYNOMIAL" if geo.method == "gcps" else "RPC"}
    geo.transformer = "GDAL GCP polynomial (order from the GCP count)" if geo.method == "gcps" else "GDAL RPC"
    if geo.method == "rpcs":
        if rpc_height is None:
            rpc_height, geo.rpc_height_source = float(ds.rpcs.height_off), "HEIGHT_OFF of the RPCs"
        else:
            geo.rpc_height_source = "--rpc-height"
        geo.rpc_height = float(rpc_height)
        options["RPC_HEIGHT"] = rpc_height
        if rpc_dem is not None:
            geo.rpc_dem = str(rpc_dem)
            geo.rpc_height_source = "--rpc-dem (constant height where the DEM has no data)"
            options["RPC_DEM_MISSING_VALUE"] = rpc_height
    dst_crs = warp_grid_crs(ds, geo, {**options, **({"RPC_DEM": str(rpc_dem)} if geo.rpc_dem else {})}, path)
    alpha = needs_alpha(ds)
    tmp = None
    try:
        if geo.rpc_dem:
            tmp = Path(tempfile.mkdtemp(prefix="rrsis-rpc-warp-"))
            warped = warp_rpc_with_dem(ds, dst_crs, options, Path(geo.rpc_dem), alpha, tmp / "warped.tif")
        else:
            warped = WarpedVRT(ds, src_crs=geo.crs, crs=dst_crs, resampling=Resampling.nearest, add_alpha=alpha,
                               **options)
    except Exception as exc:  # noqa: BLE001 - GDAL's transformer failed: one line with its message
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"GDAL cannot warp the scene with its {METHOD_NAMES[geo.method]} "
                         f"({describe_error(exc)})", path) from exc
    geo.warped = True
    geo.grid = {"crs": warped.crs.to_string(), "transform": list(warped.transform)[:6], "width": warped.width,
                "height": warped.height, "resampling": "nearest"}
    return warped, tmp


def warp_rpc_with_dem(ds, dst_crs, options: dict[str, Any], dem: Path, alpha: bool, out: Path):
    """The RPC warp with heights from ``dem``, written once to ``out`` (a tiled GeoTIFF) and opened: rasterio's
    WarpedVRT upper-cases warp option values, which breaks the DEM's file name, while ``reproject`` passes it
    as it is."""
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.warp import calculate_default_transform, reproject

    extras = {**options, "RPC_DEM": str(dem)}
    extras.pop("SRC_METHOD")
    transform, width, height = calculate_default_transform("EPSG:4326", dst_crs, ds.width, ds.height,
                                                           rpcs=ds.rpcs, **extras)
    count = ds.count + (1 if alpha else 0)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": ds.dtypes[0],
               "crs": dst_crs, "transform": transform, "nodata": None if alpha else ds.nodata, "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with rasterio.open(out, "w", **profile) as dst:
        if alpha:
            dst.colorinterp = [*ds.colorinterp, ColorInterp.alpha]
        reproject(rasterio.band(ds, list(ds.indexes)), rasterio.band(dst, list(range(1, ds.count + 1))),
                  src_crs="EPSG:4326", dst_crs=dst_crs, dst_transform=transform, rpcs=ds.rpcs,
                  resampling=Resampling.nearest, src_nodata=ds.nodata, dst_nodata=None if alpha else ds.nodata,
                  dst_alpha=count if alpha else 0, **extras)
    return rasterio.open(out)


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
               out_shape: tuple[int, int] | None = None, kind: str | None = None,
               data: np.ndarray | None = None) -> np.ndarray:
    """(h, w) bool valid-data mask of ``bands`` in ``window`` (the whole raster by default; ``boundless``: outside
    the raster is invalid; ``out_shape``: a decimated, nearest-neighbour read) with GDAL's semantics (RFC 15, as
    rasterio's ``dataset_mask()`` but over the selected bands only): GDAL's own per-band masks (nodata values,
    internal masks, alpha) combined so that a pixel is nodata only where all the bands are. ``kind`` is
    :func:`mask_kind`, passed by callers that read many windows; rasters without any mask read nothing.

    In float bands a value that is not finite (NaN, ±inf) is nodata too, whatever the nodata value: ``data`` is
    the (C, h, w) values of the same read when the caller has them, else they are read here."""
    from rasterio.windows import Window

    kind = kind or mask_kind(ds, bands)
    if window is None:
        window = Window(0, 0, ds.width, ds.height)
    shape = out_shape or (int(window.height), int(window.width))
    finite = None
    if any(np.dtype(ds.dtypes[b - 1]).kind == "f" for b in bands):
        if data is None:
            data = ds.read(bands, window=window, boundless=boundless, out_shape=(len(bands), *shape),
                           fill_value=0)
        finite = np.isfinite(data)
    if kind == "all_valid":
        valid = np.ones(shape, bool)
        if boundless and out_shape is None:  # everything outside the raster is invalid
            row, col = int(window.row_off), int(window.col_off)
            valid[:max(0, -row)] = False
            valid[max(0, ds.height - row):] = False
            valid[:, :max(0, -col)] = False
            valid[:, max(0, ds.width - col):] = False
        return valid if finite is None else valid & finite.any(axis=0)
    if kind == "per_dataset":
        masks = ds.read_masks(bands[0], window=window, boundless=boundless, out_shape=shape)
        return masks > 0 if finite is None else (masks > 0) & finite.any(axis=0)
    masks = ds.read_masks(bands, window=window, boundless=boundless, out_shape=(len(bands), *shape)) > 0
    return masks.any(axis=0) if finite is None else (masks & finite).any(axis=0)


class SceneReader:
    """Owns one open raster: georeference (GCP/RPC scenes warped onto a map grid), band selection, nodata mask,
    scene-level normalisation, windowed reads. ``ds`` is what is processed and what outputs are aligned with."""

    def __init__(self, path: Path | RemotePath, bands: list[int] | None, gsd: float | None = None,
                 stretch: tuple[list[float], list[float]] | None = None, rpc_height: float | None = None,
                 rpc_dem: str | Path | None = None, aoi=None):
        import rasterio

        self._args = (bands, gsd, stretch, rpc_height, rpc_dem, aoi)
        self.path = path
        self.window = None  # the AOI's window of the processed grid (rasterio Window), when there is an AOI
        self._whole_rows: WholeRowReader | None = None  # the read threads' shared reader (remote scenes)
        remote = isinstance(path, RemotePath)
        if not remote and not path.exists():
            raise InputError("file not found", path)
        if not remote and path.stat().st_size == 0:
            raise InputError("empty file (0 bytes)", path)
        try:
            with quiet_georeference_warning():
                self.ds = open_raster(path)
        except rasterio.errors.RasterioIOError as exc:
            reason = redact(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
            raise InputError(f"{'cannot open' if remote else 'not a readable raster'} ({reason})", path) from exc
        ds = self._source = self.ds
        self._opened: list[Any] = []  # datasets layered over the source (warps), closed before it
        self._tmp: Path | None = None
        try:
            self._setup(ds, bands, gsd, stretch, rpc_height, rpc_dem, aoi)
        except BaseException:
            self.close()
            raise

    def _setup(self, ds, bands, gsd, stretch, rpc_height, rpc_dem, aoi=None) -> None:
        path = self.path
        if ds.count == 0:
            names = ", ".join(ds.subdatasets[:4]) + (" ..." if len(ds.subdatasets) > 4 else "")
            raise InputError("no raster bands" + (f"; it holds {len(ds.subdatasets)} subdataset(s) ({names}): "
                                                  "convert the one to segment to a GeoTIFF" if ds.subdatasets
                                                  else ""), path)
        if ds.width == 0 or ds.height == 0:
            raise InputError("raster has zero size", path)
        self.bands = bands or default_bands(ds.count)
        if max(self.bands) > ds.count or min(self.bands) < 1:
            raise InputError(f"band selection {self.bands} outside 1..{ds.count}", path)
        dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
        if dtype.kind not in "uif":
            raise InputError(f"unsupported data type {dtype}", path)
        self.georeference = georeference(ds)
        method = self.georeference.method
        if method in ("gcps", "rpcs") and self.georeference.crs is None:
            console.warn(f"{path}: GCPs without a CRS cannot place the scene; outputs are in pixel coordinates")
            self.georeference = Georeference("none")
        elif method in ("gcps", "rpcs"):
            if method == "gcps" and (rpc_height is not None or rpc_dem is not None):
                console.warn(f"{path}: georeferenced by GCPs; --rpc-height/--rpc-dem do not apply")
            self.ds, self._tmp = warp_to_map(ds, self.georeference, path, rpc_height, rpc_dem)
            self._opened.append(self.ds)
            grid = self.georeference.grid
            console.info(f"{path.name}: georeferenced by {METHOD_NAMES[method]}; warped on the fly to {grid['crs']} "
                         f"({grid['width']} x {grid['height']} px of {abs(grid['transform'][0]):.4g}); "
                         "outputs are on this grid")
        elif method == "none":
            console.warn(f"{path}: no georeference (no geotransform, GCPs or RPCs"
                         + ("; its CRS alone cannot place it" if ds.crs else "")
                         + "); outputs are in pixel coordinates and areas are not computed")
        elif ds.crs is None:
            console.warn(f"{path}: no CRS; outputs keep the geotransform without a CRS and areas are not computed")
        self.dtype = dtype
        self.native_size = (ds.width, ds.height)
        self.seconds = {"read": 0.0, "normalise": 0.0}
        if gsd is not None:
            self.ds = resample_to_gsd(self.ds, gsd, path)
            self._opened.append(self.ds)
        if aoi is not None:
            from rrsis_cli.aoi import aoi_window

            if self.crs is None:
                raise InputError("--aoi needs a georeferenced scene (this one has no georeference or CRS)", path)
            self.window = aoi_window(aoi, self.ds, path)
            self.ds = crop_to_window(self.ds, self.window)
            self._opened.append(self.ds)
        self.mask_kind = mask_kind(self.ds, self.bands)
        self.nodata_values = self._integer_nodata()  # set: tiles with data are found from their values alone
        if stretch is not None:
            lo, hi = (np.asarray(v, np.float32) for v in stretch)
            if lo.shape != (len(self.bands),) or hi.shape != lo.shape or np.any(hi <= lo):
                raise UsageError(f"--stretch needs {len(self.bands)} low and high values with high > low")
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = self.statistics()

    @property
    def crs(self):
        """The CRS of the processed grid (``ds``), or None for a scene without georeference (a CRS without a
        geotransform, GCPs or RPCs places nothing: the outputs must not claim it)."""
        return None if self.georeference.method == "none" else self.ds.crs

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band value range mapped to [0, 1]: uint8 → 0..255; else the 2–98 % percentiles of a decimated
        read (overviews when present) over valid, finite pixels."""
        n = len(self.bands)
        if self.dtype == np.uint8:
            return np.zeros(n, np.float32), np.full(n, 255.0, np.float32)
        scale = min(1.0, 1024 / max(self.ds.width, self.ds.height))
        shape = (n, max(1, int(self.ds.height * scale)), max(1, int(self.ds.width * scale)))
        with read_errors(self.path, "reading the statistics sample", ds=self.ds):
            raw = self.ds.read(self.bands, out_shape=shape)
            valid = self.valid(out_shape=shape[1:], data=raw)
        lo, hi = [], []
        for band in raw:
            values = band[valid]
            values = values[np.isfinite(values)].astype(np.float64)
            a, b = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
            lo.append(a)
            hi.append(b if b > a else a + 1)
        return np.array(lo, np.float32), np.array(hi, np.float32)

    def read(self, row: int, col: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, tile, tile) float in [0, 1] and a (tile, tile) valid mask; outside the scene is invalid (values 0).
        A window reaching outside the scene reads its part inside and pads it (a WarpedVRT refuses boundless
        reads)."""
        from rasterio.windows import Window

        started = time.perf_counter()
        window = Window(col, row, tile, tile)
        with read_errors(self.path, "read", window, self.ds):
            if row >= 0 and col >= 0 and row + tile <= self.ds.height and col + tile <= self.ds.width:
                raw = self.ds.read(self.bands, window=window)
                valid = self.valid(window, data=raw)
            else:
                raw = np.zeros((len(self.bands), tile, tile), self.ds.dtypes[self.bands[0] - 1])
                valid = np.zeros((tile, tile), bool)
                r0, c0 = max(row, 0), max(col, 0)
                r1, c1 = min(row + tile, self.ds.height), min(col + tile, self.ds.width)
                if r1 > r0 and c1 > c0:
                    inner = Window(c0, r0, c1 - c0, r1 - r0)
                    part = self.ds.read(self.bands, window=inner)
                    raw[:, r0 - row:r1 - row, c0 - col:c1 - col] = part
                    valid[r0 - row:r1 - row, c0 - col:c1 - col] = self.valid(inner, data=part)
        read_done = time.perf_counter()
        data = self.normalise(raw)
        self.seconds["read"] += read_done - started
        self.seconds["normalise"] += time.perf_counter() - read_done
        return data, valid

    @property
    def raw_dtype(self) -> np.dtype:
        """The dtype of :meth:`read_raw`'s values: the scene's own (the selected bands')."""
        return np.dtype(self.ds.dtypes[self.bands[0] - 1])

    def read_raw(self, row: int, col: int, tile: int, out: np.ndarray) -> bool:
        """Read the (C, tile, tile) window at (``row``, ``col``) in the scene's own dtype into ``out`` (no
        normalisation: :class:`rrsis_cli.inference.BatchNormaliser` does it for a whole batch on the device);
        outside the scene is 0, as in :meth:`read`. Returns whether the window holds any valid pixel
        (:func:`valid_mask`), decided from the values alone where GDAL's masks are plain nodata values of an
        integer raster (the common case), so no mask is read."""
        from rasterio.windows import Window

        started = time.perf_counter()
        window = Window(col, row, tile, tile)
        inside = row >= 0 and col >= 0 and row + tile <= self.ds.height and col + tile <= self.ds.width
        with read_errors(self.path, "read", window, self.ds):
            if inside:
                self.ds.read(self.bands, window=window, out=out)
                part, inner = out, window
            else:
                out[:] = 0
                r0, c0 = max(row, 0), max(col, 0)
                r1, c1 = min(row + tile, self.ds.height), min(col + tile, self.ds.width)
                if r1 <= r0 or c1 <= c0:
                    self.seconds["read"] += time.perf_counter() - started
                    return False
                inner = Window(c0, r0, c1 - c0, r1 - r0)
                part = self.ds.read(self.bands, window=inner)
                out[:, r0 - row:r1 - row, c0 - col:c1 - col] = part
            has_data = self.has_data(part, inner)
        self.seconds["read"] += time.perf_counter() - started
        return has_data

    @property
    def values_decide_data(self) -> bool:
        """Whether a window's values alone say if it holds valid pixels (integer rasters whose only masks are
        nodata values, and integer rasters without any mask): no mask is read."""
        return self.raw_dtype.kind in "ui" and (self.mask_kind == "all_valid" or self.nodata_values is not None)

    def has_data(self, raw: np.ndarray, window, valid: np.ndarray | None = None) -> bool:
        """Whether ``raw`` (the values of ``window``) holds a valid pixel: a pixel is valid where any selected
        band is not its nodata value (:attr:`values_decide_data`), else as :func:`valid_mask` says (``valid``:
        that mask when the caller has it)."""
        if raw.dtype.kind in "ui":
            if self.mask_kind == "all_valid":
                return True
            if self.nodata_values is not None:
                return any(bool((band != nodata).any()) for band, nodata in zip(raw, self.nodata_values, strict=True))
        if valid is None:
            valid = self.valid(window, data=raw)
        return bool(valid.any())

    def _integer_nodata(self) -> list[int] | None:
        """The selected bands' nodata values when every band's mask is its nodata value alone (GDAL's
        GMF_NODATA) and each is an integer of the band's dtype; else None."""
        from rasterio.enums import MaskFlags

        if self.dtype.kind not in "ui":
            return None
        flags = [self.ds.mask_flag_enums[b - 1] for b in self.bands]
        values = [self.ds.nodatavals[b - 1] for b in self.bands]
        if not all(f == [MaskFlags.nodata] for f in flags) or any(v is None for v in values):
            return None
        info = np.iinfo(self.raw_dtype)
        if not all(float(v).is_integer() and info.min <= v <= info.max for v in values):
            return None
        return [int(v) for v in values]

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """(C, h, w) raw values -> (3, h, w) float in [0, 1] with the scene-level range (one band is repeated).
        Values are clipped to the range before scaling (an extreme nodata value such as -3.4e38 cannot
        overflow); NaN becomes 0 (such pixels are nodata, see :func:`valid_mask`)."""
        lo, hi = self.lo[:, None, None], self.hi[:, None, None]
        data = (np.clip(raw.astype(np.float32), lo, hi) - lo) / (hi - lo)
        if raw.dtype.kind == "f":
            data = np.nan_to_num(data, nan=0.0)
        if data.shape[0] < 3:
            data = np.repeat(data[:1], 3, axis=0)
        return data[:3]

    def valid(self, window=None, boundless: bool = False, out_shape: tuple[int, int] | None = None,
              data: np.ndarray | None = None) -> np.ndarray:
        """(h, w) bool: valid pixels of the selected bands (:func:`valid_mask`); all-valid rasters read nothing
        (float rasters read their values, for NaN, unless ``data`` has them)."""
        with read_errors(self.path, "reading the valid mask", window, self.ds):
            return valid_mask(self.ds, self.bands, window, boundless, out_shape, self.mask_kind, data)

    @property
    def fetches_whole_rows(self) -> bool:
        """A remote scene processed on its own pixel grid (the source, or an AOI's window of it): a tile row read
        whole gives the same values as its tiles read one by one, so its read threads share a
        :class:`WholeRowReader`. Not for a grid warped (GCPs, RPCs) or resampled (``--gsd``) on the fly, where
        GDAL's warper gives values that depend on the window read."""
        _, gsd, _, _, _, _ = self._args
        return isinstance(self.path, RemotePath) and not self.georeference.warped and gsd is None

    def clone(self, whole_rows: bool = False) -> SceneReader | WholeRowReader:
        """A reader for one read thread: another reader of the same scene with its own dataset handles (GDAL
        handles are not shared between threads), the same grid, bands and normalisation (the statistics are not
        recomputed). Its set-up messages are not repeated.

        ``whole_rows`` (the caller reads every tile of each tile row it reads) and a remote scene on its own grid
        (:attr:`fetches_whole_rows`): the one :class:`WholeRowReader` of this reader instead, shared by every
        thread until it is closed, so that no byte is fetched twice."""
        if whole_rows and self.fetches_whole_rows:
            if self._whole_rows is None or self._whole_rows.closed:
                self._whole_rows = WholeRowReader(self.clone())
            return self._whole_rows
        bands, gsd, _, rpc_height, rpc_dem, aoi = self._args
        with console.silenced():
            return SceneReader(self.path, bands, gsd, (self.lo.tolist(), self.hi.tolist()), rpc_height, rpc_dem,
                               aoi)

    def close(self) -> None:
        if self._whole_rows is not None:
            self._whole_rows.close()
        for dataset in reversed(self._opened):
            dataset.close()
        self._source.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class WholeRowReader:
    """The tile reads of a remote scene, shared by every read thread (:meth:`SceneReader.clone` with
    ``whole_rows``): the tiles of one tile row are cut from one read of the rows they span over the scene's whole
    width, fetched once on this object's own dataset handle (its own :class:`SceneReader`), one GDAL read at a
    time. GDAL then asks for those rows' blocks in a few large ranges, and the blocks that two tile rows share (the
    overlap) are still in its block cache for the second: every byte of the scene's full resolution is fetched
    once. Threads that need a row being fetched wait for it; a row already fetched is read without waiting.

    Memory: the last :attr:`KEEP` rows fetched, ``tile x width x bands`` values each (plus a boolean mask of the
    same size when the values alone do not say which pixels are valid), e.g. 2 x 15 MB for a 10000-px-wide RGB
    uint8 scene with 512-px tiles. Values and validity are those of :meth:`SceneReader.read_raw` on the same
    windows, bit for bit (the scene's own grid: no resampling)."""

    KEEP = 2  # rows fetched and kept: the one being cut into tiles and the next

    def __init__(self, reader: SceneReader):
        self.reader = reader
        self.closed = False
        self._table = threading.Lock()  # guards ``_rows``
        self._gdal = threading.Lock()  # one GDAL call at a time on the handle
        self._rows: OrderedDict[tuple[int, int], Future] = OrderedDict()

    @property
    def raw_dtype(self) -> np.dtype:
        return self.reader.raw_dtype

    def read_raw(self, row: int, col: int, tile: int, out: np.ndarray) -> bool:
        """As :meth:`SceneReader.read_raw`: the (C, tile, tile) window at (``row``, ``col``) into ``out`` (0
        outside the scene); whether it holds a valid pixel."""
        from rasterio.windows import Window

        ds = self.reader.ds
        r0, r1 = max(row, 0), min(row + tile, ds.height)
        c0, c1 = max(col, 0), min(col + tile, ds.width)
        if r1 <= r0 or c1 <= c0:
            out[:] = 0
            return False
        raw, valid = self._row(r0, r1)
        part = raw[:, :, c0:c1]
        if (r0, r1, c0, c1) == (row, row + tile, col, col + tile):
            out[:] = part
        else:
            out[:] = 0
            out[:, r0 - row:r1 - row, c0 - col:c1 - col] = part
        return self.reader.has_data(part, Window(c0, r0, c1 - c0, r1 - r0),
                                     None if valid is None else valid[:, c0:c1])

    def _row(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, valid mask or None) of rows ``r0..r1`` over the whole width: fetched by the first thread
        that asks, awaited by the others; the :attr:`KEEP` latest are kept."""
        key = (r0, r1)
        with self._table:
            entry = self._rows.get(key)
            fetch = entry is None
            if fetch:
                entry = self._rows[key] = Future()
                while len(self._rows) > self.KEEP:
                    self._rows.popitem(last=False)
        if fetch:
            try:
                entry.set_result(self._fetch(r0, r1))
            except BaseException as exc:
                with self._table:
                    if self._rows.get(key) is entry:
                        del self._rows[key]
                entry.set_exception(exc)
                raise
        return entry.result()

    def _fetch(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        reader = self.reader
        window = Window(0, r0, reader.ds.width, r1 - r0)
        with self._gdal, read_errors(reader.path, "read", window, reader.ds):
            raw = reader.ds.read(reader.bands, window=window)
            valid = None if reader.values_decide_data else reader.valid(window, data=raw)
        return raw, valid

    def close(self) -> None:
        """Close the handle (once: every thread's clone is this object)."""
        with self._table:
            if self.closed:
                return
            self.closed = True
            self._rows.clear()
        self.reader.close()


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

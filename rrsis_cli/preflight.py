"""What ``rrsis predict`` checks in the scenes' headers before any model is loaded: the band selection and the
stretch against each scene's band count, ``--gsd`` against its CRS, the band order used for scenes whose bands
carry no colour interpretation; and the numbers of a dry run (size after ``--gsd``, tiles, nodata fraction from a
decimated mask read, disk needed). Headers are cheap to read (no pixels except the decimated mask of a dry run).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rrsis_cli import console
from rrsis_cli.errors import UsageError
from rrsis_cli.inputs import Scene
from rrsis_cli.scene import default_bands, gsd_shape

RGB = ("red", "green", "blue")
NO_COLOUR = {"gray", "undefined"}
NODATA_PREVIEW = 256  # longest side of the mask read that estimates the nodata fraction of a dry run


@dataclass
class SceneHeader:
    """One scene's header; ``error`` when it cannot be opened (the scene then fails when it is processed, with its
    own message, and the other scenes run)."""

    scene: Scene
    width: int = 0
    height: int = 0
    count: int = 0
    dtype: str | None = None
    crs: str | None = None
    georeference: str = "transform"  # or gcps / rpcs (warped onto a projected grid when read) / none
    projected: bool = False  # the grid the scene is processed on is projected (--gsd applies)
    colorinterp: list[str] = field(default_factory=list)
    bands: list[int] = field(default_factory=list)  # the bands that will be read
    processed: tuple[int, int] = (0, 0)  # (width, height) after --gsd (a warped scene: its own size, approximate)
    nodata_fraction: float | None = None
    outside_aoi: bool = False  # --aoi misses the scene: skipped (known here for scenes with a geotransform)
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The scene's entry in the manifest's ``inputs``."""
        if self.error:
            return {**self.scene.as_dict(), "error": self.error}
        return {**self.scene.as_dict(), "width": self.width, "height": self.height,
                "processed_width": self.processed[0], "processed_height": self.processed[1], "bands": self.bands,
                "band_count": self.count, "dtype": self.dtype, "crs": self.crs, "georeference": self.georeference}


def read_header(scene: Scene, bands: list[int] | None, gsd: float | None, nodata: bool = False,
                aoi=None) -> SceneHeader:
    """The header of ``scene`` (and, with ``nodata``, the nodata fraction of a decimated mask read). With an
    ``aoi`` (:mod:`rrsis_cli.aoi`) and a scene placed by a geotransform without ``--gsd``, ``processed`` is the
    AOI's window and ``outside_aoi`` tells a scene it misses (warped or resampled scenes learn theirs when read)."""
    import rasterio

    from rrsis_cli.remote import redact
    from rrsis_cli.scene import georeference, open_raster, quiet_georeference_warning, valid_mask
    from rrsis_cli.vsi_cache import forget_if_replaced

    header = SceneHeader(scene)
    forget_if_replaced(scene.path, scene.fingerprint)
    try:
        with quiet_georeference_warning():  # the reader reports a missing georeference itself, once
            ds = open_raster(scene.path)
    except (rasterio.errors.RasterioIOError, OSError) as exc:
        header.error = redact(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        return header
    with ds:
        if ds.count == 0 or ds.width == 0 or ds.height == 0:
            header.error = "no raster bands" if ds.count == 0 else "raster has zero size"
            return header  # the reader fails this scene with the full story; the others run
        header.width, header.height, header.count = ds.width, ds.height, ds.count
        header.dtype = ds.dtypes[0]
        geo = georeference(ds)
        header.georeference, header.crs = geo.method, geo.crs
        if geo.method == "transform":
            header.projected = bool(ds.crs) and not ds.crs.is_geographic
        else:  # GCPs / RPCs: warped when read onto a projected grid (their CRS if projected, else UTM)
            header.projected = geo.method != "none"
        header.colorinterp = [c.name for c in ds.colorinterp]
        header.bands = list(bands) if bands else default_bands(ds.count)
        plain = geo.method == "transform" and header.projected
        header.processed = gsd_shape(ds.bounds, gsd) if gsd and plain else (ds.width, ds.height)
        if aoi is not None and geo.method == "transform" and ds.crs is not None and not gsd:
            from rrsis_cli.aoi import aoi_window
            from rrsis_cli.errors import OutsideAoi

            try:
                window = aoi_window(aoi, ds, scene.path)
                header.processed = (int(window.width), int(window.height))
            except OutsideAoi:
                header.outside_aoi = True
        if nodata and max(header.bands) <= ds.count and min(header.bands) >= 1:
            scale = min(1.0, NODATA_PREVIEW / max(ds.width, ds.height))
            shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
            try:
                header.nodata_fraction = float(1.0 - valid_mask(ds, header.bands, out_shape=shape).mean())
            except rasterio.errors.RasterioError:
                header.nodata_fraction = None  # unreadable pixels: the run reports them
    return header


def check_header(header: SceneHeader, bands: list[int] | None, gsd: float | None,
                 stretch: tuple[list[float], list[float]] | None) -> None:
    """UsageError (exit 2) naming the option and the scene when an option cannot apply to it."""
    if header.error:
        return
    path = header.scene.path
    if bands and (max(bands) > header.count or min(bands) < 1):
        raise UsageError(f"--bands {','.join(map(str, bands))}: the scene has {header.count} band(s) "
                         f"(1..{header.count})", path)
    if stretch is not None and len(stretch[0]) != len(header.bands):
        raise UsageError(f"--stretch gives {len(stretch[0])} value(s) per end but {len(header.bands)} band(s) are "
                         f"read from the scene ({','.join(map(str, header.bands))})", path)
    if gsd is not None and not header.projected:
        raise UsageError(f"--gsd needs a projected CRS in metres; the scene has {header.crs or 'no CRS'} "
                         "(reproject it first)", path)


def band_order_note(header: SceneHeader) -> str | None:
    """Why the default band order (first three bands as red, green, blue) may be wrong for this scene, or None
    when its first bands are red, green, blue (or it has one band)."""
    if header.error or header.count < 2:
        return None
    used = [header.colorinterp[b - 1] if b <= len(header.colorinterp) else "undefined" for b in header.bands]
    if tuple(used) == RGB:
        return None
    numbers = ",".join(map(str, header.bands))
    if len(header.bands) < 3:
        return f"band 1 ({used[0]}) is read as grey (repeated into red, green, blue); choose with --bands"
    if set(used) <= NO_COLOUR:
        return (f"bands carry no colour interpretation ({', '.join(used)}); bands {numbers} are read as red, "
                "green, blue: choose with --bands")
    note = f"bands {numbers} ({', '.join(used)}) are read as red, green, blue"
    if all(c in header.colorinterp for c in RGB):
        follow = ",".join(str(header.colorinterp.index(c) + 1) for c in RGB)
        return note + f"; --bands {follow} follows the file's colour interpretation"
    return note + "; choose with --bands"


def warn_band_order(headers: list[SceneHeader]) -> None:
    """One warning line per distinct note; scenes that share a note are counted, not listed."""
    groups: dict[str, list[str]] = defaultdict(list)
    for header in headers:
        note = band_order_note(header)
        if note:
            groups[note].append(str(header.scene.path))
    for note, paths in groups.items():
        more = f" (and {len(paths) - 1} more scene(s))" if len(paths) > 1 else ""
        console.warn(f"{paths[0]}{more}: {note}")


def scan_scenes(scenes: list[Scene], bands: list[int] | None, gsd: float | None,
                stretch: tuple[list[float], list[float]] | None, nodata: bool = False,
                aoi=None) -> list[SceneHeader]:
    """Every scene's header, checked against the options (UsageError), with the band-order warnings."""
    headers = [read_header(scene, bands, gsd, nodata, aoi) for scene in scenes]
    for header in headers:
        check_header(header, bands, gsd, stretch)
    if not bands:
        warn_band_order(headers)
    return headers


def disk_estimate(width: int, height: int, tiles: int, tile: int, pairs: int, save_prob: bool,
                  coarse_size: int | None = None) -> dict[str, int]:
    """Upper bounds in bytes (before compression) of what ``pairs`` (scene, prompt) pairs write: uint8 mask (and
    probability) rasters with their overviews (+1/3), the optional coarse map, and the tile journal of the pair
    that is running (float32 tiles; removed when the pair finishes). Vectors are not counted."""
    raster = width * height * 4 // 3
    per_pair = raster * (2 if save_prob else 1) + (coarse_size or 0) ** 2 * 4 // 3
    journal = tiles * tile * tile * 4 if pairs else 0
    return {"outputs": pairs * per_pair, "journal": journal, "total": pairs * per_pair + journal}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover

"""Vector polygons of a predicted mask, streamed to one file window by window.

Each window of the mask is labelled (4-connected, as GDAL's polygonize) and polygonised on its own; a polygon that
does not touch a seam with another window is final there and goes straight to the output file. A region that
touches a seam is kept only as numbers (its window and label, pixel count, probability sum, first pixel in
raster order) and its pixels are written (as 1) into a temporary tiled raster; labels that touch across a seam
are joined in a graph, and at the end GDAL polygonises that raster in one pass, reading it row by row: one
polygon per seam-crossing region (distinct regions never touch), each matched to its group of labels by its
first pixel. So memory holds the polygons of a few windows or one batch of regions, never all polygons: it grows
with the window size (and GDAL's state for the regions crossing the row it is at), not with the number of
polygons.

Work is split in two threads: the calling thread reads, labels and polygonises windows (GDAL's polygonize and
rasterio's Python coordinates hold the GIL, so more threads would not help there), a second thread encodes the
finished polygons (reprojection and numpy formatting release the GIL). ``workers`` > 1 (the default for large
masks when a second CPU is idle, :func:`default_workers`) adds plain subprocesses that make the windows' final polygons,
each for a run of rows of windows, encoded into a temporary Arrow spool, while this process labels the windows
and makes the seam-crossing regions; the spools are then copied into the file in window order, then the
regions follow, so the bytes do not depend on the number of workers.

Formats: GeoJSON follows RFC 7946 (EPSG:4326 lon/lat, no ``crs`` member, exterior rings counter-clockwise and
holes clockwise, coordinates rounded to :data:`GEOJSON_PRECISION` decimals); its text is written here, in the
layout and number formatting of GDAL's GeoJSON writer (properties formatted by GDAL itself, coordinates by
:mod:`rrsis_cli.geojson_text`). GeoPackage and FlatGeobuf are written by GDAL from a stream of Arrow batches,
GeoParquet by one pyarrow writer; they keep the scene's CRS. Every format has one layer, :data:`VECTOR_LAYER`.
Files are written under a temporary name that keeps the extension and renamed into place.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.outputs import temporary_path

VECTOR_DRIVERS = {"geojson": ("GeoJSON", "geojson"), "gpkg": ("GPKG", "gpkg"), "fgb": ("FlatGeobuf", "fgb"),
                  "parquet": (None, "parquet")}
VECTOR_LAYER = "mask"  # the layer name in every vector format (and the GeoJSON ``name`` member)
GEOJSON_PRECISION = 7  # decimals of a degree in GeoJSON coordinates: 1e-7 degree is about 1 cm
FIELDS = ("prompt", "score", "pixels", "area_m2")
ENCODE_AHEAD = 2  # chunks of polygons waiting for the encoding thread
GROUP_BATCH_COUNT = 128  # seam-crossing regions are encoded and written in batches of this many
PARALLEL_MIN_PIXELS = 4096 * 4096  # masks this large get a window worker by default (when a CPU is idle)
_GEOJSON_NULL_TAIL = b'"geometry": null }'


def check_vector_format(vector_format: str) -> None:
    """Fail (UsageError) when ``vector_format`` is unknown or its writer is not installed: called before any
    model loads or tile runs, so a run never computes everything to fail at the last step."""
    from rrsis_cli.errors import UsageError

    if vector_format not in VECTOR_DRIVERS:
        raise UsageError(f"--vector-format must be one of {', '.join(VECTOR_DRIVERS)}")
    driver, _ = VECTOR_DRIVERS[vector_format]
    if driver is None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise UsageError("--vector-format parquet needs the pyarrow package (pip install pyarrow)") from exc
        return
    import pyogrio

    if driver not in pyogrio.list_drivers(write=True):
        raise UsageError(f"--vector-format {vector_format}: the GDAL of this installation cannot write {driver}")


def horizontal_crs(crs):
    """The scene's CRS as a pyproj CRS, reduced to its horizontal part when it is compound (e.g. UTM + a
    vertical datum); None stays None."""
    if crs is None:
        return None
    from pyproj import CRS

    proj = CRS.from_wkt(crs.to_wkt()) if hasattr(crs, "to_wkt") else CRS.from_user_input(crs)
    if proj.is_compound:
        horizontal = [sub for sub in proj.sub_crs_list if sub.is_projected or sub.is_geographic]
        if horizontal:
            return horizontal[0]
    return proj


def metric_crs(crs, bounds: tuple[float, float, float, float]):
    """A CRS in which areas and tolerances are in metres for features within ``bounds`` (in ``crs``): ``crs``
    itself when projected, else the local UTM zone (as geopandas' ``estimate_utm_crs`` picks it); None when
    neither works (a geographic CRS of another celestial body)."""
    if crs.is_projected:
        return crs
    import geopandas as gpd
    from pyproj import Transformer
    from shapely.geometry import box

    try:
        utm = gpd.GeoSeries([box(*bounds)], crs=crs).estimate_utm_crs()
        Transformer.from_crs(crs, utm, always_xy=True)  # another celestial body: UTM zones of the Earth fail
        return utm
    except Exception:  # noqa: BLE001 - pyproj raises RuntimeError/CRSError/ProjError for bodies without UTM zones
        return None


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class VectorJob:
    """Everything a window needs, as plain values (sent to worker processes)."""

    mask_path: str
    prob_path: str
    block: int
    prompt: str
    vector_format: str
    min_area: float
    simplify: float
    crs_wkt: str | None  # the scene's horizontal CRS (None: pixel space)
    metric_wkt: str | None  # metres for areas and --simplify (None: no metric CRS, areas are null)
    pixel_area_m2: float | None  # when the scene CRS is projected: area of a pixel in square metres
    output_wkt: str | None  # the CRS of the written coordinates (EPSG:4326 for RFC 7946 GeoJSON)
    geojson_options: tuple[tuple[str, str], ...] = ()
    width: int = 0
    height: int = 0


@dataclass
class Rings:
    """Polygons as ragged arrays (shapely's ``to_ragged_array`` layout) with their pixel statistics."""

    coords: np.ndarray  # (n, 2) float64
    ring_offsets: np.ndarray  # (rings + 1,) int64
    polygon_offsets: np.ndarray  # (polygons + 1,) int64
    pixels: np.ndarray  # (polygons,) int64
    prob_sums: np.ndarray  # (polygons,) float64

    def __len__(self) -> int:
        return len(self.polygon_offsets) - 1


@dataclass
class Encoded:
    """Features of one chunk in the output format: GeoJSON feature lines, or an Arrow record batch."""

    count: int
    lines: list[bytes] = field(default_factory=list)
    batch: Any = None

    def __len__(self) -> int:
        return self.count


@dataclass
class WindowResult:
    """One window: its final features, and the seam-touching labels as numbers only."""

    row: int
    col: int
    features: Encoded | Rings  # encoded in a worker process, or the polygons for the encoding thread
    polygons: int  # polygons built in this window (final or not)
    seam_labels: np.ndarray  # labels that touch a seam, ascending
    seam_pixels: np.ndarray
    seam_prob_sums: np.ndarray
    edges: dict[str, np.ndarray]  # "top"/"bottom"/"left"/"right" -> labels along that edge (seam edges only)
    seam_top_left: np.ndarray  # per seam label: its first pixel (see _top_left_keys)
    seam_mask: np.ndarray | None  # uint8, 1 on the pixels of seam labels (None: no seam label)


def windows_of(width: int, height: int, block: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of each window, row by row."""
    return [(row, col, min(block, height - row), min(block, width - col))
            for row in range(0, height, block) for col in range(0, width, block)]


def plan_job(mask_path: Path, prob_path: Path, prompt: str, vector_format: str, min_area: float,
             simplify: float, block: int) -> VectorJob:
    """The CRSs and constants of a vectorisation: the metric CRS (from the bounds of the mask's foreground when
    the scene is geographic) and the CRS the file is written in."""
    import rasterio
    from pyproj import CRS

    with rasterio.open(mask_path) as ds:
        crs = horizontal_crs(ds.crs)
        transform, width, height = ds.transform, ds.width, ds.height
        metric = pixel_area = None
        if crs is not None:
            bounds = _foreground_bounds(ds, block) if not crs.is_projected else None
            if crs.is_projected:
                metric = crs
                pixel_area = abs(transform.a * transform.e) * crs.axis_info[0].unit_conversion_factor ** 2
            elif bounds is not None:
                metric = metric_crs(crs, bounds)
    output = crs
    options: dict[str, str] = {}
    if vector_format == "geojson":
        if crs is not None and _expressible_in_wgs84(crs, transform, width, height):
            output = CRS.from_epsg(4326)
            options["RFC7946"] = "YES"  # no crs member; rings are oriented here
        elif crs is not None:
            console.warn(f"{Path(mask_path).name}: the scene's CRS ({crs.name}) cannot be expressed in EPSG:4326; "
                         "GeoJSON written in the scene's CRS, named by a 'crs' member (not RFC 7946)")
        options["COORDINATE_PRECISION"] = str(GEOJSON_PRECISION)
    return VectorJob(str(mask_path), str(prob_path), block, prompt, vector_format, min_area, simplify,
                     crs.to_wkt() if crs is not None else None, metric.to_wkt() if metric is not None else None,
                     pixel_area, output.to_wkt() if output is not None else None, tuple(options.items()),
                     width, height)


def _foreground_bounds(ds, block: int) -> tuple[float, float, float, float] | None:
    """Bounds (in the scene's CRS) of the pixels equal to 1: the bounds of all polygons; None when there are
    none."""
    rows, cols = [], []
    for row, col, h, w in windows_of(ds.width, ds.height, block):
        from rasterio.windows import Window

        hit = ds.read(1, window=Window(col, row, w, h)) == 1
        if hit.any():
            r, c = np.nonzero(hit.any(axis=1))[0], np.nonzero(hit.any(axis=0))[0]
            rows += [row + r[0], row + r[-1] + 1]
            cols += [col + c[0], col + c[-1] + 1]
    if not rows:
        return None
    corners = [ds.transform @ (c, r) for r in (min(rows), max(rows)) for c in (min(cols), max(cols))]
    xs, ys = zip(*corners, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _expressible_in_wgs84(crs, transform, width: int, height: int) -> bool:
    from pyproj import Transformer

    try:
        x, y = transform @ (width / 2, height / 2)
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y, errcheck=True)
        return bool(np.isfinite(lon) and np.isfinite(lat))
    except Exception:  # noqa: BLE001 - pyproj.ProjError: e.g. a CRS of another celestial body
        return False


# ------------------------------------------------------------------------------------------------ polygons
def rings_from_shapes(found: list, pixels: np.ndarray, prob_sums: np.ndarray) -> Rings:
    """Ragged arrays of ``rasterio.features.shapes`` output (GeoJSON-like geometry, label value) with the pixel
    count and probability sum of each label."""
    from itertools import chain

    polygons = [geom["coordinates"] for geom, _ in found]
    rings = list(chain.from_iterable(polygons))
    ring_lengths = np.fromiter(map(len, rings), np.int64, len(rings))
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(rings)), np.float64, 2 * int(ring_lengths.sum()))
    labels = np.fromiter((int(value) for _, value in found), np.int64, len(found))
    return Rings(flat.reshape(-1, 2), _offsets(ring_lengths), _offsets(np.fromiter(map(len, polygons), np.int64,
                                                                                      len(polygons))),
                 pixels[labels].astype(np.int64), prob_sums[labels].astype(np.float64))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def polygons_from_rings(rings: Rings) -> np.ndarray:
    import shapely

    if not len(rings):
        return np.array([], dtype=object)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, rings.coords,
                                     (rings.ring_offsets, rings.polygon_offsets))


def select(rings: Rings, keep: np.ndarray) -> Rings:
    """The polygons where ``keep`` is true."""
    if keep.all():
        return rings
    ring_counts = np.diff(rings.polygon_offsets)[keep]
    ring_index = _ranges(rings.polygon_offsets[:-1][keep], ring_counts)
    lengths = np.diff(rings.ring_offsets)[ring_index]
    vertex_index = _ranges(rings.ring_offsets[:-1][ring_index], lengths)
    return Rings(rings.coords[vertex_index], _offsets(lengths), _offsets(ring_counts), rings.pixels[keep],
                 rings.prob_sums[keep])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each pair."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - _offsets(lengths)[:-1], lengths)
    return np.arange(total, dtype=np.int64) + shift


def _concat(parts: list[Rings]) -> Rings:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Rings(np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64),
                     np.zeros(0))
    ring_lengths = np.concatenate([np.diff(p.ring_offsets) for p in parts])
    ring_counts = np.concatenate([np.diff(p.polygon_offsets) for p in parts])
    return Rings(np.concatenate([p.coords for p in parts]), _offsets(ring_lengths), _offsets(ring_counts),
                 np.concatenate([p.pixels for p in parts]), np.concatenate([p.prob_sums for p in parts]))


def _with_coords(rings: Rings, coords: np.ndarray) -> Rings:
    return Rings(coords, rings.ring_offsets, rings.polygon_offsets, rings.pixels, rings.prob_sums)


@lru_cache(maxsize=16)
def _transformer(source_wkt: str, target_wkt: str):
    """The transformer between two CRSs (as geopandas' ``to_crs`` makes it: always_xy), None when they are the
    same CRS. Cached: every chunk of every window asks."""
    from pyproj import CRS, Transformer

    source, target = CRS.from_wkt(source_wkt), CRS.from_wkt(target_wkt)
    return None if source.is_exact_same(target) else Transformer.from_crs(source, target, always_xy=True)


def _transformed(rings: Rings, source_wkt: str, target_wkt: str) -> Rings:
    """Coordinates reprojected point by point, as geopandas' ``to_crs`` does."""
    transformer = _transformer(source_wkt, target_wkt)
    if transformer is None or not len(rings.coords):
        return rings
    x, y = transformer.transform(rings.coords[:, 0], rings.coords[:, 1])
    return _with_coords(rings, np.column_stack([x, y]))


def _from_polygons(polygons: np.ndarray, pixels: np.ndarray, prob_sums: np.ndarray) -> Rings:
    import shapely

    if not len(polygons):
        return _concat([])
    kind, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(polygons)
    if kind != shapely.GeometryType.POLYGON:
        raise ValueError(f"simplified polygons became {kind.name}")
    return Rings(coords, ring_offsets.astype(np.int64), polygon_offsets.astype(np.int64), pixels, prob_sums)


def oriented(rings: Rings) -> Rings:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946 section 3.1.6): a ring of the wrong sense is
    reversed (its first vertex stays first, as shapely's ``orient`` does)."""
    if not len(rings.coords):
        return rings
    x, y = rings.coords[:, 0], rings.coords[:, 1]
    starts, ends = rings.ring_offsets[:-1], rings.ring_offsets[1:]
    cross = np.zeros(len(x))
    cross[:-1] = x[:-1] * y[1:] - x[1:] * y[:-1]
    last = ends - 1  # the closing vertex pairs with nothing inside its ring
    cross[last] = 0.0
    area = np.add.reduceat(cross, starts)
    exterior = np.zeros(len(starts), bool)
    exterior[rings.polygon_offsets[:-1]] = True
    flip = np.where(exterior, area < 0, area > 0)
    if not flip.any():
        return rings
    index = np.arange(len(x))
    lengths = ends - starts
    flipped = np.repeat(flip, lengths)
    ring_start = np.repeat(starts, lengths)
    ring_end = np.repeat(ends, lengths)
    index = np.where(flipped, ring_start + ring_end - 1 - index, index)
    return _with_coords(rings, rings.coords[index])


# ------------------------------------------------------------------------------------------------ encoding
def encode(job: VectorJob, rings: Rings) -> Encoded:
    """Properties (score, pixels, area_m2), --min-area, --simplify, reprojection to the written CRS, then the
    format's features: as ``vectorise`` did through a GeoDataFrame, without one."""
    import shapely

    score = rings.prob_sums / np.maximum(rings.pixels, 1)
    if job.metric_wkt is None:
        area = np.full(len(rings), np.nan)
    elif job.pixel_area_m2 is not None:
        area = rings.pixels * job.pixel_area_m2
    else:
        area = shapely.area(polygons_from_rings(_transformed(rings, job.crs_wkt, job.metric_wkt)))
    if job.metric_wkt is not None and job.min_area > 0:
        keep = area >= job.min_area
        rings, score, area = select(rings, keep), score[keep], area[keep]
    if job.metric_wkt is not None and job.simplify > 0 and len(rings):
        metric = _transformed(rings, job.crs_wkt, job.metric_wkt)
        simple = shapely.simplify(polygons_from_rings(metric), job.simplify, preserve_topology=True)
        rings = _transformed(_from_polygons(simple, rings.pixels, rings.prob_sums), job.metric_wkt, job.crs_wkt)
    if job.output_wkt is not None and job.crs_wkt is not None:
        rings = _transformed(rings, job.crs_wkt, job.output_wkt)
    if job.vector_format == "geojson":
        return Encoded(len(rings), lines=_geojson_lines(job, oriented(rings), score, area))
    return Encoded(len(rings), batch=_arrow_batch(job, rings, score, area))


def _field_data(job: VectorJob, count: int, score: np.ndarray, pixels: np.ndarray, area: np.ndarray) -> list:
    prompts = np.empty(count, dtype=object)
    prompts[:] = job.prompt
    return [prompts, score.astype(np.float64), pixels.astype(np.int64), area.astype(np.float64)]


def _geojson_lines(job: VectorJob, rings: Rings, score: np.ndarray, area: np.ndarray) -> list[bytes]:
    """One line per feature: GDAL writes the properties (its own number formatting), the geometry is ours;
    a polygon that crosses the antimeridian is written whole by GDAL, which splits it (RFC 7946 3.1.9)."""
    from rrsis_cli.geojson_text import polygon_texts

    if not len(rings):
        return []
    fields = _field_data(job, len(rings), score, rings.pixels, area)
    lines = _feature_lines(_gdal_geojson(job, fields), len(rings))
    geometries = polygon_texts(rings.coords, rings.ring_offsets, rings.polygon_offsets)
    out = []
    for line, geometry in zip(lines, geometries, strict=True):
        if not line.endswith(_GEOJSON_NULL_TAIL):
            raise RuntimeError(f"unexpected GeoJSON feature from GDAL: {line[:80]!r}")
        out.append(line[:-len(b"null }")] + geometry + b" }")
    crossing = np.flatnonzero(_crosses_antimeridian(job, rings))
    if len(crossing):
        keep = np.zeros(len(rings), bool)
        keep[crossing] = True
        import shapely

        wkb = shapely.to_wkb(polygons_from_rings(select(rings, keep)))
        whole = _gdal_geojson(job, [column[crossing] for column in fields], wkb)
        for i, line in zip(crossing, _feature_lines(whole, len(crossing)), strict=True):
            out[i] = line
    return out


def _feature_lines(text: bytes, count: int) -> list[bytes]:
    start = text.index(b'"features": [\n') + len(b'"features": [\n')
    return [line.rstrip(b",") for line in text[start:].split(b"\n")[:count]]


def _crosses_antimeridian(job: VectorJob, rings: Rings) -> np.ndarray:
    """Per polygon: does it span more than 180 degrees of longitude in RFC 7946 GeoJSON (so it crosses +-180)?"""
    if "RFC7946" not in dict(job.geojson_options) or not len(rings.coords):
        return np.zeros(len(rings), bool)
    starts = rings.ring_offsets[rings.polygon_offsets[:-1]]
    lon = rings.coords[:, 0]
    return np.maximum.reduceat(lon, starts) - np.minimum.reduceat(lon, starts) > 180.0


def _gdal_geojson(job: VectorJob, field_data: list | None, wkb: np.ndarray | None = None) -> bytes:
    """A GeoJSON FeatureCollection written by GDAL in memory: features of ``field_data`` (with null geometry
    unless ``wkb`` is given), or an empty Polygon layer (the header) when None."""
    import pyogrio.raw

    buffer = io.BytesIO()
    data = field_data if field_data is not None else [np.zeros(0, object), np.zeros(0), np.zeros(0, np.int64),
                                                      np.zeros(0)]
    if wkb is None:
        wkb = np.full(len(data[0]), None, dtype=object)
    pyogrio.raw.write(buffer, geometry=wkb, field_data=data, fields=list(FIELDS), driver="GeoJSON",
                      layer=VECTOR_LAYER, geometry_type="Polygon", crs=job.output_wkt,
                      layer_options=dict(job.geojson_options))
    return buffer.getvalue()


def _arrow_schema(job: VectorJob, geo_metadata: bool):
    import json

    import pyarrow as pa

    geometry = pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb"})
    fields = [pa.field("prompt", pa.string()), pa.field("score", pa.float64()), pa.field("pixels", pa.int64()),
              pa.field("area_m2", pa.float64()), geometry]
    if not geo_metadata:
        return pa.schema(fields)
    from pyproj import CRS

    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"]}
    column["crs"] = CRS.from_wkt(job.crs_wkt).to_json_dict() if job.crs_wkt is not None else None
    geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column},
           "creator": {"library": "rrsis"}}
    fields = [fields[0], fields[1], fields[2], fields[4].remove_metadata(), fields[3]]  # as geopandas wrote it
    return pa.schema(fields, metadata={b"geo": json.dumps(geo).encode()})


def _arrow_batch(job: VectorJob, rings: Rings, score: np.ndarray, area: np.ndarray):
    import pyarrow as pa
    import shapely

    prompts, score, pixels, area = _field_data(job, len(rings), score, rings.pixels, area)
    wkb = shapely.to_wkb(polygons_from_rings(rings)) if len(rings) else np.zeros(0, object)
    return pa.record_batch([pa.array(prompts, pa.string()), pa.array(score), pa.array(pixels),
                            pa.array(area, pa.float64(), from_pandas=True), pa.array(wkb, pa.binary())],
                           schema=_arrow_schema(job, geo_metadata=False))


# ------------------------------------------------------------------------------------------------ windows
def window_result(job: VectorJob, ds, prob_ds, window: tuple[int, int, int, int], encoded: bool = True,
                  final: bool = True, seams: bool = True) -> WindowResult:
    """Label one window: its final polygons (polygonised when ``final``; encoded, or as polygons) and, when
    ``seams``, its seam-touching labels summarised with the mask of their pixels (for the seam-region raster)."""
    from rasterio.features import shapes
    from rasterio.windows import Window
    from scipy.ndimage import label

    row, col, h, w = window
    win = Window(col, row, w, h)
    hit = ds.read(1, window=win) == 1
    sides = {"top": row > 0, "bottom": row + h < job.height, "left": col > 0, "right": col + w < job.width}
    if not hit.any():
        return _empty_result(row, col, {side: np.zeros(h if side in ("left", "right") else w, np.int32)
                                        for side, seam in sides.items() if seam})
    prob = prob_ds.read(1, window=win).astype(np.float64) / 254.0
    labels, count = label(hit)  # 4-connected, as rasterio's shapes(): one polygon per label
    pixels = np.bincount(labels.ravel(), minlength=count + 1)
    prob_sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count + 1)
    edges = {"top": labels[0, :], "bottom": labels[-1, :], "left": labels[:, 0], "right": labels[:, -1]}
    edges = {side: edges[side].astype(np.int32) for side, seam in sides.items() if seam}
    on_seam = np.zeros(count + 1, bool)
    for edge in edges.values():
        on_seam[edge] = True
    on_seam[0] = False
    seam_pixels = on_seam[labels]
    features: Encoded | Rings = Encoded(0)
    if final:
        found = list(shapes(labels.astype(np.int32, copy=False), mask=hit & ~seam_pixels,
                            transform=ds.window_transform(win)))
        rings = rings_from_shapes(found, pixels, prob_sums)
        features = encode(job, rings) if encoded else rings
    seam = np.flatnonzero(on_seam) if seams else np.zeros(0, np.int64)
    seam_mask = seam_pixels.view(np.uint8) if len(seam) else None
    return WindowResult(row, col, features, len(features) + len(seam), seam, pixels[seam].astype(np.int64),
                        prob_sums[seam], edges, _top_left_keys(labels, seam, row, col, job.width), seam_mask)


def _top_left_keys(labels: np.ndarray, seam: np.ndarray, row: int, col: int, width: int) -> np.ndarray:
    """Per label in ``seam``: its first pixel in raster order (top row, then left column), in scene pixels, as
    the key ``row * (width + 1) + col`` (so that the key of a polygon's vertex, whose column may be ``width``,
    orders the same way)."""
    from scipy.ndimage import find_objects

    keys = np.zeros(len(seam), np.int64)
    if not len(seam):
        return keys
    boxes = find_objects(labels, max_label=int(seam.max()))
    for i, value in enumerate(seam):
        rows, cols = boxes[value - 1]
        first = int(np.argmax(labels[rows.start, cols] == value))
        keys[i] = (row + rows.start) * (width + 1) + col + cols.start + first
    return keys


def _empty_result(row: int, col: int, edges: dict[str, np.ndarray]) -> WindowResult:
    return WindowResult(row, col, Encoded(0), 0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), edges,
                        np.zeros(0, np.int64), None)


def band_results(job: VectorJob, windows: list[tuple[int, int, int, int]],
                 encoded: bool = True) -> list[WindowResult]:
    """The results of a run of windows, with one pair of dataset handles."""
    import rasterio

    with rasterio.open(job.mask_path) as ds, rasterio.open(job.prob_path) as prob_ds:
        return [window_result(job, ds, prob_ds, window, encoded) for window in windows]


def _window_results(job: VectorJob, windows: list[tuple[int, int, int, int]], final: bool,
                    seams: bool) -> Iterator[WindowResult]:
    """Window results (polygons not encoded) with one pair of dataset handles."""
    import rasterio

    with rasterio.open(job.mask_path) as ds, rasterio.open(job.prob_path) as prob_ds:
        for window in windows:
            yield window_result(job, ds, prob_ds, window, encoded=False, final=final, seams=seams)


def window_shares(job: VectorJob, parts: int) -> list[tuple[int, int]]:
    """The windows (in :func:`windows_of` order) cut into ``parts`` runs of whole rows of windows, as even as
    rows allow: (first, end) indices of each run."""
    per_row = -(-job.width // job.block)
    rows = -(-job.height // job.block)
    cuts = [round(rows * i / parts) * per_row for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


# ------------------------------------------------------------------------------------------------ seams
class SeamGraph:
    """Seam-touching labels of all windows (as numbers) and which of them touch across a seam."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.windows: list[tuple[int, int]] = []  # per window with seam labels: its (row, col)
        self.labels: list[np.ndarray] = []  # ... its seam labels (nodes self.bases[i] + 0, 1, ...)
        self.bases: list[int] = []
        self.pixels: list[np.ndarray] = []
        self.prob_sums: list[np.ndarray] = []
        self.top_left: list[np.ndarray] = []  # ... the key of each label's first pixel (see _top_left_keys)
        self.a: list[np.ndarray] = []  # node pairs that touch
        self.b: list[np.ndarray] = []
        self.count = 0
        self._open: dict[tuple[int, int, str], np.ndarray] = {}  # bottom/right edges as node ids, until used

    def add(self, result: WindowResult) -> None:
        k = len(result.seam_labels)
        lut = np.full(int(result.seam_labels.max(initial=0)) + 1, -1, np.int64)
        lut[result.seam_labels] = self.count + np.arange(k)
        if k:
            self.windows.append((result.row, result.col))
            self.bases.append(self.count)
            self.labels.append(result.seam_labels)
            self.pixels.append(result.seam_pixels)
            self.prob_sums.append(result.seam_prob_sums)
            self.top_left.append(result.seam_top_left)
        self.count += k
        nodes = {side: np.where(edge > 0, lut[np.minimum(edge, len(lut) - 1)], -1)
                 for side, edge in result.edges.items()}
        for side, other_side, key in (("top", "bottom", (result.row - self.block, result.col)),
                                      ("left", "right", (result.row, result.col - self.block))):
            other = self._open.pop((*key, other_side), None)
            if side in nodes and other is not None:
                touch = (nodes[side] >= 0) & (other >= 0)
                self.a.append(nodes[side][touch])
                self.b.append(other[touch])
        for side in ("bottom", "right"):
            if side in nodes:
                self._open[(result.row, result.col, side)] = nodes[side]

    def assignment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The group of each node (groups numbered in order of their first node), and the pixel count and
        probability sum of each group."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if self.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        a = np.concatenate(self.a) if self.a else np.zeros(0, np.int64)
        b = np.concatenate(self.b) if self.b else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(self.count, self.count))
        n, group = connected_components(graph, directed=False)
        pixels = np.bincount(group, weights=np.concatenate(self.pixels), minlength=n).astype(np.int64)
        return group, pixels, np.bincount(group, weights=np.concatenate(self.prob_sums), minlength=n)

    def group_top_left(self, group: np.ndarray, groups: int) -> np.ndarray:
        """The key of each group's first pixel in raster order: the smallest key of its parts."""
        keys = np.full(groups, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(keys, group, np.concatenate(self.top_left))
        return keys


def _seam_raster(job: VectorJob, path: Path):
    """A tiled GeoTIFF over the scene, opened for writing: 1 on the pixels of regions that touch a seam, 0
    elsewhere (never written: sparse), which GDAL polygonises in one pass at the end."""
    import rasterio

    tile = job.block if job.block % 16 == 0 and job.block <= 1024 else 256  # windows write whole tiles
    with rasterio.open(job.mask_path) as src:
        crs, transform = src.crs, src.transform
    return rasterio.open(path, "w", driver="GTiff", width=job.width, height=job.height, count=1, dtype="uint8",
                         crs=crs, transform=transform, tiled=True, blockxsize=tile, blockysize=tile,
                         compress="packbits", sparse_ok=True)  # fast; long runs of 0 pack well


def _write_seam_window(seam_ds, result: WindowResult) -> None:
    from rasterio.windows import Window

    if result.seam_mask is not None:
        h, w = result.seam_mask.shape
        seam_ds.write(result.seam_mask, 1, window=Window(result.col, result.row, w, h))


def _polygon_top_left_keys(rings: Rings, transform, width: int) -> np.ndarray:
    """Per polygon: the smallest key (see :func:`_top_left_keys`) of its exterior ring's vertices, in scene
    pixels: the top-left corner of the region's first pixel in raster order."""
    inverse = ~transform
    exterior = rings.ring_offsets[rings.polygon_offsets[:-1]]
    ends = rings.ring_offsets[rings.polygon_offsets[:-1] + 1]
    index = _ranges(exterior, ends - exterior)
    x, y = rings.coords[index, 0], rings.coords[index, 1]
    cols = np.rint(inverse.a * x + inverse.b * y + inverse.c).astype(np.int64)
    rows = np.rint(inverse.d * x + inverse.e * y + inverse.f).astype(np.int64)
    return np.minimum.reduceat(rows * (width + 1) + cols, _offsets(ends - exterior)[:-1])


def _group_chunks(job: VectorJob, seams: SeamGraph, counters: dict, seam_path: Path) -> Iterator[Rings]:
    """The seam-crossing regions, polygonised in one pass of GDAL over the seam-region raster (read row by row
    from disk, never whole), in batches of :data:`GROUP_BATCH_COUNT`. Regions never touch (they are distinct
    4-connected regions), so one pixel value serves all; each polygon finds its group by its first pixel."""
    import rasterio
    from rasterio.features import shapes

    group, pixels, prob_sums = seams.assignment()
    counters["seam_groups"] = len(pixels)
    if not len(pixels):
        return
    top_left = seams.group_top_left(group, len(pixels))
    order = np.argsort(top_left)
    sorted_keys = top_left[order]
    written = 0
    with rasterio.open(seam_path) as ds:
        def batch(found: list) -> Rings:
            rings = rings_from_shapes(found, np.zeros(2, np.int64), np.zeros(2))
            keys = _polygon_top_left_keys(rings, ds.transform, job.width)
            at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
            if (sorted_keys[at] != keys).any():
                raise RuntimeError(f"{job.mask_path}: a seam-crossing polygon matches no region")
            rings.pixels, rings.prob_sums = pixels[order[at]], prob_sums[order[at]].astype(np.float64)
            return rings

        found = []
        for item in shapes(rasterio.band(ds, 1), mask=rasterio.band(ds, 1), transform=ds.transform):
            found.append(item)
            if len(found) == GROUP_BATCH_COUNT:
                written += len(found)
                yield batch(found)
                found = []
        if found:
            written += len(found)
            yield batch(found)
    if written != len(pixels):
        raise RuntimeError(f"{job.mask_path}: {len(pixels)} seam-crossing regions gave {written} polygons")


# ------------------------------------------------------------------------------------------------ chunks
def _chunks(job: VectorJob, final: bool, counters: dict, directory: Path) -> Iterator[Encoded | Rings]:
    """Each window's final polygons in window order (when ``final``; else another process makes them), then
    the seam-crossing groups. Pass 1 writes the pixels of seam-touching regions into a temporary raster."""
    seams = SeamGraph(job.block)
    seam_path = directory / f".{Path(job.mask_path).stem}.seam-regions.tif"
    try:
        with _seam_raster(job, seam_path) as seam_ds:
            for result in _window_results(job, windows_of(job.width, job.height, job.block), final, True):
                seams.add(result)
                _write_seam_window(seam_ds, result)
                if len(result.features):
                    yield result.features
        counters["seam_parts"] = seams.count
        yield from _group_chunks(job, seams, counters, seam_path)
    finally:
        seam_path.unlink(missing_ok=True)


def _encoded(job: VectorJob, chunks: Iterator[Encoded | Rings], counters: dict) -> Iterator[Encoded]:
    """Encoded features in the order of ``chunks``. Polygons are encoded by a second thread (reprojection and
    numpy formatting release the GIL) while the next window is polygonised; at most :data:`ENCODE_AHEAD`
    chunks wait."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="rrsis-encode") as encoder, _closing(chunks):
        pending: deque[tuple[Future, int]] = deque()
        for chunk in chunks:
            if isinstance(chunk, Rings):
                pending.append((encoder.submit(encode, job, chunk), len(chunk)))
            else:
                done: Future = Future()
                done.set_result(chunk)
                pending.append((done, chunk.count))
            counters["held"] = max(counters["held"], sum(n for _, n in pending))
            if len(pending) > ENCODE_AHEAD:
                yield pending.popleft()[0].result()
        while pending:
            yield pending.popleft()[0].result()


@contextmanager
def _closing(chunks: Iterator):
    """Close a generator of chunks when its consumer stops, here and now: a generator left open (held by a
    traceback) would close its datasets later, in whatever thread collects it, and rasterio's thread-local GDAL
    environments must be left in the order they were entered."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def feature_chunks(job: VectorJob, workers: int, counters: dict, directory: Path) -> Iterator[Encoded]:
    """Encoded features in output order: each window's final polygons, then the seam-crossing regions. With
    ``workers`` > 1, ``workers - 1`` processes make the windows' final polygons (each a run of rows of windows,
    spooled to a temporary file) while this one labels the windows and polygonises the seam-crossing regions;
    then the spools are read back in order, and the regions follow."""
    if workers <= 1:
        yield from _encoded(job, _chunks(job, True, counters, directory), counters)
        return
    stem = Path(job.mask_path).stem
    shares = window_shares(job, workers - 1)
    spools = [directory / f".{stem}.windows-{i}.arrows" for i in range(len(shares))]
    processes: list = []
    try:
        processes = [_start_window_worker(job, share, spool) for share, spool in zip(shares, spools, strict=True)]
        with _closing(_encoded(job, _chunks(job, False, counters, directory), counters)) as regions:
            first = next(regions, None)  # the windows are labelled and GDAL has polygonised the regions
            for process in processes:
                counters["held"] = max(counters["held"], _finished_worker(job, process)["held"])
            for spool in spools:
                yield from read_spool(job, spool)
            if first is not None:
                yield first
                yield from regions
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for spool in spools:
            spool.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ processes
def write_spool(job: VectorJob, chunks: Iterator[Encoded], path: Path) -> int:
    """Encoded chunks into an Arrow IPC stream file: a GeoJSON chunk as one row (its feature lines joined as
    the file joins them, and their count), other formats as their record batches. Returns the feature
    count."""
    import pyarrow as pa

    geojson = job.vector_format == "geojson"
    schema = pa.schema([pa.field("lines", pa.binary()), pa.field("count", pa.int64())]) if geojson else \
        _arrow_schema(job, geo_metadata=False)
    count = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for chunk in chunks:
            if not chunk.count:
                continue
            if geojson:
                writer.write_batch(pa.record_batch([pa.array([b",\n".join(chunk.lines)], pa.binary()),
                                                    pa.array([chunk.count], pa.int64())], schema=schema))
            else:
                writer.write_batch(chunk.batch)
            count += chunk.count
    return count


def read_spool(job: VectorJob, path: Path) -> Iterator[Encoded]:
    import pyarrow as pa

    with pa.OSFile(str(path), "rb") as source, pa.ipc.open_stream(source) as reader:  # read, not mapped: RSS
        for batch in reader:
            if job.vector_format == "geojson":
                for lines, count in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                    yield Encoded(count, lines=[lines])
            else:
                yield Encoded(batch.num_rows, batch=batch)


def spool_windows(job: VectorJob, share: tuple[int, int], path: Path) -> dict:
    """The final polygons of the windows ``share`` (first, end), encoded into a spool (what a window worker
    process does)."""
    counters = {"held": 0}
    windows = windows_of(job.width, job.height, job.block)[share[0]:share[1]]

    def chunks() -> Iterator[Encoded | Rings]:
        for result in _window_results(job, windows, True, False):
            if len(result.features):
                yield result.features

    count = write_spool(job, _encoded(job, chunks(), counters), path)
    return {"count": count, "held": counters["held"]}


def _start_window_worker(job: VectorJob, share: tuple[int, int], spool: Path):
    """A fresh Python running :func:`spool_windows` (``python -m rrsis_cli.vector_worker``): a plain
    subprocess, so the caller's ``__main__`` is never imported again (as multiprocessing's spawn would)."""
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    request = json.dumps({"job": asdict(job), "share": share, "spool": str(spool)})
    return subprocess.Popen([sys.executable, "-m", "rrsis_cli.vector_worker", request], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _finished_worker(job: VectorJob, process) -> dict:
    import json

    out, err = process.communicate()
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        raise RuntimeError(f"{job.mask_path}: a vectorising worker failed: {last[0][:300]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def run_window_worker(request: dict) -> dict:
    """The worker's side of :func:`_start_window_worker`."""
    fields = dict(request["job"])
    fields["geojson_options"] = tuple(tuple(pair) for pair in fields["geojson_options"])
    first, end = request["share"]
    return spool_windows(VectorJob(**fields), (first, end), Path(request["spool"]))


def _write_geojson(job: VectorJob, chunks: Iterator[Encoded], path: Path) -> int:
    header = _gdal_geojson(job, None)
    header = header[:header.index(b'"features": [\n') + len(b'"features": [\n')]
    if job.crs_wkt is not None and "RFC7946" not in dict(job.geojson_options):
        header = _with_crs_member(header, job, path)
    count = 0
    with open(path, "wb") as out:
        out.write(header)
        for chunk in chunks:
            if chunk.lines:
                out.write((b",\n" if count else b"") + b",\n".join(chunk.lines))
                count += chunk.count
        out.write(b"\n]\n}\n")
    return count


def _with_crs_member(header: bytes, job: VectorJob, path: Path) -> bytes:
    """A GeoJSON-2008 ``crs`` member naming the scene's CRS by its authority URN (e.g.
    ``urn:ogc:def:crs:IAU_2015::49910``), which GDAL reads back, for a GeoJSON that is not in EPSG:4326."""
    from pyproj import CRS

    authority = CRS.from_wkt(job.crs_wkt).to_authority(min_confidence=70)
    if authority is None:
        console.warn(f"{path.name}: the scene's CRS has no authority code; the GeoJSON names none (use "
                     "--vector-format gpkg to keep it)")
        return header
    member = (f'"crs": {{ "type": "name", "properties": {{ "name": "urn:ogc:def:crs:{authority[0]}::'
              f'{authority[1]}" }} }},\n').encode()
    if b'"crs":' in header:
        return header
    at = header.index(b'"features": [\n')
    return header[:at] + member + header[at:]


def _write_ogr(job: VectorJob, chunks: Iterator[Encoded], path: Path) -> int:
    import pyarrow as pa
    import pyogrio

    schema = _arrow_schema(job, geo_metadata=False)
    counted = [0]
    failed: list[BaseException] = []

    def batches():
        try:
            for chunk in chunks:
                if chunk.count:
                    counted[0] += chunk.count
                    yield chunk.batch
        except BaseException as exc:  # GDAL reports only "Error while accessing batch from stream"
            failed.append(exc)
            raise

    driver, _ = VECTOR_DRIVERS[job.vector_format]
    try:
        pyogrio.write_arrow(pa.RecordBatchReader.from_batches(schema, batches()), str(path), layer=VECTOR_LAYER,
                            driver=driver, geometry_name="geometry", geometry_type="Polygon", crs=job.crs_wkt)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    return counted[0]


def _write_parquet(job: VectorJob, chunks: Iterator[Encoded], path: Path) -> int:
    import pyarrow.parquet as pq

    schema = _arrow_schema(job, geo_metadata=True)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for chunk in chunks:
            if chunk.count:
                writer.write_batch(chunk.batch.select(schema.names).cast(schema))
                count += chunk.count
    return count


def default_workers(width: int, height: int) -> int:
    """2 (this process and one window worker) for a mask of at least :data:`PARALLEL_MIN_PIXELS` when this
    process may use 2 CPUs or more and one of them is idle (CPUs minus the 1-minute load average >= 1); else 1.
    The worker costs a Python start-up and a second labelling of the windows (about 1.5 s of CPU on a 6000^2
    mask): smaller masks do not win that back, and on a busy machine it only adds work (measured: with other
    jobs on both cores, 2 processes took longer than 1). More workers add little, as this process's share
    (labelling, the seam-crossing regions) stays the same."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle = cpus - os.getloadavg()[0] if hasattr(os, "getloadavg") else cpus
    return 2 if cpus >= 2 and idle >= 1.0 and width * height >= PARALLEL_MIN_PIXELS else 1


def vectorise(mask_path: Path, prob_path: Path, out_path: Path, prompt: str, vector_format: str,
              min_area: float, simplify: float, block: int, workers: int | None = None,
              stats: dict | None = None) -> int:
    """Polygons of mask == 1 (4-connected regions), streamed to ``out_path`` window by window, regions that
    cross window seams merged; ``score`` is the mean probability (from the uint8 probability raster, value /
    254) of each polygon's pixels, ``area_m2`` its area in metres (null without a metric CRS). ``workers`` > 1:
    ``workers - 1`` subprocesses (``python -m rrsis_cli.vector_worker``, so the caller's ``__main__`` is not
    imported again) make the windows' final polygons while this process makes the seam-crossing regions;
    None: :func:`default_workers`. The output is the same bytes for any number of workers. ``stats``, when
    given, gets ``polygons_held_peak`` (the most polygons in memory at once in one process), ``seam_parts``
    (window parts of regions that cross a seam), ``seam_groups`` (those regions) and ``workers``. Returns the
    feature count. Anything that fails leaves nothing at ``out_path`` (temporary files beside it are removed,
    worker processes stopped)."""
    job = plan_job(mask_path, prob_path, prompt, vector_format, min_area, simplify, block)
    workers = default_workers(job.width, job.height) if workers is None else max(1, workers)
    counters = {"held": 0, "seam_parts": 0, "seam_groups": 0}
    writer = {"geojson": _write_geojson, "parquet": _write_parquet}.get(vector_format, _write_ogr)
    tmp = temporary_path(out_path)
    try:
        with _closing(feature_chunks(job, workers, counters, out_path.parent)) as chunks:
            count = writer(job, chunks, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    if count and job.metric_wkt is None and (min_area > 0 or simplify > 0):
        console.warn(f"{mask_path}: no metric CRS for the scene's CRS; --min-area/--simplify not applied")
    if stats is not None:
        stats.update(polygons_held_peak=counters["held"], seam_parts=counters["seam_parts"],
                     seam_groups=counters["seam_groups"], workers=workers)
    return count

"""``--aoi``: the area of interest of a run, and its window in each scene.

``--aoi FILE.geojson`` (a Feature, FeatureCollection or geometry; RFC 7946 lon/lat, or the CRS of an old-style
``crs`` member) or ``--aoi minx,miny,maxx,maxy[,CRS]`` (lon/lat without a CRS). In each scene the AOI is
reprojected to the scene's CRS (edges densified, so a lon/lat box becomes the curved shape it is on a projected
grid) and its bounding box there, rounded outwards to whole pixels and clipped to the scene, is the scene's
window: the run reads, processes and writes only that window (:class:`rrsis_cli.scene.SceneReader`), so on a remote
COG only the byte ranges of its tiles are fetched. A scene the AOI does not touch is skipped
(:class:`~rrsis_cli.errors.OutsideAoi`, status ``skipped-aoi`` in the manifest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rrsis_cli.errors import InputError, OutsideAoi, UsageError

DENSIFY = 32  # points per edge when the AOI is reprojected


@dataclass(frozen=True)
class Aoi:
    """An area of interest: a GeoJSON geometry (``geometry``, a dict) in ``crs``; ``given`` is the option's
    text."""

    given: str
    geometry: str  # GeoJSON text (hashable)
    crs: str

    def record(self) -> dict[str, Any]:
        """For the manifest and the configuration hash."""
        return {"aoi": self.given, "crs": self.crs, "geometry": json.loads(self.geometry)}

    def bounds_in(self, crs) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the AOI reprojected to ``crs``."""
        import shapely
        from rasterio.warp import transform_geom

        shape = shapely.geometry.shape(json.loads(self.geometry))
        left, bottom, right, top = shape.bounds
        step = max(right - left, top - bottom) / DENSIFY
        if step > 0:
            shape = shapely.segmentize(shape, step)
        moved = transform_geom(self.crs, crs, shapely.geometry.mapping(shape))
        return shapely.geometry.shape(moved).bounds


@lru_cache(maxsize=16)
def parse_aoi(text: str) -> Aoi:
    """The :class:`Aoi` of ``--aoi``: a GeoJSON file, or ``minx,miny,maxx,maxy[,CRS]``. UsageError otherwise."""
    path = Path(text)
    if path.suffix.lower() in (".geojson", ".json") or path.is_file():
        return _aoi_from_file(text, path)
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(v) for v in parts[:4]]
    except ValueError as exc:
        raise UsageError(f"--aoi must be a GeoJSON file or minx,miny,maxx,maxy[,CRS], got {text!r}") from exc
    crs = ",".join(parts[4:]) or "EPSG:4326"
    if len(numbers) != 4 or not all(map(math.isfinite, numbers)) or numbers[0] >= numbers[2] \
            or numbers[1] >= numbers[3]:
        raise UsageError(f"--aoi box must be minx,miny,maxx,maxy with min < max, got {text!r}")
    _check_crs(crs, text)
    minx, miny, maxx, maxy = numbers
    ring = [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]
    return Aoi(text, json.dumps({"type": "Polygon", "coordinates": [ring]}), crs)


def _check_crs(crs: str, text: str) -> None:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError as exc:
        raise UsageError(f"--aoi {text!r}: unknown CRS {crs!r}") from exc


def _aoi_from_file(text: str, path: Path) -> Aoi:
    import shapely

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise UsageError(f"--aoi cannot be read: {reason}", path) from exc
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        geometries = [f.get("geometry") for f in data.get("features", [])]
    elif kind == "Feature":
        geometries = [data.get("geometry")]
    else:
        geometries = [data]
    try:
        shapes = [shapely.geometry.shape(g) for g in geometries if g]
    except Exception as exc:  # noqa: BLE001 - shapely's message, one line
        raise UsageError(f"--aoi holds an invalid geometry ({exc})", path) from exc
    if not shapes or all(s.is_empty for s in shapes):
        raise UsageError("--aoi holds no geometry", path)
    crs = (data.get("crs") or {}).get("properties", {}).get("name", "EPSG:4326") if isinstance(data, dict) \
        else "EPSG:4326"
    _check_crs(crs, text)
    union = shapely.unary_union(shapes)
    return Aoi(text, json.dumps(shapely.geometry.mapping(union)), crs)


def aoi_window(aoi: Aoi, ds, path):
    """The window of ``ds`` (rasterio dataset) that covers ``aoi``: its bounding box in the dataset's CRS,
    rounded outwards to whole pixels, clipped to the raster. OutsideAoi when they do not meet; InputError for a
    dataset without CRS."""
    from rasterio.windows import Window

    if ds.crs is None:
        raise InputError("--aoi needs a scene with a CRS (this one has none)", path)
    left, bottom, right, top = aoi.bounds_in(ds.crs)
    inverse = ~ds.transform
    corners = [inverse @ (x, y) for x in (left, right) for y in (bottom, top)]
    cols = [round(c, 6) for c, _ in corners]
    rows = [round(r, 6) for _, r in corners]
    col0, col1 = max(0, math.floor(min(cols))), min(ds.width, math.ceil(max(cols)))
    row0, row1 = max(0, math.floor(min(rows))), min(ds.height, math.ceil(max(rows)))
    if col1 <= col0 or row1 <= row0:
        raise OutsideAoi(f"outside the --aoi ({aoi.given}); skipped", path)
    return Window(col0, row0, col1 - col0, row1 - row0)

"""The vectorisation of predict before streaming (rrsis 0.1, commit dfa6fec), kept as the reference that
``rrsis_cli.vectors.vectorise`` is compared with: every window's polygons held, seam parts merged by one
``unary_union``, the file written by geopandas/GDAL. Test code only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.outputs import temporary_path
from rrsis_cli.vectors import GEOJSON_PRECISION, VECTOR_DRIVERS, VECTOR_LAYER, horizontal_crs


def vectorise(mask_path: Path, prob_path: Path, out_path: Path, prompt: str, vector_format: str,
              min_area: float, simplify: float, block: int) -> int:
    """Polygons of mask == 1, window by window, merged across window borders; ``score`` is the mean probability
    (from the uint8 probability raster, value / 254) of each polygon's pixels. Returns the feature count."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window
    from scipy.ndimage import label
    from shapely.ops import unary_union
    from shapely.strtree import STRtree

    whole, seam = [], []  # (polygon, pixels, probability sum): complete in their window / touching a seam
    with rasterio.open(mask_path) as ds, rasterio.open(prob_path) as prob_ds:
        crs = ds.crs
        pixel_area = abs(ds.transform.a * ds.transform.e)
        for row in range(0, ds.height, block):
            for col in range(0, ds.width, block):
                window = Window(col, row, min(block, ds.width - col), min(block, ds.height - row))
                data = ds.read(1, window=window)
                hit = data == 1
                if not hit.any():
                    continue
                prob = prob_ds.read(1, window=window).astype(np.float64) / 254.0
                # 4-connected components, as rasterio's shapes(): one polygon per label, counted in one pass
                labels, count = label(hit)
                pixels = np.bincount(labels.ravel(), minlength=count + 1)
                prob_sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count + 1)
                on_seam = seam_labels(labels, row > 0, row + window.height < ds.height, col > 0,
                                      col + window.width < ds.width)
                found = list(shapes(labels.astype(np.int32), mask=hit, transform=ds.window_transform(window)))
                polygons = polygons_from_rings([geom["coordinates"] for geom, _ in found])
                for polygon, (_, value) in zip(polygons, found, strict=True):
                    v = int(value)
                    (seam if on_seam[v] else whole).append((polygon, int(pixels[v]), float(prob_sums[v])))
    # only the parts that touch a window seam can continue in the next window: merge those alone
    merged = unary_union([p for p, _, _ in seam]) if seam else None
    components = list(getattr(merged, "geoms", [merged])) if merged is not None and not merged.is_empty else []
    # each seam part lies in exactly one merged component: assign it by an interior point
    tree = STRtree(components) if components else None
    pixels = [0] * len(components)
    prob_sums = [0.0] * len(components)
    for poly, count, prob_sum in seam:
        hit = tree.query(poly.representative_point(), predicate="within") if tree is not None else []
        if len(hit):
            pixels[int(hit[0])] += count
            prob_sums[int(hit[0])] += prob_sum
    records = [{"prompt": prompt, "score": prob_sum / max(count, 1), "pixels": count, "geometry": poly}
               for poly, count, prob_sum in whole]
    records += [{"prompt": prompt, "score": prob_sums[i] / max(pixels[i], 1), "pixels": pixels[i], "geometry": comp}
                for i, comp in enumerate(components)]
    crs = horizontal_crs(crs)
    frame = gpd.GeoDataFrame(records, geometry="geometry", crs=crs) if records else gpd.GeoDataFrame(
        {"prompt": [], "score": [], "pixels": []}, geometry=[], crs=crs)
    metric = metric_crs(frame) if crs is not None and len(frame) else None
    if metric is not None:
        if crs.is_projected:
            frame["area_m2"] = frame["pixels"] * pixel_area * crs.axis_info[0].unit_conversion_factor ** 2
        else:
            frame["area_m2"] = frame.to_crs(metric).area
        if min_area > 0:
            frame = frame[frame["area_m2"] >= min_area]
        if simplify > 0:
            frame["geometry"] = frame.to_crs(metric).simplify(simplify).to_crs(crs)
    else:
        frame["area_m2"] = None
        if len(frame) and (min_area > 0 or simplify > 0):
            console.warn(f"{mask_path}: no metric CRS for the scene's CRS; --min-area/--simplify not applied")
    write_vectors(frame, out_path, vector_format)
    return len(frame)


def polygons_from_rings(rings_per_polygon: list[list]) -> np.ndarray:
    """Shapely polygons from GeoJSON-like ring lists (exterior first, then holes), built in one vectorised call
    instead of one Python object construction per polygon."""
    import shapely

    if not rings_per_polygon:
        return np.array([], dtype=object)
    rings = [np.asarray(ring, dtype=np.float64) for polygon in rings_per_polygon for ring in polygon]
    ring_offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])])
    polygon_offsets = np.concatenate([[0], np.cumsum([len(p) for p in rings_per_polygon])])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.concatenate(rings),
                                     (ring_offsets, polygon_offsets))


def seam_labels(labels: np.ndarray, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """Boolean per label: does the component touch an edge of its window that another window continues (the
    scene's own edges are not seams)?"""
    edges = [labels[0, :] if top else None, labels[-1, :] if bottom else None, labels[:, 0] if left else None,
             labels[:, -1] if right else None]
    flags = np.zeros(int(labels.max()) + 1, bool)
    for edge in edges:
        if edge is not None:
            flags[edge] = True
    flags[0] = False
    return flags


def metric_crs(frame):
    """A CRS in which areas and tolerances are in metres for ``frame``: its own when projected, else the local
    UTM zone; None when neither works (a geographic CRS of another celestial body)."""
    crs = frame.crs
    if crs.is_projected:
        return crs
    try:
        return frame.estimate_utm_crs()
    except Exception:  # noqa: BLE001 - pyproj raises RuntimeError/CRSError for bodies without UTM zones
        return None


def _counter_clockwise(geom):
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946 section 3.1.6)."""
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.polygon import orient

    if isinstance(geom, Polygon):
        return orient(geom, 1.0)
    if isinstance(geom, MultiPolygon):
        return MultiPolygon([orient(p, 1.0) for p in geom.geoms])
    return geom


def write_vectors(frame, path: Path, vector_format: str) -> None:
    """Write ``frame`` (in the scene's CRS) to ``path`` atomically, as one layer named :data:`VECTOR_LAYER`:
    GeoJSON per RFC 7946 (reprojected to EPSG:4326; a frame without CRS stays in pixel space), GeoPackage,
    FlatGeobuf and GeoParquet in the frame's CRS. An empty frame keeps the column types and a Polygon layer."""
    import geopandas as gpd

    if not len(frame):  # the column types of a non-empty result (no value to infer them from)
        types = {"prompt": object, "score": "float64", "pixels": "int64", "area_m2": "float64"}
        frame = frame.astype({k: v for k, v in types.items() if k in frame.columns})
    driver, _ = VECTOR_DRIVERS[vector_format]
    options: dict[str, Any] = {}
    if vector_format == "geojson":
        if frame.crs is not None:
            try:
                frame = frame.to_crs("EPSG:4326")
                options["RFC7946"] = "YES"  # GDAL also writes no crs member and orients the rings
            except Exception as exc:  # noqa: BLE001 - pyproj.ProjError: e.g. a CRS of another celestial body
                console.warn(f"{path.name}: the scene's CRS ({frame.crs.name}) cannot be expressed in EPSG:4326 "
                             f"({str(exc).splitlines()[-1][:160]}); GeoJSON written in the scene's CRS, named "
                             "by a 'crs' member (not RFC 7946)")
        frame = frame.set_geometry(gpd.GeoSeries([_counter_clockwise(g) for g in frame.geometry],
                                                 index=frame.index, crs=frame.crs))
        options["COORDINATE_PRECISION"] = str(GEOJSON_PRECISION)
    tmp = temporary_path(path)
    try:
        if driver is None:
            frame.to_parquet(tmp)
        else:
            frame.to_file(tmp, driver=driver, engine="pyogrio", layer=VECTOR_LAYER, layer_options=options,
                          geometry_type=None if len(frame) else "Polygon")
        if vector_format == "geojson" and frame.crs is not None and "RFC7946" not in options:
            _name_crs(tmp, frame.crs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _name_crs(path: Path, crs) -> None:
    """Add a GeoJSON-2008 ``crs`` member naming ``crs`` by its authority URN (e.g.
    ``urn:ogc:def:crs:IAU_2015::49910``), which GDAL reads back, to a GeoJSON file that is not in EPSG:4326."""
    import json

    authority = crs.to_authority(min_confidence=70)
    if authority is None:
        console.warn(f"{path.name}: the scene's CRS has no authority code; the GeoJSON names none (use "
                     "--vector-format gpkg to keep it)")
        return
    data = json.loads(path.read_text())
    data["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{authority[0]}::{authority[1]}"}}
    path.write_text(json.dumps(data, separators=(",", ":")))

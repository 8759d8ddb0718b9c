"""Streaming vectorisation (rrsis_cli.vectors): the same features as the implementation it replaced
(tests/vector_reference.py) on masks with seam-crossing regions, holes closed only across seams and diagonal
contacts; GeoJSON text as GDAL formats it; memory that holds windows, not all polygons; a process pool that
writes the same bytes as one process; no partial file on failure."""

from __future__ import annotations

import io
import re
import tracemalloc
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import vector_reference
from rasterio.transform import from_origin
from scipy.ndimage import label

from rrsis_cli import vectors
from rrsis_cli.geojson_text import number_bytes

BLOCK = 64


def tricky_mask(size: int = 200, seed: int = 0) -> np.ndarray:
    """1 = target, 255 = nodata; windows of BLOCK px, so seams at 64, 128, 192."""
    m = np.zeros((size, size), np.uint8)
    m[10:13, 5:191] = 1  # a bar across three vertical seams
    m[20:181, 100:102] = 1  # a bar across two horizontal seams
    m[120:137, 120:137] = 1  # a ring around the seam crossing (128, 128): its hole exists only once merged
    m[123:134, 123:134] = 0
    m[63, 63] = m[64, 64] = 1  # two pixels touching diagonally at a seam crossing: two polygons
    m[63, 30] = m[64, 31] = 1  # diagonal contact across a horizontal seam
    m[40:71, 150] = m[40:71, 160] = 1  # a U: two arms in window (0, 2) joined in window (1, 2)
    m[70, 150:161] = 1
    m[195:200, 195:200] = 1  # at the scene's corner (edges that are not seams)
    noise = np.random.default_rng(seed).random((60, 90)) > 0.55  # many small regions, some across seams
    m[140:200, 0:90] = noise
    m[150:155, 40:45] = 255  # nodata inside the noise
    return m


def write_rasters(directory: Path, mask: np.ndarray, crs: str = "EPSG:32618", transform=None,
                  seed: int = 1) -> tuple[Path, Path]:
    transform = transform or from_origin(500_000, 4_200_000, 1.0, 1.0)
    profile = {"driver": "GTiff", "width": mask.shape[1], "height": mask.shape[0], "count": 1, "dtype": "uint8",
               "crs": crs, "transform": transform, "nodata": 255}
    prob = np.random.default_rng(seed).integers(0, 255, mask.shape, dtype=np.uint8)
    paths = directory / "mask_raw.tif", directory / "prob_raw.tif"
    for path, data in zip(paths, (mask, prob), strict=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
    return paths


def _read(path: Path) -> gpd.GeoDataFrame:
    frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path, layer="mask")
    bounds = frame.geometry.bounds.round(5)
    order = np.lexsort([frame["pixels"].to_numpy(), bounds["miny"].to_numpy(), bounds["minx"].to_numpy()])
    return frame.iloc[order].reset_index(drop=True)


def _both(tmp_path: Path, fmt: str, crs: str = "EPSG:32618", transform=None, min_area: float = 0.0,
          simplify: float = 0.0, mask: np.ndarray | None = None) -> tuple[Path, Path, dict]:
    mask_path, prob_path = write_rasters(tmp_path, tricky_mask() if mask is None else mask, crs, transform)
    old, new = tmp_path / f"old.{fmt}", tmp_path / f"new.{fmt}"
    vector_reference.vectorise(mask_path, prob_path, old, "the thing", fmt, min_area, simplify, BLOCK)
    stats: dict = {}
    vectors.vectorise(mask_path, prob_path, new, "the thing", fmt, min_area, simplify, BLOCK, workers=1,
                      stats=stats)
    return old, new, stats


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "parquet"])
def test_same_features_as_the_reference_in_the_scene_crs(tmp_path, fmt):
    old, new, stats = _both(tmp_path, fmt)
    a, b = _read(old), _read(new)
    assert stats["seam_groups"] >= 8 and len(a) == len(b) > 40  # the mask exercises seams
    assert list(b.columns) == list(a.columns)
    assert (a["pixels"].to_numpy() == b["pixels"].to_numpy()).all()
    assert (a["prompt"] == b["prompt"]).all()
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-12)
    np.testing.assert_array_equal(b["area_m2"], a["area_m2"])
    assert shapely.equals(a.geometry.values, b.geometry.values).all()  # same point sets, holes included
    assert a.crs == b.crs and b.crs.to_epsg() == 32618
    assert (b.geom_type == "Polygon").all() and b.is_valid.all()
    assert int(b["pixels"].sum()) == int((tricky_mask() == 1).sum())


def _diagonal_and_hole_checks(frame: gpd.GeoDataFrame) -> None:
    assert (frame.geom_type == "Polygon").all()
    assert (shapely.get_num_interior_rings(frame.geometry.values) > 0).any()


@pytest.mark.parametrize("crs, transform", [("EPSG:32618", None),
                                            ("EPSG:4326", from_origin(-77.0, 38.0, 1e-5, 1e-5))])
def test_geojson_same_features_and_same_bytes_for_windows_own_polygons(tmp_path, crs, transform):
    """A polygon inside one window is written byte for byte as GDAL wrote it; a seam-crossing one is the same
    region (the reference kept extra collinear vertices where parts met, a few 1e-7 degree off the line once
    in lon/lat)."""
    old, new, stats = _both(tmp_path, "geojson", crs, transform)
    old_lines = old.read_bytes().split(b"\n")
    new_lines = new.read_bytes().split(b"\n")
    assert new_lines[:5] == old_lines[:5] and new_lines[-3:] == old_lines[-3:]  # header, footer
    assert b'"crs"' not in new.read_bytes()
    own = [line.rstrip(b",") for line in new_lines[5:-3]][:len(new_lines) - 8 - stats["seam_groups"]]
    assert own and own == [line.rstrip(b",") for line in old_lines[5:5 + len(own)]]
    a, b = _read(old), _read(new)
    assert len(b) == label(tricky_mask() == 1)[1]  # one feature per 4-connected region
    if crs == "EPSG:4326":
        # the reference left some seam-crossing regions split: with 1e-5 degree pixels, the window transforms
        # put a shared seam a few ulp apart in its two windows, so unary_union did not join the parts
        assert len(a) > len(b) and a["pixels"].sum() == b["pixels"].sum()
        difference = shapely.symmetric_difference(shapely.union_all(a.geometry.values),
                                                  shapely.union_all(b.geometry.values))
        assert shapely.area(difference) < 1e-12
        return
    assert len(a) == len(b) and (a["pixels"].to_numpy() == b["pixels"].to_numpy()).all()
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-12)
    np.testing.assert_allclose(b["area_m2"], a["area_m2"], rtol=1e-9)
    distance = shapely.hausdorff_distance(a.geometry.values, b.geometry.values)
    assert distance.max() < 3e-7  # degrees: the 7th-decimal rounding of the same region
    assert (shapely.get_num_interior_rings(a.geometry.values)
            == shapely.get_num_interior_rings(b.geometry.values)).all()
    _diagonal_and_hole_checks(b)


def test_min_area_and_simplify_as_the_reference(tmp_path):
    """--min-area keeps the same features; --simplify gives the same polygons for regions inside one window
    (a seam-crossing ring starts at another vertex, so Douglas-Peucker may keep other vertices there)."""
    old, new, stats = _both(tmp_path, "gpkg", min_area=3.0, simplify=0.6)
    a, b = _read(old), _read(new)
    assert len(a) == len(b) and (b["area_m2"] >= 3.0).all() and (a["pixels"].to_numpy() == b["pixels"]).all()
    same = shapely.equals(a.geometry.values, b.geometry.values)
    assert same.sum() >= len(b) - stats["seam_groups"]
    np.testing.assert_allclose(shapely.area(b.geometry.values), shapely.area(a.geometry.values), rtol=0.2)


def test_a_scene_without_metric_crs_keeps_null_areas(tmp_path):
    mask_path, prob_path = write_rasters(tmp_path, tricky_mask(), crs="IAU_2015:49900",
                                         transform=from_origin(10.0, 20.0, 1e-4, 1e-4))
    out = tmp_path / "mask.gpkg"
    count = vectors.vectorise(mask_path, prob_path, out, "x", "gpkg", 0.0, 0.0, BLOCK)
    frame = gpd.read_file(out)
    assert count == len(frame) > 0 and frame["area_m2"].isna().all()


# ------------------------------------------------------------------------------------------------ text
def _gdal_numbers(values: np.ndarray) -> list[str]:
    points = shapely.points(values[0::2], values[1::2])
    buffer = io.BytesIO()
    pyogrio.write_dataframe(gpd.GeoDataFrame(geometry=points, crs="EPSG:4326"), buffer, driver="GeoJSON",
                            layer="mask", layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": "7"})
    return re.findall(rb'"coordinates": \[ ([^,]+), ([^ ]+) \]', buffer.getvalue())


def test_coordinates_are_formatted_as_gdal_formats_them():
    rng = np.random.default_rng(3)
    base = rng.uniform(-89, 89, 400)
    crafted = np.concatenate([
        np.round(base, 1) + 1e-7, np.round(base, 1) - 1e-7, np.round(base, 1) + 9e-7, np.round(base, 1) - 9e-7,
        np.round(base, 2) + 5e-8, np.round(base, 7), np.round(base, 3), rng.uniform(-1, 1, 400),
        rng.uniform(-89, 89, 2000), [0.0, -0.0, 1e-8, -1e-8, 5e-8, 89.9999999, -89.99999995, 9.99999999, -0.5]])
    crafted = crafted[: len(crafted) // 2 * 2]
    expected = [v for pair in _gdal_numbers(crafted) for v in pair]
    matrix = number_bytes(crafted)
    got = [row[row != 0].tobytes() for row in matrix]
    assert got == expected


# ------------------------------------------------------------------------------------------------ memory
def blob_mask(size: int, pitch: int, seed: int = 0) -> np.ndarray:
    """One small region (pixel, bar, L or ring) per ``pitch`` x ``pitch`` cell, never touching."""
    rng = np.random.default_rng(seed)
    shapes = [np.ones((1, 1)), np.ones((1, 3)), np.array([[1, 0], [1, 1]]), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])]
    m = np.zeros((size, size), np.uint8)
    for i, (row, col) in enumerate((r, c) for r in range(0, size - pitch + 1, pitch)
                                   for c in range(0, size - pitch + 1, pitch)):
        shape = shapes[i % len(shapes)]
        dr, dc = rng.integers(0, pitch - 3, 2)
        m[row + dr:row + dr + shape.shape[0], col + dc:col + dc + shape.shape[1]] = shape
    return m


def test_memory_holds_a_few_windows_not_every_polygon(tmp_path):
    mask = blob_mask(512, 6)  # 7,225 polygons in 64 windows
    mask_path, prob_path = write_rasters(tmp_path, mask)
    stats: dict = {}
    count = vectors.vectorise(mask_path, prob_path, tmp_path / "mask.geojson", "x", "geojson", 0.0, 0.0,
                              BLOCK, workers=1, stats=stats)
    assert count > 7000
    # a 64 px window meets at most 12 x 12 cells of 6 px; the window being encoded and two waiting: 3 windows
    assert 100 < stats["polygons_held_peak"] <= 3 * 144 < count // 10
    assert stats["seam_parts"] < count // 5


def _traced_peak(tmp_path: Path, size: int) -> tuple[int, int]:
    directory = tmp_path / str(size)
    directory.mkdir()
    mask_path, prob_path = write_rasters(directory, blob_mask(size, 6))
    tracemalloc.start()
    try:
        count = vectors.vectorise(mask_path, prob_path, directory / "mask.gpkg", "x", "gpkg", 0.0, 0.0, BLOCK,
                                  workers=1)
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_traced_memory_does_not_grow_with_the_number_of_polygons(tmp_path):
    """Python-side peak memory (numpy included) for 16x the polygons at the same density stays about the same:
    the reference implementation, which holds every polygon, needs several times more."""
    _traced_peak(tmp_path, 64)  # imports and caches first
    few, few_peak = _traced_peak(tmp_path, 128)
    many, many_peak = _traced_peak(tmp_path, 512)
    assert many > 15 * few
    assert many_peak < 2.0 * few_peak + 1_000_000  # the reference: 0.5 -> 4.5 MB


# ------------------------------------------------------------------------------------------------ pool
def test_a_process_pool_writes_the_same_bytes_as_one_process(tmp_path):
    """Two window workers (4 rows of windows split in 2 runs) and this process."""
    mask_path, prob_path = write_rasters(tmp_path, tricky_mask())
    serial, pooled = tmp_path / "serial.geojson", tmp_path / "pooled.geojson"
    stats: dict = {}
    vectors.vectorise(mask_path, prob_path, serial, "x", "geojson", 0.0, 0.0, BLOCK, workers=1)
    vectors.vectorise(mask_path, prob_path, pooled, "x", "geojson", 0.0, 0.0, BLOCK, workers=3, stats=stats)
    assert stats["workers"] == 3
    assert serial.read_bytes() == pooled.read_bytes()


# ------------------------------------------------------------------------------------------------ failures
def test_a_failure_while_streaming_leaves_no_file(tmp_path, monkeypatch):
    mask_path, prob_path = write_rasters(tmp_path, tricky_mask())
    real = vectors.encode
    calls = []

    def failing(job, rings):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real(job, rings)

    monkeypatch.setattr(vectors, "encode", failing)
    for fmt in ("geojson", "gpkg", "parquet"):
        calls.clear()
        out = tmp_path / f"mask.{fmt}"
        with pytest.raises(OSError, match="No space"):
            vectors.vectorise(mask_path, prob_path, out, "x", fmt, 0.0, 0.0, BLOCK, workers=1)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_raw.tif", "prob_raw.tif"]


def test_a_polygon_across_the_antimeridian_is_split_as_gdal_splits_it(tmp_path):
    """UTM zone 60 at the equator: easting 833,978 m is 180 degrees east; GDAL's RFC 7946 writer cuts such a
    polygon into a MultiPolygon, and so does the streamed GeoJSON."""
    mask = np.zeros((64, 200), np.uint8)
    mask[10:20, 20:180] = 1  # one window wide (BLOCK 64 rows, 200 columns -> 4 windows across)
    mask[30:33, 70:120] = 1  # inside window (0, 1), across 180 degrees
    transform = from_origin(833_900, 200, 1.0, 1.0)
    old, new, stats = _both(tmp_path, "geojson", "EPSG:32660", transform, mask=mask)
    lines = new.read_bytes().split(b"\n")
    frame = gpd.read_file(new)
    assert len(frame) == 2 and set(frame.geom_type) == {"MultiPolygon"}
    own = [line.rstrip(b",") for line in lines[5:-3]][:len(frame) - stats["seam_groups"]]
    assert own == [line.rstrip(b",") for line in old.read_bytes().split(b"\n")[5:5 + len(own)]] and own


# ------------------------------------------------------------------------------------------------ window workers
def _features(path: Path) -> tuple:
    """Everything a reader sees in a vector file, in file order: field values and geometry bytes."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.schema, table.to_pylist()
    meta, _, geometry, field_data = pyogrio.raw.read(path)
    return (meta["crs"], list(meta["fields"]), meta["geometry_type"], [bytes(g) for g in geometry],
            [column.tolist() for column in field_data])


def _non_square_mask() -> np.ndarray:
    """150 x 200 px: windows of 64 px leave 22 x 8 px windows at the bottom right; regions cross both kinds of
    seams, one with a hole only closed across a seam, nodata inside."""
    m = np.zeros((150, 200), np.uint8)
    m[60:70, 10:190] = 1
    m[5:148, 60:68] = 1
    m[120:140, 120:140] = 1
    m[125:135, 125:135] = 0
    m[100:110, 180:200] = 255
    m[140:150, 150:200] = np.random.default_rng(4).random((10, 50)) > 0.5
    return m


@pytest.mark.parametrize("fmt", ["geojson", "gpkg", "fgb", "parquet"])
def test_window_workers_write_what_one_process_writes(tmp_path, fmt):
    """workers > 1: a subprocess makes the windows' final polygons while this process makes the seam-crossing
    regions; the file reads back the same (GeoJSON: the same bytes) for every format predict writes."""
    mask = _non_square_mask()
    mask_path, prob_path = write_rasters(tmp_path, mask)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.{fmt}"
        stats: dict = {}
        count = vectors.vectorise(mask_path, prob_path, out, "the thing", fmt, 0.0, 0.0, BLOCK, workers=workers,
                                  stats=stats)
        assert stats["workers"] == workers and count == label(mask == 1)[1]
        outputs[workers] = out
    if fmt == "geojson":
        assert outputs[1].read_bytes() == outputs[2].read_bytes()
    else:
        assert _features(outputs[1]) == _features(outputs[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mask_raw.tif", "prob_raw.tif",
                                                                 *(p.name for p in outputs.values())])


def test_more_workers_than_rows_of_windows(tmp_path):
    mask_path, prob_path = write_rasters(tmp_path, _non_square_mask()[:60])  # 1 row of 4 windows: 1 worker
    serial, pooled = tmp_path / "serial.geojson", tmp_path / "pooled.geojson"
    vectors.vectorise(mask_path, prob_path, serial, "x", "geojson", 0.0, 0.0, BLOCK, workers=1)
    vectors.vectorise(mask_path, prob_path, pooled, "x", "geojson", 0.0, 0.0, BLOCK, workers=4)
    assert serial.read_bytes() == pooled.read_bytes() and b"Polygon" in serial.read_bytes()


def test_window_shares_cover_every_window_once_in_order():
    job = vectors.VectorJob("m", "p", 64, "x", "geojson", 0.0, 0.0, None, None, None, None, (), 200, 150)
    for parts in (1, 2, 3, 5):
        shares = vectors.window_shares(job, parts)
        assert shares[0][0] == 0 and shares[-1][1] == len(vectors.windows_of(200, 150, 64)) == 12
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
        assert all(start % 4 == 0 for start, _ in shares)  # whole rows of 4 windows
        assert len(shares) == min(parts, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_polygon_finds_its_region_by_its_first_pixel(seed):
    """The key of a GDAL polygon's top-left exterior vertex is the key of its region's first pixel in raster
    order (what joins the seam-region polygons to their pixel counts)."""
    from rasterio.features import shapes

    hit = np.random.default_rng(seed).random((90, 70)) > 0.45
    labels, count = label(hit)
    transform = from_origin(500_000.5, 4_200_000.25, 0.5, 0.5)
    found = list(shapes(labels.astype(np.int32), mask=hit, transform=transform))
    rings = vectors.rings_from_shapes(found, np.zeros(count + 1, np.int64), np.zeros(count + 1))
    by_polygon = dict(zip([int(v) for _, v in found], vectors._polygon_top_left_keys(rings, transform, 70),
                          strict=True))
    values = np.arange(1, count + 1)
    by_label = vectors._top_left_keys(labels, values, 0, 0, 70)
    assert len(by_polygon) == count > 50
    assert [by_polygon[v] for v in values] == by_label.tolist()


def test_a_failed_worker_leaves_no_file_and_no_process(tmp_path, monkeypatch):
    import subprocess
    import sys

    mask_path, prob_path = write_rasters(tmp_path, tricky_mask())
    started = []

    def failing(job, share, spool):
        process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('worker: disk full')"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        return process

    monkeypatch.setattr(vectors, "_start_window_worker", failing)
    out = tmp_path / "mask.gpkg"
    with pytest.raises(RuntimeError, match="worker failed: worker: disk full"):
        vectors.vectorise(mask_path, prob_path, out, "x", "gpkg", 0.0, 0.0, BLOCK, workers=2)
    assert started and all(p.poll() is not None for p in started)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_raw.tif", "prob_raw.tif"]


def test_a_failure_in_this_process_stops_the_workers(tmp_path, monkeypatch):
    mask_path, prob_path = write_rasters(tmp_path, tricky_mask())
    started = []
    real = vectors._start_window_worker

    def tracked(job, share, spool):
        started.append(real(job, share, spool))
        return started[-1]

    def failing(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(vectors, "_start_window_worker", tracked)
    monkeypatch.setattr(vectors, "_group_chunks", failing)
    with pytest.raises(OSError, match="No space"):
        vectors.vectorise(mask_path, prob_path, tmp_path / "mask.geojson", "x", "geojson", 0.0, 0.0, BLOCK,
                          workers=2)
    assert started and all(p.poll() is not None for p in started)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_raw.tif", "prob_raw.tif"]


def test_default_workers_add_one_worker_for_large_masks_when_a_cpu_is_idle(monkeypatch):
    monkeypatch.setattr(vectors.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(vectors.os, "getloadavg", lambda: (0.9, 0.5, 0.5), raising=False)
    assert vectors.default_workers(6000, 6000) == 2
    assert vectors.default_workers(2000, 2000) == 1  # a worker's start-up is not won back
    monkeypatch.setattr(vectors.os, "getloadavg", lambda: (1.5, 0.5, 0.5), raising=False)
    assert vectors.default_workers(6000, 6000) == 1  # both CPUs busy: a worker only adds work
    monkeypatch.setattr(vectors.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(vectors.os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    assert vectors.default_workers(6000, 6000) == 1

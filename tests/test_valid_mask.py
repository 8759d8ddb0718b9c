"""Valid-data masks follow GDAL's convention (RFC 15, rasterio's ``dataset_mask()``): with per-band nodata a pixel
is nodata only where every band is; an internal mask or an alpha band decides where there is one. Checked in the
tile reads, the statistics, the coarse view, the written mask, the vectors and scene evaluation."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.scene import SceneReader
from stub_models import ForegroundModel, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
CRS = "EPSG:32633"
TRANSFORM = from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)


def _write(path: Path, data: np.ndarray, nodata=None, mask: np.ndarray | None = None, alpha: bool = False) -> Path:
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
               "crs": CRS, "transform": TRANSFORM, "nodata": nodata, "tiled": True, "blockxsize": 32,
               "blockysize": 32}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if alpha:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        if mask is not None:
            dst.write_mask(mask)
    return path


def partly_zero_scene(path: Path, dtype=np.uint8, height: int = 96, width: int = 80) -> tuple[Path, np.ndarray]:
    """3 bands, nodata 0: a collar where all bands are 0 (nodata), and many valid pixels that are 0 in one or two
    bands only (data by GDAL's convention). Returns the path and the expected valid mask."""
    rng = np.random.default_rng(0)
    high = 255 if dtype == np.uint8 else 4000
    data = rng.integers(1, high, (3, height, width)).astype(dtype)
    data[:, :, :12] = 0  # the collar: nodata
    data[:, -10:, :] = 0
    zero_one = rng.random((height, width)) < 0.2  # one band zero
    band = rng.integers(0, 3, (height, width))
    for b in range(3):
        data[b][zero_one & (band == b)] = 0
    data[:2, 20:30, 40:50] = 0  # two bands zero: still data
    _write(path, data, nodata=0)
    expected = (data != 0).any(axis=0)
    assert (expected & (data == 0).any(axis=0)).sum() > 500  # many pixels the old min-of-masks rule dropped
    return path, expected


def alpha_scene(path: Path) -> tuple[Path, np.ndarray]:
    """RGBA, no nodata value: the alpha band decides; RGB zeros under alpha 255 are data."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (3, 64, 72)).astype(np.uint8)
    rgb[:, 30:40, :] = 0  # black but valid
    alpha = np.full((64, 72), 255, np.uint8)
    alpha[:, :15] = 0
    alpha[50:, 40:] = 0
    _write(path, np.concatenate([rgb, alpha[None]]), alpha=True)
    return path, alpha > 0


def masked_scene(path: Path) -> tuple[Path, np.ndarray]:
    """3 bands, no nodata value, an internal mask (GDAL_TIFF_INTERNAL_MASK): the mask decides."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (3, 64, 72)).astype(np.uint8)
    rgb[:, :, 60:] = 0  # black but valid
    mask = np.full((64, 72), 255, np.uint8)
    mask[:20, :30] = 0
    _write(path, rgb, mask=mask)
    return path, mask > 0


SCENES = {"nodata0": partly_zero_scene, "alpha": alpha_scene, "internal_mask": masked_scene}


@pytest.mark.parametrize("kind", list(SCENES))
def test_reader_valid_mask_in_interior_and_edge_tiles(tmp_path, kind):
    path, expected = SCENES[kind](tmp_path / "scene.tif")
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.dataset_mask() > 0, expected)  # the scenes mean what they say
    height, width = expected.shape
    reader = SceneReader(path, [1, 2, 3])
    try:
        _, valid = reader.read(0, 0, 32)  # interior: plain read
        np.testing.assert_array_equal(valid, expected[:32, :32])
        _, valid = reader.read(height - 20, width - 24, 64)  # edge: boundless, outside is invalid
        padded = np.zeros((64, 64), bool)
        padded[:20, :24] = expected[height - 20:, width - 24:]
        np.testing.assert_array_equal(valid, padded)
    finally:
        reader.close()


def test_valid_mask_helper_matches_rasterio_dataset_mask(tmp_path):
    from rrsis_cli.scene import mask_kind, valid_mask

    for kind, make in SCENES.items():
        path, expected = make(tmp_path / f"{kind}.tif")
        with rasterio.open(path) as ds:
            assert mask_kind(ds, [1, 2, 3]) == ("per_band" if kind == "nodata0" else "per_dataset")
            np.testing.assert_array_equal(valid_mask(ds, [1, 2, 3]), ds.dataset_mask() > 0)
            window = Window(-5, 7, 40, 30)
            np.testing.assert_array_equal(valid_mask(ds, [1, 2, 3], window, boundless=True),
                                          ds.dataset_mask(window=window, boundless=True) > 0)
            half = (expected.shape[0] // 2, expected.shape[1] // 2)
            np.testing.assert_array_equal(valid_mask(ds, [1, 2, 3], out_shape=half),
                                          ds.dataset_mask(out_shape=half) > 0)
    # a selected band without nodata or mask: no pixel can have all bands nodata, and nothing is read
    data = np.zeros((2, 40, 40), np.uint8)
    path = _write(tmp_path / "plain.tif", data)
    with rasterio.open(path) as ds:
        assert mask_kind(ds, [1, 2]) == "all_valid"
        valid = valid_mask(ds, [1, 2], Window(30, -4, 16, 16), boundless=True)
    expected = np.zeros((16, 16), bool)
    expected[4:, :10] = True
    np.testing.assert_array_equal(valid, expected)


def test_all_valid_scene_reads_no_masks(tmp_path, monkeypatch):
    path = _write(tmp_path / "plain.tif", np.ones((3, 50, 50), np.uint8))
    reader = SceneReader(path, [1, 2, 3])
    try:
        def no_mask_reads(*args, **kwargs):
            raise AssertionError("mask read on an all-valid raster")

        monkeypatch.setattr(type(reader.ds), "read_masks", no_mask_reads)
        monkeypatch.setattr(type(reader.ds), "dataset_mask", no_mask_reads)
        assert reader.read(0, 0, 32)[1].all()
        _, valid = reader.read(32, 32, 32)  # edge tile: outside the raster is still invalid
        assert valid[:18, :18].all() and not valid[18:].any() and not valid[:, 18:].any()
    finally:
        reader.close()


def test_rgb_byte_pixels_zero_in_one_band_are_valid():
    """RGB.byte.tif (nodata 0): 710 pixels are 0 in one or two bands but not all three."""
    reader = SceneReader(DATA / "RGB.byte.tif", [1, 2, 3])
    try:
        _, valid = reader.read(0, 0, 800)
        valid = valid[:reader.ds.height, :reader.ds.width]
        raw = reader.ds.read()
    finally:
        reader.close()
    assert int((valid & (raw == 0).any(axis=0)).sum()) == 710
    np.testing.assert_array_equal(valid, (raw != 0).any(axis=0))


def test_statistics_count_zero_values_of_valid_pixels(tmp_path):
    """uint16: the 2–98 % stretch is taken over every valid pixel, zeros in one band included."""
    path, expected = partly_zero_scene(tmp_path / "scene.tif", np.uint16)
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float64)
    reader = SceneReader(path, [1, 2, 3])
    reader.close()
    for b in range(3):
        lo, hi = np.percentile(data[b][expected], (2, 98))
        assert reader.lo[b] == pytest.approx(lo) and reader.hi[b] == pytest.approx(hi)
    assert (reader.lo == 0).all()  # > 2 % of each band's valid pixels are 0


def test_coarse_view_valid_mask(tmp_path):
    from rrsis_cli.grounding import read_coarse_view

    path, expected = partly_zero_scene(tmp_path / "scene.tif", height=64, width=64)
    reader = SceneReader(path, [1, 2, 3])
    try:
        _, valid = read_coarse_view(reader, 64)
    finally:
        reader.close()
    np.testing.assert_array_equal(valid, expected)




@pytest.mark.parametrize("kind", list(SCENES))
def test_predict_mask_and_vectors_keep_every_valid_pixel(tmp_path, monkeypatch, kind):
    path, expected = SCENES[kind](tmp_path / "scene.tif")
    use_model(monkeypatch, ForegroundModel())
    manifest = predict([path], "foreground", ["all"], tmp_path / "out",
                       PredictOptions(tile_size=32, batch_size=16, device="cpu", block_size=48))
    assert manifest.exit_code == 0
    outputs = manifest.results[0].outputs
    with rasterio.open(outputs["mask"]) as ds:
        mask = ds.read(1)
    np.testing.assert_array_equal(mask, np.where(expected, 1, 255).astype(np.uint8))
    vectors = gpd.read_file(outputs["vectors"])
    assert int(vectors["pixels"].sum()) == int(expected.sum())
    assert vectors["area_m2"].sum() == pytest.approx(expected.sum() * 100.0)
    covered = vectors.to_crs(CRS).union_all()
    # GeoJSON coordinates are rounded to 7 decimals (RFC 7946 output, ~1 cm): the area is exact to ~1e-5
    assert covered.area == pytest.approx(expected.sum() * 100.0, rel=1e-5)

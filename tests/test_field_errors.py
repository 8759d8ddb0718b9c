"""Errors that say what happened, and stderr that stays machine-readable (issue 24, item 4).

* a truncated tiled GeoTIFF fails with one line naming the file, the window / tiles and GDAL's own message (not
  rasterio's "Read failed. See previous exception for details."), and the other scenes of the run are written;
* a raster container without bands (a GeoPackage with two raster tables) fails as an input error that lists
  its subdatasets, instead of stopping the run without a manifest;
* NaN pixels of float rasters are nodata; an extreme nodata value (-3.4e38) does not overflow the normalisation;
* with ``--log-format json`` every stderr line is a JSON object, library warnings included (subprocess run of
  ``python -m rrsis_cli predict`` over a float raster with NaN, one with -3.4e38 nodata and one without
  georeference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rrsis_cli import console
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.scene import SceneReader
from stub_models import PointwiseModel, use_model

ROOT = Path(__file__).parents[1]




@pytest.fixture()
def pointwise(monkeypatch):
    return use_model(monkeypatch, PointwiseModel())


@pytest.fixture(autouse=True)
def _reset_console():
    yield
    console.configure()


def _raster(path: Path, data: np.ndarray, georeferenced: bool = True, **profile) -> Path:
    meta = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
            "dtype": data.dtype.name}
    if georeferenced:
        meta.update(crs="EPSG:32618", transform=from_origin(500000, 4000000, 10, 10))
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


def _truncated_tiled_geotiff(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    _raster(path, data, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))
    return path


def _float_rasters(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1000, (3, 80, 96)).astype(np.float32)
    with_nan = values.copy()
    with_nan[:, 10:30, 20:50] = np.nan  # all bands: nodata
    with_nan[0, 50:60, 50:60] = np.nan  # one band only: data, its NaN read as 0
    extreme = values.copy()
    extreme[:, :, :24] = -3.4e38
    plain = rng.integers(0, 255, (3, 80, 96), dtype=np.uint8)
    return {"nan": _raster(folder / "float_nan.tif", with_nan),
            "extreme": _raster(folder / "float_extreme_nodata.tif", extreme, nodata=-3.4e38),
            "plain": _raster(folder / "not_georeferenced.tif", plain, georeferenced=False)}


def test_truncated_tile_names_file_window_and_gdal_message(pointwise, tmp_path):
    broken = _truncated_tiled_geotiff(tmp_path / "truncated.tif")
    good = _raster(tmp_path / "good.tif", np.random.default_rng(2).integers(0, 255, (3, 96, 96), dtype=np.uint8))
    manifest = predict([broken, good], "pointwise", ["x"], tmp_path / "out",
                       PredictOptions(tile_size=64, batch_size=4, device="cpu"))
    status = {Path(r.scene).name: r for r in manifest.results}
    assert status["good.tif"].status == "done" and manifest.exit_code == 3
    error = status["truncated.tif"].error
    assert status["truncated.tif"].status == "failed" and "\n" not in error
    assert error.startswith(f"{broken}: read failed in rows ")
    assert "cols " in error and "tile" in error  # the window and the file's internal tiles
    assert "TIFFReadEncodedTile" in error or "IReadBlock" in error  # GDAL's own words
    assert "See previous exception" not in error and "RasterioIOError" not in error


def _two_table_geopackage(path: Path) -> Path:
    profile = {"driver": "GPKG", "width": 32, "height": 32, "count": 3, "dtype": "uint8", "crs": "EPSG:3857",
               "transform": from_origin(0, 3200, 100, 100)}
    for table, extra in (("a", {}), ("b", {"APPEND_SUBDATASET": "YES"})):
        with rasterio.open(path, "w", RASTER_TABLE=table, **extra, **profile) as dst:
            dst.write(np.ones((3, 32, 32), np.uint8))
    return path


def test_raster_without_bands_is_an_input_error_and_the_run_goes_on(pointwise, tmp_path):
    empty = _two_table_geopackage(tmp_path / "two_tables.gpkg")
    good = _raster(tmp_path / "good.tif", np.random.default_rng(3).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    manifest = predict([empty, good], "pointwise", ["x"], tmp_path / "out",
                       PredictOptions(tile_size=64, device="cpu"))
    status = {Path(r.scene).name: r for r in manifest.results}
    assert status["good.tif"].status == "done"
    assert status["two_tables.gpkg"].status == "failed"
    assert status["two_tables.gpkg"].error == (
        f"{empty}: no raster bands; it holds 2 subdataset(s) (GPKG:{empty}:a, GPKG:{empty}:b): convert the one "
        "to segment to a GeoTIFF")
    assert (tmp_path / "out" / "manifest.json").exists() and manifest.exit_code == 3


def test_nan_is_nodata_and_extreme_nodata_does_not_overflow(tmp_path):
    scenes = _float_rasters(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow" / "invalid value" warnings fail the test
        reader = SceneReader(scenes["nan"], None)
        try:
            data, valid = reader.read(0, 0, 64)
            assert not valid[10:30, 20:50].any()  # NaN in every band: nodata
            assert valid[50:60, 50:60].all()  # NaN in one band: the pixel has data
            assert np.isfinite(data).all() and np.isfinite(reader.lo).all() and np.isfinite(reader.hi).all()
            assert not reader.valid()[10:30, 20:50].any() and reader.valid().sum() == 80 * 96 - 20 * 30
        finally:
            reader.close()
        reader = SceneReader(scenes["extreme"], None)
        try:
            data, valid = reader.read(0, 0, 64)
            assert not valid[:, :24].any() and valid[:, 24:].all()
            assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
            assert reader.lo.min() >= 0 and reader.hi.max() <= 1000  # statistics of the data, not the nodata
        finally:
            reader.close()


def test_warnings_are_one_console_line(capsys):
    import logging

    console.configure(log_format="text")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with console.routed_warnings():
            warnings.warn("something\n  odd happened", UserWarning, stacklevel=1)
        err = capsys.readouterr().err.splitlines()
        assert err == ["warning: UserWarning: something odd happened"]
        console.configure(log_format="json")
        before = warnings.showwarning, list(logging.getLogger().handlers)
        with console.routed_warnings():
            logging.getLogger("rasterio._env").warning("GDAL says %s", "hello")
            warnings.warn("careful", RuntimeWarning, stacklevel=1)
        assert (warnings.showwarning, logging.getLogger().handlers) == before  # restored on exit
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [("warning", "GDAL says hello"),
                                                             ("warning", "RuntimeWarning: careful")]
    assert records[0]["logger"] == "rasterio._env" and records[1]["category"] == "RuntimeWarning"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from rrsis_cli.models import build_model, save_model

    return save_model(build_model("lavt-tiny", seed=0), tmp_path_factory.mktemp("model") / "lavt-tiny")


def test_json_logs_only_json_lines_on_stderr(tmp_path, tiny_model):
    scenes = _float_rasters(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "rrsis_cli", "predict", *map(str, scenes.values()), "--model",
                           str(tiny_model), "--prompt", "the field", "--out", str(out), "--log-format", "json",
                           "--tile-size", "64", "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    lines = proc.stderr.splitlines()
    not_json = []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not not_json, "\n".join(not_json)
    assert all(isinstance(r, dict) and {"time", "level", "message"} <= set(r) for r in records)
    assert proc.returncode == 0, proc.stderr
    # the causes are fixed: no numpy warning about NaN casts or overflow is left to route
    assert not [r for r in records if r.get("category") == "RuntimeWarning"], records
    assert any("no georeference" in r["message"] for r in records)  # our own warning, as JSON
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert [r["status"] for r in results] == ["done"] * 3
    with rasterio.open(out / next(r["output_dir"] for r in results if "float_nan" in r["scene"]) / "mask.tif") as m:
        mask = m.read(1)
    assert (mask[10:30, 20:50] == 255).all() and (mask[50:60, 50:60] != 255).all()


def test_library_deprecation_notes_are_not_user_warnings(capsys):
    """A third-party DeprecationWarning (affine's "use @", seen in CI) is a note to developers: it must not
    appear as a warning in the user's log, whose content would then change with library versions."""
    console.configure(log_format="json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with console.routed_warnings():
            warnings.warn("Use `@` matmul", PendingDeprecationWarning, stacklevel=1)
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
            warnings.warn("real", UserWarning, stacklevel=1)
    console.configure(log_format="text")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [("warning", "UserWarning: real")]

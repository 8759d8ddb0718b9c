"""The mask is the product; vectors are derived. A derived stage that fails keeps the mask (status partial,
exit 3, prob.tif kept so a rerun re-derives without tiles); CRSs that cannot go to EPSG:4326 (another
celestial body) or that are compound (horizontal + vertical) still give vectors and areas."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import CRS
from rasterio.windows import Window

from rrsis_cli.predict import PredictOptions, predict
from stub_models import PromptPointwise, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
OPTIONS = dict(tile_size=64, device="cpu")


@pytest.fixture()
def model(monkeypatch):
    return use_model(monkeypatch, PromptPointwise())


def _crop(path: Path, crs=None, transform=None) -> Path:
    with rasterio.open(DATA / "RGB.byte.tif") as src:
        window = Window(300, 300, 128, 128)
        profile = {**src.profile, "width": 128, "height": 128, "tiled": False,
                   "transform": transform or src.window_transform(window)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        if crs is not None:
            profile["crs"] = rasterio.crs.CRS.from_wkt(CRS(crs).to_wkt())
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


def test_failed_vectors_keep_the_mask_and_a_rerun_rederives_them(model, monkeypatch, tmp_path):
    scene = _crop(tmp_path / "scene.tif")

    def broken(*args, **kwargs):
        raise RuntimeError("Unable to determine UTM CRS")

    monkeypatch.setattr("rrsis_cli.predict.write.vectorise", broken)
    out = tmp_path / "out"
    manifest = predict([scene], "m", ["water"], out, PredictOptions(**OPTIONS))
    result = manifest.results[0]
    assert result.status == "partial" and "vectors failed" in result.error and "UTM" in result.error
    assert manifest.exit_code == 3
    pair = out / result.output_dir
    assert (pair / "mask.tif").is_file() and (pair / "prob.tif").is_file()  # nothing finished is discarded
    assert not (pair / "mask.geojson").exists()
    written = json.loads((out / "manifest.json").read_text())
    assert written["results"][0]["status"] == "partial" and written["exit_code"] == 3

    monkeypatch.undo()
    use_model(monkeypatch, model)
    again = predict([scene], "m", ["water"], out, PredictOptions(**OPTIONS))
    assert again.results[0].status == "rethresholded" and again.results[0].tiles == 0
    assert (pair / "mask.geojson").is_file() and again.exit_code == 0


def test_a_crs_of_another_body_gets_vectors_in_its_own_crs(model, tmp_path):
    """Mars equirectangular (metres): GeoJSON cannot be EPSG:4326, so it is written in the scene's CRS with a crs
    member; GeoPackage carries the CRS; areas are pixel counts × pixel area."""
    mars = CRS("IAU_2015:49910")
    scene = _crop(tmp_path / "mars.tif", crs=mars,
                  transform=rasterio.transform.from_origin(1_000_000, 500_000, 20.0, 20.0))
    manifest = predict([scene], "m", ["water"], tmp_path / "out", PredictOptions(**OPTIONS))
    result = manifest.results[0]
    assert result.status == "done", result.error
    pair = tmp_path / "out" / result.output_dir
    text = json.loads((pair / "mask.geojson").read_text())
    assert "crs" in text and text["features"]
    x, y = np.array(text["features"][0]["geometry"]["coordinates"][0][0])
    assert 1_000_000 <= x <= 1_000_000 + 128 * 20 and 500_000 - 128 * 20 <= y <= 500_000
    frame = gpd.read_file(pair / "mask.geojson")
    assert CRS(frame.crs).equals(mars)  # the crs member names IAU_2015:49910 and GDAL reads it back
    assert frame["area_m2"].sum() == pytest.approx(frame["pixels"].sum() * 400.0)
    gpkg = predict([scene], "m", ["water"], tmp_path / "gpkg", PredictOptions(**OPTIONS, vector_format="gpkg"))
    layer = gpd.read_file(tmp_path / "gpkg" / gpkg.results[0].output_dir / "mask.gpkg")
    assert CRS(layer.crs).equals(mars)


@pytest.mark.parametrize("compound", ["EPSG:32618+5773", "EPSG:4326+5773"])
def test_a_compound_crs_uses_its_horizontal_part(model, tmp_path, compound):
    if compound.startswith("EPSG:4326"):
        transform = rasterio.transform.from_origin(-77.0, 38.0, 0.0002, 0.0002)
    else:
        transform = None
    scene = _crop(tmp_path / "compound.tif", crs=compound, transform=transform)
    manifest = predict([scene], "m", ["water"], tmp_path / "out", PredictOptions(**OPTIONS))
    result = manifest.results[0]
    assert result.status == "done", result.error
    frame = gpd.read_file(tmp_path / "out" / result.output_dir / "mask.geojson")
    assert frame.crs.to_epsg() == 4326 and len(frame)
    assert (frame["area_m2"] > 0).all()
    expected = frame.to_crs(frame.estimate_utm_crs()).area.sum()
    assert frame["area_m2"].sum() == pytest.approx(expected, rel=0.02)

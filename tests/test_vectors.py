"""Vector outputs of predict: every advertised format opens with pyogrio/geopandas, a failed pair leaves nothing
at its final paths, optional writers are checked before the model loads, and the GeoJSON follows RFC 7946."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import torch

from helpers import pair_dir
from rrsis_cli.errors import UsageError
from rrsis_cli.predict import PredictOptions, predict
from stub_models import PointwiseModel, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
SCENE = DATA / "rgbn_5m.tif"  # 515 x 403, EPSG:32618, 5 m pixels
FORMATS = {"geojson": "mask.geojson", "gpkg": "mask.gpkg", "fgb": "mask.fgb", "parquet": "mask.parquet"}


@pytest.fixture()
def pointwise(monkeypatch):
    return use_model(monkeypatch, PointwiseModel())


class EmptyModel(PointwiseModel):
    """Background everywhere: every mask is empty."""

    def forward_with_text(self, x, text):
        fg = torch.full_like(x[:, 0], -10.0)
        return torch.stack([torch.zeros_like(fg), fg], 1)


def _run(out: Path, **options) -> tuple[dict, Path]:
    predict([SCENE], "pointwise", ["red things"], out,
            PredictOptions(tile_size=128, batch_size=16, device="cpu", **options))
    written = json.loads((out / "manifest.json").read_text())
    return written, pair_dir(out, SCENE, "red things")


def _mask_pixels(directory: Path) -> int:
    with rasterio.open(directory / "mask.tif") as ds:
        return int((ds.read(1) == 1).sum())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_vector_format_is_written_and_opens(pointwise, tmp_path, fmt):
    written, directory = _run(tmp_path, vector_format=fmt, save_prob=True)
    result = written["results"][0]
    assert written["exit_code"] == 0 and result["status"] == "done", result["error"]
    path = directory / FORMATS[fmt]
    assert path.is_file()  # not a directory (FlatGeobuf), not left under a temporary name
    assert sorted(p.name for p in directory.iterdir()) == sorted(["mask.tif", "prob.tif", FORMATS[fmt]])
    if fmt == "parquet":
        frame = gpd.read_parquet(path)
    else:
        layers = pyogrio.list_layers(path)
        assert [str(name) for name in layers[:, 0]] == ["mask"]  # an explicit layer name, no temporary name
        frame = gpd.read_file(path, layer="mask")
    assert len(frame) > 0 and {"prompt", "score", "pixels", "area_m2"} <= set(frame.columns)
    assert int(frame["pixels"].sum()) == _mask_pixels(directory)
    assert frame["area_m2"].sum() == pytest.approx(_mask_pixels(directory) * 25.0)
    # GeoJSON is EPSG:4326 (RFC 7946); GeoPackage, FlatGeobuf and GeoParquet keep the scene's CRS
    with rasterio.open(SCENE) as src:
        expected = 4326 if fmt == "geojson" else src.crs.to_epsg()
    assert frame.crs.to_epsg() == expected
    # the feature count is a number in the manifest, not a string among the output paths
    assert result["features"] == len(frame) and isinstance(result["features"], int)
    assert "features" not in result["outputs"] and result["outputs"]["vectors"] == str(path)


def test_a_mask_fgb_directory_of_an_earlier_version_is_replaced(pointwise, tmp_path):
    _, directory = _run(tmp_path, vector_format="fgb")
    (directory / "mask.fgb").unlink()
    (directory / "mask.fgb").mkdir()
    (directory / "mask.fgb" / ".mask.fgb.fgb").write_bytes(b"")
    written, _ = _run(tmp_path, vector_format="fgb", overwrite=True)
    assert written["results"][0]["status"] == "done" and (directory / "mask.fgb").is_file()
    assert len(gpd.read_file(directory / "mask.fgb")) == written["results"][0]["features"]


def test_failed_vectors_keep_the_mask_without_temporary_files(pointwise, tmp_path, monkeypatch):
    """Vectors are derived: when writing them fails the pair is partial, its mask and prob.tif are kept."""
    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("pyogrio.write_arrow", broken)  # the GeoPackage writer
    written, directory = _run(tmp_path, vector_format="gpkg", save_prob=True)
    assert written["exit_code"] == 3 and written["results"][0]["status"] == "partial"
    assert "No space left on device" in written["results"][0]["error"]
    assert sorted(p.name for p in directory.iterdir()) == ["mask.tif", "prob.tif"]  # no vectors, no temporaries


def test_a_failed_pair_leaves_nothing_at_its_final_paths(pointwise, tmp_path, monkeypatch):
    import rrsis_cli.predict.write

    real = rrsis_cli.predict.write.to_cog

    def broken(src, dst, tags, threads=1):
        if Path(dst).name == "mask.tif":
            raise OSError("No space left on device")
        real(src, dst, tags, threads)

    monkeypatch.setattr("rrsis_cli.predict.write.to_cog", broken)
    written, directory = _run(tmp_path, vector_format="gpkg", save_prob=True)
    assert written["exit_code"] == 1 and written["results"][0]["status"] == "failed"
    assert "No space left on device" in written["results"][0]["error"]
    left = [p.name for p in directory.iterdir()] if directory.exists() else []
    assert left == []  # no prob.tif, no vectors, no temporary files


def test_missing_parquet_writer_is_a_usage_error_before_the_model_loads(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("rrsis_cli.models.load_model", lambda spec, device="cpu": loaded.append(spec))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(UsageError, match="pyarrow"):
        predict([SCENE], "pointwise", ["x"], tmp_path, PredictOptions(tile_size=128, device="cpu",
                                                                       vector_format="parquet"))
    assert loaded == []


# ------------------------------------------------------------------------------------------------ RFC 7946
def _signed_area(ring: list[list[float]]) -> float:
    """Shoelace: > 0 for a counter-clockwise ring (lon/lat axes)."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _polygons(geometry: dict) -> list:
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else list(geometry["coordinates"])


def test_geojson_follows_rfc7946(pointwise, tmp_path):
    scene = DATA / "RGB.byte.tif"  # EPSG:32618, regions with holes
    predict([scene], "pointwise", ["x"], tmp_path, PredictOptions(tile_size=128, batch_size=16, device="cpu"))
    text = (pair_dir(tmp_path, scene, "x") / "mask.geojson").read_text()
    raw = json.loads(text, parse_float=str)  # numbers exactly as written
    assert raw["type"] == "FeatureCollection" and "crs" not in raw
    assert "tmp" not in raw.get("name", "") and raw.get("name", "mask") == "mask"
    decimals = [len(m) for m in re.findall(r"-?\d+\.(\d+)", json.dumps([f["geometry"] for f in raw["features"]]))]
    assert decimals and max(decimals) <= 7  # coordinates rounded to 1e-7 degree (about 1 cm)
    doc = json.loads(text)
    holes = 0
    for feature in doc["features"]:
        for polygon in _polygons(feature["geometry"]):
            exterior, *interiors = polygon
            assert _signed_area(exterior) > 0  # exterior rings counter-clockwise
            assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in exterior)  # lon/lat
            for ring in interiors:
                assert _signed_area(ring) < 0  # holes clockwise
                holes += 1
    assert holes > 0  # the scene exercises hole orientation


def test_empty_geojson_is_rfc7946_too(tmp_path, monkeypatch):
    use_model(monkeypatch, EmptyModel())
    written, directory = _run(tmp_path)
    assert written["exit_code"] == 0 and written["results"][0]["features"] == 0
    doc = json.loads((directory / "mask.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == [] and "crs" not in doc
    assert gpd.read_file(directory / "mask.geojson").crs.to_epsg() == 4326


@pytest.mark.parametrize("fmt", ["gpkg", "fgb"])
def test_empty_gpkg_and_fgb_keep_the_scene_crs(tmp_path, monkeypatch, fmt):
    use_model(monkeypatch, EmptyModel())
    written, directory = _run(tmp_path, vector_format=fmt)
    assert written["exit_code"] == 0 and written["results"][0]["features"] == 0
    info = pyogrio.read_info(directory / FORMATS[fmt], layer="mask")
    assert info["crs"] == "EPSG:32618" and info["geometry_type"] == "Polygon"
    types = dict(zip(info["fields"], info["dtypes"], strict=True))
    assert types["pixels"] == "int64" and types["score"] == types["area_m2"] == "float64"

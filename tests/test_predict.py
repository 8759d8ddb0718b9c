"""rrsis predict: exact stitching, georeference, nodata, COG validity, vectors, text cache, skip, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from helpers import pair_dir
from rrsis_cli.predict import PredictOptions, blend_weights, predict, tile_origins
from stub_models import PointwiseModel, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"




def pointwise_reference(path: Path) -> np.ndarray:
    """The whole-image computation of the pointwise model (uint8 scene, /255), with predict's mask rule: the
    probability quantised as in prob.tif (round(p × 254)) compared with the threshold."""
    with rasterio.open(path) as ds:
        x = ds.read([1, 2, 3]).astype(np.float32) / 255.0
        valid = ds.dataset_mask() > 0  # GDAL's convention: nodata only where all bands are
    fg = 8.0 * (x[0] - 0.5 * x[1] - 0.25 * x[2]) - 0.6
    prob = 1 / (1 + np.exp(-fg))
    out = (np.round(prob * 254) / 254 >= 0.5).astype(np.uint8)
    out[~valid] = 255
    return out


@pytest.fixture()
def pointwise(monkeypatch):
    return use_model(monkeypatch, PointwiseModel())


def test_grid_and_weights():
    assert tile_origins(100, 64, 48) == [0, 36]
    assert tile_origins(40, 64, 48) == [0]
    assert tile_origins(200, 64, 48) == [0, 48, 96, 136]
    w = blend_weights(64)
    assert w.shape == (64, 64) and w.min() > 0 and np.allclose(w, w.T)


@pytest.mark.parametrize("tile,overlap", [(64, 0.25), (96, 0.5), (32, 0.0)])
def test_stitching_is_exact_for_a_pointwise_model(pointwise, tmp_path, tile, overlap):
    scene = DATA / "RGB.byte.tif"  # rotated nodata collar, 791 x 718, EPSG:32618
    manifest = predict([scene], "pointwise", ["anything"], tmp_path,
                       PredictOptions(tile_size=tile, overlap=overlap, batch_size=16, device="cpu"))
    assert manifest.exit_code == 0
    mask_path = pair_dir(tmp_path, scene, "anything") / "mask.tif"
    with rasterio.open(mask_path) as out, rasterio.open(scene) as src:
        assert out.crs == src.crs and out.transform == src.transform
        assert (out.width, out.height) == (src.width, src.height)
        got = out.read(1)
    np.testing.assert_array_equal(got, pointwise_reference(scene))
    assert (got == 255).any() and (got == 1).any()


def test_outputs_cog_vectors_nodata_and_text_cache(pointwise, tmp_path):
    scenes = [DATA / "RGB.byte.tif", DATA / "rgbn_5m.tif"]
    manifest = predict(scenes, "pointwise", ["red things", "other"], tmp_path,
                       PredictOptions(tile_size=64, batch_size=32, device="cpu"))
    assert manifest.exit_code == 0 and pointwise.encoder_calls == 2 == manifest.encoder_calls
    rgb = next(r for r in manifest.results if "RGB.byte" in r.scene)
    assert rgb.tiles_skipped_nodata > 0  # whole-nodata tiles of the collar are never run
    mask = pair_dir(tmp_path, scenes[0], "red things") / "mask.tif"
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(mask))
    assert valid, errors
    if shutil.which("gdalinfo"):
        validator = Path("/usr/share/doc/python3-gdal/examples/validate_cloud_optimized_geotiff.py")
        if validator.exists():
            res = subprocess.run(["/usr/bin/python3", str(validator), str(mask)], capture_output=True, text=True)
            assert res.returncode == 0 and "is a valid cloud optimized GeoTIFF" in res.stdout, res.stdout + res.stderr
    with rasterio.open(mask) as ds:
        tags = ds.tags()
        assert tags["prompt"] == "red things" and tags["model_sha256"] == "pointwise-test"
        assert ds.overviews(1) and ds.profile["compress"].lower() == "deflate"
        pixels = int((ds.read(1) == 1).sum())
        pixel_area = abs(ds.transform.a * ds.transform.e)
    vectors = gpd.read_file(mask.with_name("mask.geojson"))
    assert vectors.crs.to_epsg() == 4326
    assert int(vectors["pixels"].sum()) == pixels
    assert vectors["area_m2"].sum() == pytest.approx(pixels * pixel_area, rel=0.005)
    assert ((vectors["score"] >= 0.5) & (vectors["score"] <= 1)).all()  # mean of p >= 0.5, stored as p x 254
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["encoder_calls"] == 2 and len(written["results"]) == 4


def test_skip_existing_overwrite_and_changed_options(pointwise, tmp_path):
    scene = DATA / "rgbn_5m.tif"
    opts = PredictOptions(tile_size=64, device="cpu")
    predict([scene], "pointwise", ["x"], tmp_path, opts)
    again = predict([scene], "pointwise", ["x"], tmp_path, opts)
    assert again.results[0].status == "skipped-existing"
    changed = predict([scene], "pointwise", ["x"], tmp_path, PredictOptions(tile_size=64, threshold=0.7, device="cpu"))
    assert changed.results[0].status == "done"  # another configuration is never silently skipped
    forced = predict([scene], "pointwise", ["x"], tmp_path, PredictOptions(tile_size=64, threshold=0.7,
                                                                            device="cpu", overwrite=True))
    assert forced.results[0].status == "done"


def test_determinism_byte_identical(pointwise, tmp_path):
    scene = DATA / "L7_ETMs.tif"  # 6 bands, EPSG:31985
    for name in ("a", "b"):
        predict([scene], "pointwise", ["x"], tmp_path / name, PredictOptions(tile_size=64, device="cpu",
                                                                             bands=[3, 2, 1]))
    a = (pair_dir(tmp_path / "a", scene, "x") / "mask.tif").read_bytes()
    assert a == (pair_dir(tmp_path / "b", scene, "x") / "mask.tif").read_bytes()


def test_uint16_scene_uses_scene_level_stretch(pointwise, tmp_path):
    manifest = predict([DATA / "landsat8_uint16_crop.tif"], "pointwise", ["x"], tmp_path,
                       PredictOptions(tile_size=128, device="cpu"))
    norm = manifest.inputs[0]["normalisation"]
    assert manifest.exit_code == 0 and all(5000 < lo < hi < 30000 for lo, hi in zip(norm["low"], norm["high"], strict=True))


def _cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "rrsis_cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def test_exit_codes(tmp_path):
    model = "lavt-tiny"
    scene = str(DATA / "rgbn_5m.tif")
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00not really a tiff")
    ok = _cli("predict", scene, "--model", model, "--prompt", "a roof", "--out", str(tmp_path / "o0"),
              "--tile-size", "128", "--allow-random-weights")
    assert ok.returncode == 0, ok.stderr
    partial = _cli("predict", scene, str(bad), "--model", model, "--prompt", "a roof", "--out",
                   str(tmp_path / "o3"), "--tile-size", "128", "--allow-random-weights")
    assert partial.returncode == 3 and f"{bad}: not a readable raster" in partial.stderr
    assert (pair_dir(tmp_path / "o3", scene, "a roof") / "mask.tif").exists()
    assert not list((tmp_path / "o3").glob("broken*"))  # nothing partial for the failed scene
    fatal = _cli("predict", str(bad), "--model", model, "--prompt", "a roof", "--out", str(tmp_path / "o1"),
                 "--allow-random-weights")
    assert fatal.returncode == 1
    usage = _cli("predict", scene, "--model", model, "--out", str(tmp_path / "o2"), "--overlap", "1.5",
                 "--prompt", "x", "--allow-random-weights")
    assert usage.returncode == 2


@pytest.mark.parametrize("card", ["rmsin-tiny", "lgce-tiny", "btdnet-tiny"])
def test_predict_runs_every_architecture_through_the_registry(card, tmp_path):
    manifest = predict([DATA / "rgbn_5m.tif"], card, ["the roof"], tmp_path,
                       PredictOptions(tile_size=128, batch_size=8, device="cpu", allow_random_weights=True))
    assert manifest.exit_code == 0 and manifest.results[0].status == "done"
    with rasterio.open(pair_dir(tmp_path, DATA / "rgbn_5m.tif", "the roof") / "mask.tif") as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1}

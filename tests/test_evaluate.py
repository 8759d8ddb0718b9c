"""rrsis evaluate: dataset mode end to end, and scene masks against ground-truth vectors by georeference."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box

from rrsis_cli.evaluate import evaluate_scenes, pair_scenes
from rrsis_cli.models import build_model, save_model
from synthetic import write_folder_dataset


def _evaluate(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "rrsis_cli", "evaluate", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_dataset_evaluation_cli_writes_all_outputs(tmp_path):
    root = write_folder_dataset(tmp_path / "data", {"test": 5})
    save_model(build_model("lavt-tiny", seed=0), tmp_path / "model")
    res = _evaluate("--dataset", "folder", "--root", root, "--split", "test", "--model", tmp_path / "model",
                    "--out", tmp_path / "ev", "--batch-size", "4", "--save-masks")
    assert res.returncode == 0, res.stderr
    ev = tmp_path / "ev"
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "n_samples", "protocol",
                "empty_union", "strict", "scored_at", "dataset", "model", "per_category", "per_attribute"):
        assert key in metrics
    assert metrics["n_samples"] == 10 and 0 <= metrics["mIoU"] <= 1 and metrics["protocol"] == "official"
    assert len(metrics["dataset"]["fingerprint"]) == 64 and len(metrics["model"]["sha256"]) == 64
    rows = list(csv.DictReader(open(ev / "per_sample.csv")))
    assert len(rows) == 10 and set(metrics["per_category"]) == {"red", "blue"}
    assert metrics["per_attribute"]["colour"]["n_samples"] == 10  # the fixture's attribute column
    assert np.mean([float(r["IoU"]) for r in rows]) == pytest.approx(metrics["mIoU"])
    assert "mIoU" in res.stdout  # the table
    for plot in ("iou_histogram.png", "precision_curve.png"):
        assert (ev / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.stem for p in (ev / "masks").glob("*.png")) == sorted(r["id"] for r in rows)


def test_saved_predictions_score_like_the_model_and_missing_ones_are_listed(tmp_path):
    """--predictions scores the masks written by --save-masks: with the native protocol the numbers equal the
    model's own run exactly; a missing prediction file is an error that names the sample ids."""
    root = write_folder_dataset(tmp_path / "data", {"test": 4})
    save_model(build_model("lavt-tiny", seed=1), tmp_path / "model")
    common = ("--dataset", "folder", "--root", root, "--split", "test", "--protocol", "native")
    res = _evaluate(*common, "--model", tmp_path / "model", "--out", tmp_path / "run", "--save-masks")
    assert res.returncode == 0, res.stderr
    res = _evaluate(*common, "--predictions", tmp_path / "run" / "masks", "--out", tmp_path / "saved",
                    "--no-plots")
    assert res.returncode == 0, res.stderr
    ran = list(csv.DictReader(open(tmp_path / "run" / "per_sample.csv")))
    scored = list(csv.DictReader(open(tmp_path / "saved" / "per_sample.csv")))
    assert [(r["id"], r["I"], r["U"]) for r in ran] == [(r["id"], r["I"], r["U"]) for r in scored]
    assert not (tmp_path / "saved" / "iou_histogram.png").exists()
    first = ran[0]["id"]
    (tmp_path / "run" / "masks" / f"{first}.png").unlink()
    res = _evaluate(*common, "--predictions", tmp_path / "run" / "masks", "--out", tmp_path / "bad")
    assert res.returncode == 1 and "1 of 8 predictions missing" in res.stderr and first in res.stderr
    assert not (tmp_path / "bad").exists()  # nothing written for a refused run
    res = _evaluate("--dataset", "folder", "--root", root, "--out", tmp_path / "x")
    assert res.returncode == 2 and "--model / --predictions" in res.stderr


def test_scene_iou_against_wgs84_polygons_at_another_resolution(tmp_path):
    """Prediction: a UTM raster (10 m) with a 300x200 m rectangle and a nodata strip. GT: a polygon in EPSG:4326
    overlapping it. IoU must match the polygon-area computation within 1 %."""
    crs = "EPSG:32633"
    x0, y0 = 500_000.0, 5_000_000.0
    transform = from_origin(x0, y0, 10.0, 10.0)
    pred = np.zeros((100, 100), np.uint8)
    pred[20:40, 10:40] = 1  # rows 20-40 (200 m), cols 10-40 (300 m)
    pred[:, 90:] = 255  # nodata strip, excluded
    profile = {"driver": "GTiff", "width": 100, "height": 100, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": transform, "nodata": 255, "tiled": True, "blockxsize": 32, "blockysize": 32}
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(pred, 1)
    pred_poly = box(x0 + 100, y0 - 400, x0 + 400, y0 - 200)
    gt_utm = Polygon([(x0 + 250, y0 - 450), (x0 + 600, y0 - 450), (x0 + 600, y0 - 250), (x0 + 250, y0 - 250)])
    gpd.GeoDataFrame(geometry=[gt_utm], crs=crs).to_crs("EPSG:4326").to_file(tmp_path / "gt.geojson")
    expected = pred_poly.intersection(gt_utm).area / pred_poly.union(gt_utm).area
    summary = evaluate_scenes(pair_scenes(tmp_path / "mask.tif", tmp_path / "gt.geojson"), tmp_path / "ev")
    assert summary["n_scenes"] == 1
    assert summary["IoU"] == pytest.approx(expected, rel=0.01)
    assert summary["precision"] == pytest.approx(150 * 150 / (300 * 200), rel=0.02)
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"IoU", "precision", "recall", "F1", "n_scenes"} <= set(written)


def test_scene_iou_against_a_wgs84_mask_raster_at_another_resolution(tmp_path):
    """GT as a mask GeoTIFF in EPSG:4326 (about 3 m pixels, nodata outside a footprint) against a 10 m UTM
    prediction: warped onto the prediction grid by georeference; IoU within 1 % of the polygon computation."""
    from rasterio.features import rasterize
    from rasterio.transform import from_bounds

    crs = "EPSG:32633"
    x0, y0 = 500_000.0, 5_000_000.0
    pred = np.zeros((100, 100), np.uint8)
    pred[20:40, 10:40] = 1
    profile = {"driver": "GTiff", "width": 100, "height": 100, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": from_origin(x0, y0, 10.0, 10.0), "nodata": 255}
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(pred, 1)
    pred_poly = box(x0 + 100, y0 - 400, x0 + 400, y0 - 200)
    gt_utm = Polygon([(x0 + 250, y0 - 450), (x0 + 600, y0 - 450), (x0 + 600, y0 - 250), (x0 + 250, y0 - 250)])
    gt_wgs = gpd.GeoSeries([gt_utm], crs=crs).to_crs("EPSG:4326")
    west, south, east, north = gpd.GeoSeries([box(x0, y0 - 1000, x0 + 1000, y0)], crs=crs).to_crs(
        "EPSG:4326").total_bounds
    width, height = 330, 330  # about 3 m pixels
    transform = from_bounds(west, south, east, north, width, height)
    gt = rasterize(gt_wgs, out_shape=(height, width), transform=transform, fill=0, default_value=1, dtype="uint8")
    gt[:, : width // 20] = 255  # a strip of nodata far from both shapes: excluded, changes nothing
    gt_profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
                  "crs": "EPSG:4326", "transform": transform, "nodata": 255}
    (tmp_path / "gt").mkdir()
    with rasterio.open(tmp_path / "gt" / "scene.tif", "w", **gt_profile) as dst:
        dst.write(gt, 1)
    expected = pred_poly.intersection(gt_utm).area / pred_poly.union(gt_utm).area
    pairs = pair_scenes(tmp_path / "scene.tif", tmp_path / "gt" / "scene.tif")
    summary = evaluate_scenes(pairs, tmp_path / "ev")
    assert summary["IoU"] == pytest.approx(expected, rel=0.01)
    (tmp_path / "pairs.csv").write_text("pred,gt\nscene.tif,gt/scene.tif\n")
    res = _evaluate("--pairs", tmp_path / "pairs.csv", "--out", tmp_path / "ev2")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["IoU"] == pytest.approx(summary["IoU"])


def _write_gt_raster(path, label, transform, style, invalid):
    """A ground-truth mask GeoTIFF in EPSG:4326 with ``invalid`` pixels marked by ``style``: a nodata value, an
    alpha band, or an internal mask (no nodata value)."""
    from rasterio.enums import ColorInterp

    height, width = label.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
               "crs": "EPSG:4326", "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256}
    if style == "nodata":
        with rasterio.open(path, "w", **profile, nodata=255) as dst:
            dst.write(np.where(invalid, 255, label).astype(np.uint8), 1)
    elif style == "alpha":
        with rasterio.open(path, "w", **{**profile, "count": 2}) as dst:
            dst.write(label, 1)
            dst.write(np.where(invalid, 0, 255).astype(np.uint8), 2)
            dst.colorinterp = [ColorInterp.gray, ColorInterp.alpha]
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(label, 1)
            dst.write_mask(np.where(invalid, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("gt_pixel_m,style", [(25.0, "nodata"), (2.5, "nodata"), (25.0, "alpha"),
                                              (2.5, "alpha"), (25.0, "internal_mask")])
def test_scene_iou_against_wgs84_raster_gt_coarser_and_finer_matches_polygons(tmp_path, gt_pixel_m, style):
    """Prediction: 10 m UTM. Ground truth: the rasterised polygon in EPSG:4326 at about 25 m (coarser) or 2.5 m
    (finer), covering only part of the prediction, with a strip of invalid pixels (nodata value, alpha band or
    internal mask). Reprojected onto the prediction grid (nearest), the IoU, precision and recall agree within
    1 % with the polygon areas computed with shapely over the pixels valid in both (prediction nodata, ground
    truth nodata and everything outside the ground truth's extent excluded)."""
    from rasterio.features import rasterize
    from rasterio.transform import from_bounds
    from shapely import affinity
    from shapely.geometry import Point

    crs = "EPSG:32633"
    x0, y0, size = 500_000.0, 5_000_000.0, 500  # 5 km at 10 m
    pred_poly = affinity.rotate(box(x0 + 800, y0 - 3800, x0 + 3200, y0 - 1400), 30, origin="center")
    gt_poly = Point(x0 + 3000, y0 - 2500).buffer(1200)
    pred = rasterize([pred_poly], out_shape=(size, size), transform=from_origin(x0, y0, 10.0, 10.0), fill=0,
                     default_value=1, dtype="uint8")
    pred[:, 380:] = 255  # prediction nodata east of x0 + 3800: cuts the ground-truth disc
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": from_origin(x0, y0, 10.0, 10.0), "nodata": 255, "tiled": True, "blockxsize": 128,
               "blockysize": 128}
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(pred, 1)
    pred_valid = box(x0, y0 - 10.0 * size, x0 + 3800, y0)

    # ground truth: a lon/lat grid over x0+1500 .. x0+5000 (its west edge cuts the prediction's rectangle)
    west, south, east, north = gpd.GeoSeries([box(x0 + 1500, y0 - 5000, x0 + 5000, y0)], crs=crs).to_crs(
        "EPSG:4326").total_bounds
    width, height = round(3500 / gt_pixel_m), round(5000 / gt_pixel_m)
    transform = from_bounds(west, south, east, north, width, height)
    gt_wgs = gpd.GeoSeries([gt_poly], crs=crs).to_crs("EPSG:4326")
    label = rasterize(gt_wgs, out_shape=(height, width), transform=transform, fill=0, default_value=1,
                      dtype="uint8")
    rows = np.arange(height)
    strip = (rows >= round(0.46 * height)) & (rows < round(0.54 * height))  # invalid rows across both shapes
    _write_gt_raster(tmp_path / "gt.tif", label, transform, style, np.broadcast_to(strip[:, None], label.shape))

    lat = lambda row: north - row * (north - south) / height  # noqa: E731
    footprint = box(west, south, east, north).difference(
        box(west, lat(round(0.54 * height)), east, lat(round(0.46 * height))))
    footprint_utm = gpd.GeoSeries([footprint.segmentize(1e-4)], crs="EPSG:4326").to_crs(crs).iloc[0]
    scored = footprint_utm.intersection(pred_valid)
    p, g = pred_poly.intersection(scored), gt_poly.intersection(scored)
    inter = p.intersection(g).area
    expected = {"IoU": inter / p.union(g).area, "precision": inter / p.area, "recall": inter / g.area}
    assert 0.2 < expected["IoU"] < 0.8 and scored.area < 0.7 * pred_valid.area  # every exclusion matters

    summary = evaluate_scenes(pair_scenes(tmp_path / "mask.tif", tmp_path / "gt.tif"), tmp_path / "ev")
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=0.01), key


def test_prediction_internal_mask_is_excluded(tmp_path):
    """A prediction mask without a nodata value but with an internal mask (GDAL's convention): masked pixels are
    not scored, like 255."""
    crs, x0, y0 = "EPSG:32633", 500_000.0, 5_000_000.0
    pred = np.zeros((64, 64), np.uint8)
    pred[10:30, 10:50] = 1
    mask = np.full((64, 64), 255, np.uint8)
    mask[:, :32] = 0  # the western half is masked out
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": from_origin(x0, y0, 10.0, 10.0)}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(pred, 1)
        dst.write_mask(mask)
    gt = box(x0 + 100, y0 - 400, x0 + 400, y0 - 100)  # cols 10-40, rows 10-40
    gpd.GeoDataFrame(geometry=[gt], crs=crs).to_file(tmp_path / "gt.geojson")
    row = evaluate_scenes([(tmp_path / "mask.tif", tmp_path / "gt.geojson")], tmp_path / "ev")["scenes"][0]
    assert (row["TP"], row["FP"], row["FN"]) == (20 * 8, 20 * 10, 10 * 8)  # only columns 32 and east count

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


def test_dataset_evaluation_cli_writes_all_outputs(tmp_path):
    root = write_folder_dataset(tmp_path / "data", {"test": 5})
    save_model(build_model("lavt-tiny", seed=0), tmp_path / "model")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "evaluate", "--dataset", "folder", "--root", str(root),
                          "--split", "test", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "ev"),
                          "--batch-size", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "n_samples", "protocol"):
        assert key in metrics
    assert metrics["n_samples"] == 10 and 0 <= metrics["mIoU"] <= 1 and metrics["protocol"] == "official"
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_sample.csv")))
    assert len(rows) == 10 and set(metrics["per_category"]) == {"red", "blue"}
    assert np.mean([float(r["IoU"]) for r in rows]) == pytest.approx(metrics["mIoU"])
    assert "mIoU" in res.stdout  # the table


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

"""rrsis bench: builds a mirror-tiled scene from real imagery, measures predict in a child process and the
forward alone; the report has every stage, the ratio and the child's own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

from rrsis_cli.bench import STAGES, build_scene

DATA = Path(__file__).parents[1] / "examples" / "data"


def test_build_scene_mirror_tiles_the_source(tmp_path):
    source = DATA / "RGB.byte.tif"
    scene = build_scene(source, tmp_path / "big.tif", 2000, block=512)
    with rasterio.open(source) as src, rasterio.open(scene) as big:
        assert (big.width, big.height, big.count) == (2000, 2000, src.count)
        assert big.crs == src.crs and big.transform == src.transform
        original = src.read()
        h, w = src.height, src.width
        # position (h + 5, w + 7) mirrors back to (h - 6, w - 8); 2h + 3 wraps to 3
        assert np.array_equal(big.read(window=((h + 5, h + 6), (w + 7, w + 8)))[:, 0, 0], original[:, h - 6, w - 8])
        assert np.array_equal(big.read(window=((2 * h + 3, 2 * h + 4), (0, 1)))[:, 0, 0], original[:, 3, 0])


def test_bench_cli_reports_stages_ratio_and_memory(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "bench", "--model", "lavt-tiny", "--out",
                          str(tmp_path), "--size", "300", "--tile-size", "64", "--repeats", "1", "--device", "cpu",
                          "--forward-tiles", "8", "--batch-size", "4"],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    predict = report["predict"]
    assert predict["tiles"] == 36 and predict["encoder_calls"] == 1  # 6 x 6 tiles of 64 px at stride 48
    assert set(predict["stages_s"]) == set(STAGES) and predict["stages_s"]["infer"] > 0
    assert predict["peak_rss_mb"] > 50 and predict["km2_per_hour"] > 0
    assert report["forward_only"]["tiles"] == 8 and report["ratio_predict_to_forward"] > 0
    assert "ratio predict / forward" in res.stdout


def test_bench_pipeline_reports_the_ceiling_stages_reads_and_journal(tmp_path):
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "bench", "--pipeline", "--out", str(tmp_path),
                          "--size", "600", "--tile-size", "128", "--repeats", "1", "--prompts", "2",
                          "--read-workers", "2", "--source", str(DATA / "RGB.byte.tif")],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "pipeline.json").read_text())
    assert report["model"] == "null" and report["prompts"] == 2
    assert report["raw_read_mpx_per_s"] > 0 and report["pipeline_mpx_per_s"] > 0
    assert report["reads_per_tile"] == 1.0  # two prompts, one read per tile
    assert report["work_bytes_per_pixel"] <= 1.05  # 1 byte per pixel, plus file-system blocks and the journal text
    assert set(report["stages_s"]) == set(STAGES) and report["bounding_stage"] in report["stages_s"]
    assert report["peak_rss_mb"] > 50
    assert "ratio pipeline / raw read" in res.stdout

"""`rrsis predict --dry-run`: the plan (scene, size, bands, dtype, CRS, tiles, nodata fraction, outputs that would be
skipped, disk estimate) without loading the model and without writing anything, not even OUT."""

from __future__ import annotations

import hashlib
import json

import pytest
from front_helpers import refuse_model_loading, run_cli, write_scene


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_dry_run_plans_without_model_and_writes_nothing(capsys, no_model, tmp_path, model):
    scene = write_scene(tmp_path / "scene.tif", count=3, size=200, nodata_rows=50)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", scene, "-m", model, "-p", "the roof", "-p", "water",
                                "-o", out, "--dry-run", "--json", "--tile-size", "64", "--save-prob")
    assert code == 0, err
    assert no_model == [] and not out.exists()
    plan = json.loads(stdout)
    weights = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert plan["model"] == "lavt-tiny" and plan["model_sha256"] == weights
    assert plan["tile_size"] == 64
    (row,) = plan["scenes"]
    assert (row["width"], row["height"], row["bands"], row["band_count"]) == (200, 200, [1, 2, 3], 3)
    assert row["dtype"] == "uint8" and row["crs"] == "EPSG:32618"
    assert row["tiles"] == 16  # 200 px, tile 64, stride 48: origins 0, 48, 96, 136 per axis
    assert row["nodata_fraction"] == pytest.approx(0.25, abs=0.02)
    assert row["prompts_to_run"] == 2 and row["prompts_finished"] == []
    disk = row["disk_bytes"]
    assert disk["outputs"] == 2 * 2 * (200 * 200 * 4 // 3)  # two prompts x (mask + prob), overviews included
    assert disk["journal"] == 16 * 64 * 64 * 4
    assert [r["status"] for r in plan["results"]] == ["dry-run", "dry-run"]


def test_dry_run_table_and_the_skipped_outputs(capsys, tmp_path, monkeypatch, model):
    """After a real run, the dry run marks the finished pair as skipped and rewrites nothing (manifest included)."""
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out"
    common = [scene, "-m", model, "-o", out, "--tile-size", "64"]
    code, _, err = run_cli(capsys, "predict", *common, "-p", "the roof")
    assert code == 0, err
    before = _tree(out)
    calls = refuse_model_loading(monkeypatch)
    code, stdout, err = run_cli(capsys, "predict", *common, "-p", "the roof", "-p", "water", "--dry-run")
    assert code == 0, err
    assert calls == [] and _tree(out) == before
    assert "scene.tif" in stdout and "64x64" in stdout and "EPSG:32618" in stdout and "1/2" in stdout
    code, stdout, _ = run_cli(capsys, "predict", *common, "-p", "the roof", "-p", "water", "--dry-run",
                              "--log-format", "json")
    plan = json.loads(stdout)  # --log-format json prints the plan as JSON too
    assert plan["scenes"][0]["prompts_finished"] == ["the roof"]
    assert [r["status"] for r in plan["results"]] == ["skipped-existing", "dry-run"]


def test_batch_size_larger_than_the_tiles_is_capped_with_a_note(capsys, no_model, tmp_path, model):
    scene = write_scene(tmp_path / "scene.tif", size=64)
    code, stdout, err = run_cli(capsys, "predict", scene, "-m", model, "-p", "x", "-o", tmp_path / "o",
                                "--dry-run", "--json", "--batch-size", "32")
    assert code == 0
    assert json.loads(stdout)["scenes"][0]["batch_size"] == 1
    assert "--batch-size 32 is larger than the 1 tile(s)" in err


def test_dry_run_lists_an_unreadable_scene(capsys, no_model, tmp_path, model):
    good = write_scene(tmp_path / "good.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00not a tiff")
    code, stdout, err = run_cli(capsys, "predict", good, bad, "-m", model, "-p", "x", "-o", tmp_path / "o",
                                "--dry-run", "--json")
    assert code == 3, err  # what the real run would end with: one scene fails, the other is written
    plan = json.loads(stdout)
    assert "error" in plan["scenes"][1] and plan["results"][1]["status"] == "failed"

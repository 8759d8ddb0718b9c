"""Scene evaluation scores only prediction masks, pairs them with ground truth by scene identity, and leaves out
(with a warning) a pair whose ground truth does not overlap its prediction."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rrsis_cli.errors import InputError
from rrsis_cli.evaluate import evaluate_scenes, mask_problem, pair_scenes, read_pairs_csv
from rrsis_cli.predict import PredictOptions, predict
from stub_models import PromptPointwise, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"


@pytest.fixture()
def two_scenes(monkeypatch, tmp_path):
    """Predictions for two far-apart crops of one scene (prompt "water", prob.tif saved); each scene's ground
    truth is its own vectorised mask, so a right pairing scores IoU 1."""
    use_model(monkeypatch, PromptPointwise())
    scenes = []
    for name, row, col in (("north", 250, 250), ("south", 560, 420)):
        with rasterio.open(DATA / "RGB.byte.tif") as src:
            window = Window(col, row, 128, 128)
            profile = {**src.profile, "width": 128, "height": 128, "transform": src.window_transform(window),
                       "tiled": False}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            path = tmp_path / "scenes" / f"{name}.tif"
            path.parent.mkdir(exist_ok=True)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
        scenes.append(path)
    out = tmp_path / "pred"
    manifest = predict(scenes, "m", ["water"], out, PredictOptions(tile_size=64, device="cpu", save_prob=True))
    dirs = {Path(r.scene).stem: out / r.output_dir for r in manifest.results}
    return tmp_path, out, dirs


def _gt(dirs, scene: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dirs[scene] / "mask.geojson", target)
    return target


def test_folder_mode_scores_masks_only(two_scenes):
    tmp_path, out, dirs = two_scenes
    gt = tmp_path / "gt"
    for scene in dirs:
        _gt(dirs, scene, gt / scene / "water.geojson")  # GT/<scene>/<prompt>.geojson
    pairs = pair_scenes(out, gt)
    assert sorted(p.name for p, _ in pairs) == ["mask.tif", "mask.tif"]  # prob.tif is not a prediction
    assert {p.parent: g.parent.name for p, g in pairs} == {d: s for s, d in dirs.items()}
    summary = evaluate_scenes(pairs, tmp_path / "ev")
    assert summary["n_scenes"] == 2 and summary["IoU"] == pytest.approx(1.0)
    assert mask_problem(dirs["north"] / "prob.tif").startswith("not a mask")


def test_prompt_named_gt_is_not_paired_with_another_scene(two_scenes):
    """gt/water.geojson belongs to the north scene: the south prediction must not be scored against it."""
    tmp_path, out, dirs = two_scenes
    gt = _gt(dirs, "north", tmp_path / "gt" / "water.geojson")
    pairs = pair_scenes(out, gt.parent)  # two scenes: a prompt-only name does not say which one it is
    assert pairs == []
    # named explicitly, the foreign pair is refused (no overlap) and left out of the totals
    summary = evaluate_scenes([(dirs["north"] / "mask.tif", gt), (dirs["south"] / "mask.tif", gt)], tmp_path / "ev")
    assert summary["n_scenes"] == 1 and summary["IoU"] == pytest.approx(1.0)
    assert len(summary["left_out"]) == 1 and "does not overlap" in summary["left_out"][0]["reason"]
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert written["n_scenes"] == 1 and len(written["left_out"]) == 1


def test_single_scene_still_pairs_by_prompt_name(two_scenes):
    tmp_path, out, dirs = two_scenes
    gt = _gt(dirs, "north", tmp_path / "gt" / "water.geojson")
    _gt(dirs, "north", tmp_path / "gt" / "other-prompt.geojson")
    pairs = pair_scenes(dirs["north"].parent, gt.parent)
    assert [(p.parent, g.name) for p, g in pairs] == [(dirs["north"], "water.geojson")]


def test_an_image_is_refused_as_prediction(two_scenes):
    tmp_path, out, dirs = two_scenes
    gt = _gt(dirs, "north", tmp_path / "gt" / "water.geojson")
    with pytest.raises(InputError, match="not a mask: 3 band"):
        pair_scenes(tmp_path / "scenes" / "north.tif", gt)
    (tmp_path / "pairs.csv").write_text(f"pred,gt\nscenes/north.tif,{gt.relative_to(tmp_path)}\n")
    with pytest.raises(InputError, match="not a mask"):
        read_pairs_csv(tmp_path / "pairs.csv")
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "evaluate", "--pred", str(tmp_path / "scenes" / "north.tif"),
                          "--gt", str(gt), "--out", str(tmp_path / "ev")], capture_output=True, text=True)
    assert res.returncode == 1 and "not a mask" in res.stderr and not (tmp_path / "ev").exists()


def test_third_party_masks_with_0_1_255_are_predictions(tmp_path):
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
    good, bad = tmp_path / "good.tif", tmp_path / "bad.tif"
    with rasterio.open(good, "w", **profile) as dst:
        dst.write(np.array([[0, 1, 255, 0] * 2] * 8, np.uint8), 1)
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(np.full((8, 8), 7, np.uint8), 1)
    assert mask_problem(good) is None
    assert "values other than" in mask_problem(bad)

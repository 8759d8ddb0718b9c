"""Re-thresholding a finished pair from its prob.tif (no tile recomputed, identical to a full run at the new
threshold), the quantised mask rule that makes this exact, and --no-vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers import pair_dir
from rrsis_cli.predict import PredictOptions, predict
from stub_models import PointwiseModel, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
SCENE = DATA / "RGB.byte.tif"  # 791 x 718, nodata collar, EPSG:32618


class CountingModel(PointwiseModel):
    """The pointwise model, counting forward passes."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward_with_text(self, x, text):
        self.forwards += 1
        return super().forward_with_text(x, text)


@pytest.fixture()
def model(monkeypatch):
    return use_model(monkeypatch, CountingModel())


def _options(**kw) -> PredictOptions:
    return PredictOptions(**{"tile_size": 128, "batch_size": 16, "device": "cpu", **kw})


def _pair(out: Path) -> Path:
    return pair_dir(out, SCENE, "x")


def test_mask_rule_is_the_quantised_probability(model, tmp_path):
    """mask = 1 where prob.tif / 254 >= threshold, 0 below, 255 where prob.tif is 255 (nodata): exactly."""
    for threshold in (0.5, 0.37):
        out = tmp_path / str(threshold)
        predict([SCENE], "pointwise", ["x"], out, _options(threshold=threshold, save_prob=True))
        with rasterio.open(_pair(out) / "mask.tif") as m, rasterio.open(_pair(out) / "prob.tif") as p:
            mask, p8 = m.read(1), p.read(1)
        expected = np.where(p8 == 255, 255, p8 / 254.0 >= threshold).astype(np.uint8)
        np.testing.assert_array_equal(mask, expected)
        # the bin at the threshold is populated: its pixels whose float probability is just below the threshold
        # (but rounds onto it) are in the mask
        assert ((p8 == int(np.ceil(threshold * 254))) & (mask == 1)).any()


def test_rethreshold_from_prob_tif_equals_a_full_run(model, tmp_path):
    first = predict([SCENE], "pointwise", ["x"], tmp_path / "a", _options(threshold=0.5, save_prob=True))
    assert first.results[0].status == "done" and model.forwards > 0
    directory = _pair(tmp_path / "a")
    prob_bytes = (directory / "prob.tif").read_bytes()
    model.forwards = 0
    again = predict([SCENE], "pointwise", ["x"], tmp_path / "a", _options(threshold=0.63))
    result = again.results[0]
    assert again.exit_code == 0 and result.status == "rethresholded"
    assert result.tiles == 0 and model.forwards == 0  # no tile recomputed
    assert (directory / "prob.tif").read_bytes() == prob_bytes  # kept as it was

    full = predict([SCENE], "pointwise", ["x"], tmp_path / "b", _options(threshold=0.63, save_prob=True))
    assert full.results[0].status == "done"
    reference = _pair(tmp_path / "b")
    assert (directory / "mask.tif").read_bytes() == (reference / "mask.tif").read_bytes()
    assert (directory / "mask.geojson").read_bytes() == (reference / "mask.geojson").read_bytes()
    written = json.loads((tmp_path / "a" / "manifest.json").read_text())["results"][0]
    assert written["status"] == "rethresholded" and written["tiles"] == 0
    assert written["features"] == full.results[0].features > 0
    with rasterio.open(directory / "mask.tif") as ds:
        assert ds.tags()["threshold"] == "0.63"

    # the re-thresholded mask is finished: the same command skips it, the original threshold re-thresholds back
    model.forwards = 0
    assert predict([SCENE], "pointwise", ["x"], tmp_path / "a",
                   _options(threshold=0.63)).results[0].status == "skipped-existing"
    back = predict([SCENE], "pointwise", ["x"], tmp_path / "a", _options(threshold=0.5))
    assert back.results[0].status == "rethresholded" and model.forwards == 0


def test_other_configurations_and_overwrite_recompute(model, tmp_path):
    predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.5, save_prob=True))
    other = predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.6, overlap=0.5))
    assert other.results[0].status == "done" and other.results[0].tiles > 0  # the overlap changes prob.tif
    # that run did not save prob.tif: the old one (of another configuration) is gone, not left stale
    assert not (_pair(tmp_path) / "prob.tif").exists()
    predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.5, save_prob=True))
    forced = predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.6, overwrite=True))
    assert forced.results[0].status == "done" and forced.results[0].tiles > 0


def test_a_prob_tif_of_another_scene_or_prompt_is_not_used(model, tmp_path):
    predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.5, save_prob=True))
    with rasterio.open(_pair(tmp_path) / "prob.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.update_tags(prompt="something else")
    again = predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.6))
    assert again.results[0].status == "done" and again.results[0].tiles > 0


def test_no_vectors(model, tmp_path):
    manifest = predict([SCENE], "pointwise", ["x"], tmp_path, _options(vectors=False, save_prob=True))
    assert manifest.exit_code == 0 and manifest.results[0].status == "done"
    directory = _pair(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["mask.tif", "prob.tif"]
    written = json.loads((tmp_path / "manifest.json").read_text())
    result = written["results"][0]
    assert written["options"]["vectors"] is False
    assert result["features"] is None and "vectors" not in result["outputs"]
    assert "vectorise" not in result["seconds"]
    # vectors asked for later: rebuilt from prob.tif (no tile run), the mask stays byte-identical
    mask_bytes = (directory / "mask.tif").read_bytes()
    model.forwards = 0
    later = predict([SCENE], "pointwise", ["x"], tmp_path, _options())
    assert later.results[0].status == "rethresholded" and model.forwards == 0
    assert (directory / "mask.geojson").is_file() and later.results[0].features > 0
    assert (directory / "mask.tif").read_bytes() == mask_bytes
    # vectors of an earlier mask never stay beside a new one
    predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.6))
    assert (directory / "mask.geojson").is_file()
    predict([SCENE], "pointwise", ["x"], tmp_path, _options(threshold=0.7, vectors=False))
    assert not (directory / "mask.geojson").exists()


def test_no_vectors_on_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rrsis_cli.cli import app

    seen = []

    def fake_predict(inputs, model, prompts, out, options, **kwargs):
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr("rrsis_cli.predict.predict", fake_predict)
    args = ["predict", str(SCENE), "--model", "m", "--prompt", "x", "--out", str(tmp_path)]
    CliRunner().invoke(app, [*args, "--no-vectors"])
    CliRunner().invoke(app, args)
    assert [o.vectors for o in seen] == [False, True]

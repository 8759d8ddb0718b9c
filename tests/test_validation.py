"""Every option is validated before the model loads and before any scene is processed: exit 2 and a message that
names the option; the model loader is never called and the output folder is never created."""

from __future__ import annotations

import hashlib

import pytest
from front_helpers import refuse_model_loading, run_cli, write_scene

BAD_PREDICT_OPTIONS = [
    (["--tile-size", "0"], "--tile-size"),
    (["--tile-size", "-64"], "--tile-size"),
    (["--tile-size", "100"], "--tile-size"),
    (["--coarse-size", "100", "--grounding", "scene"], "--coarse-size"),
    (["--bands", "4"], "--bands"),
    (["--bands", "3,2,0"], "--bands"),
    (["--gsd", "0"], "--gsd"),
    (["--gsd", "-5"], "--gsd"),
    (["--stretch", "0,0:255,255,255"], "--stretch"),
    (["--stretch", "0,0,0:255,0,255"], "--stretch"),
    (["--stretch", "0:255"], "--stretch"),  # 1 value per end, 3 bands read from the scene
    (["--bands", "1,2,3", "--stretch", "0,0:9,9"], "--stretch"),
    (["--cluster", "local", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
    (["--save-coarse"], "--save-coarse"),
    (["--min-area", "-1"], "--min-area"),
    (["--threshold", "1"], "--threshold"),
]


@pytest.mark.parametrize("args,option", BAD_PREDICT_OPTIONS, ids=[" ".join(a) for a, _ in BAD_PREDICT_OPTIONS])
def test_bad_predict_option_exits_2_before_the_model(capsys, no_model, scene, tmp_path, args, option, model):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", scene, "-m", model, "-p", "the roof", "-o", out, *args)
    assert code == 2, err
    assert option in err and "Traceback" not in err
    assert no_model == [] and not out.exists()


def test_missing_input_path_is_a_usage_error(capsys, no_model, scene, tmp_path, model):
    missing = tmp_path / "nope.tif"
    code, _, err = run_cli(capsys, "predict", scene, missing, "-m", model, "-p", "x", "-o", tmp_path / "o")
    assert code == 2 and "INPUT not found" in err and str(missing) in err
    assert no_model == [] and not (tmp_path / "o").exists()


def test_a_scene_without_the_band_fails_before_the_model(capsys, no_model, tmp_path, model):
    """--bands 4 suits the 4-band scene but not the 3-band one: the run stops before any model or output."""
    four = write_scene(tmp_path / "four.tif", count=4)
    three = write_scene(tmp_path / "three.tif", count=3)
    code, _, err = run_cli(capsys, "predict", four, three, "-m", model, "-p", "x", "-o", tmp_path / "o",
                           "--bands", "4")
    assert code == 2 and "--bands" in err and "three.tif" in err and "has 3 band(s)" in err
    assert no_model == [] and not (tmp_path / "o").exists()


def test_tile_size_checked_against_the_model_config_before_any_scene(monkeypatch, tmp_path):
    """A model declaring another input multiple: the check uses its config (read without loading it) and
    happens before any scene header is read."""
    import json

    from rrsis_cli import preflight
    from rrsis_cli.errors import UsageError
    from rrsis_cli.models.info import describe_model
    from rrsis_cli.predict import PredictOptions, predict

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"arch": "lavt", "name": "odd", "image_size": 96,
                                                       "input_multiple": 48, "max_tokens": 20}))
    (model_dir / "model.safetensors").write_bytes(b"not read: only hashed")
    info = describe_model(model_dir)
    assert (info.name, info.image_size, info.input_multiple) == ("odd", 96, 48)
    assert info.sha256 == hashlib.sha256(b"not read: only hashed").hexdigest()
    refuse_model_loading(monkeypatch)
    monkeypatch.setattr(preflight, "read_header", lambda *a, **k: pytest.fail("a scene header was read"))
    scene = write_scene(tmp_path / "s.tif")
    with pytest.raises(UsageError, match="--tile-size must be a multiple of 48"):
        predict([scene], str(model_dir), ["x"], tmp_path / "o", PredictOptions(tile_size=64))


def test_evaluate_gt_and_dataset_exclude_each_other(capsys, no_model, scene, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--pred", scene, "--gt", scene, "--dataset", "folder",
                           "--root", tmp_path, "-o", tmp_path / "eval")
    assert code == 2 and "--gt" in err and "--dataset" in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_missing_ground_truth_is_a_usage_error(capsys, scene, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--pred", scene, "--gt", tmp_path / "gt.geojson",
                           "-o", tmp_path / "eval")
    assert code == 2 and "--gt not found" in err

"""Start-up: the CLI imports torch, transformers, geopandas and dask only where they are needed, and a run whose
every (scene, prompt) is finished decides so without loading the model. Mechanisms, not wall-clock times
(benchmarks/startup.py measures those)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from front_helpers import refuse_model_loading, run_cli, write_scene

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "geopandas", "dask", "distributed", "zarr")


def _imported_after(code: str) -> list[str]:
    """Heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_predict_imports_nothing_heavy():
    assert _imported_after("import rrsis_cli.cli, rrsis_cli.predict, rrsis_cli.models") == []


@pytest.mark.parametrize("args", [["--help"], ["models", "list"], ["predict", "--help"]])
def test_cli_commands_that_need_no_model_import_nothing_heavy(args):
    code = f"""
        from rrsis_cli.cli import main
        try:
            main({args!r})
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    """
    assert _imported_after(code) == []


def test_all_skipped_predict_never_loads_the_model(capsys, monkeypatch, tmp_path, model):
    scene = write_scene(tmp_path / "scene.tif")
    args = ["predict", scene, "-m", model, "-p", "the roof", "-p", "water", "-o", tmp_path / "o",
            "--tile-size", "64"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    calls = refuse_model_loading(monkeypatch)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert calls == []
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [r["status"] for r in manifest["results"]] == ["skipped-existing", "skipped-existing"]
    weights = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["model"] == "lavt-tiny" and manifest["model_sha256"] == weights
    assert manifest["inputs"][0]["width"] == 64 and manifest["options"]["tile_size"] == 64
    # one prompt more: only that pair runs (the model loads), the finished one is still skipped
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *args, "-p", "the pond")
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert code == 0 and [r["status"] for r in manifest["results"]] == ["skipped-existing", "skipped-existing",
                                                                         "done"]


def test_all_skipped_predict_in_a_fresh_interpreter_imports_no_torch(tmp_path, model):
    from rrsis_cli.predict import PredictOptions, predict

    scene = write_scene(tmp_path / "scene.tif")
    predict([scene], str(model), ["the roof"], tmp_path / "o", PredictOptions(tile_size=64, device="cpu"))
    code = f"""
        from rrsis_cli.cli import main
        try:
            main(["predict", {str(scene)!r}, "-m", {str(model)!r}, "-p", "the roof", "-o", {str(tmp_path / 'o')!r},
                  "--tile-size", "64", "--device", "cpu"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    """
    assert _imported_after(code) == []


def test_model_sha256_known_without_loading_equals_the_loaded_one(tmp_path):
    from rrsis_cli.models import build_model, describe_model, load_model, save_model

    save_model(build_model("lavt-tiny", seed=1), tmp_path / "m")
    info = describe_model(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert info.sha256 == loaded.sha256 and info.name == loaded.config["name"]
    assert info.image_size == loaded.config["image_size"] and info.max_tokens == loaded.max_tokens
    card = describe_model("lavt-tiny")  # a card without weights: what --allow-random-weights runs
    assert card.sha256 == load_model("lavt-tiny", allow_random_weights=True).sha256 and card.model_dir is None
    assert describe_model("demo").sha256 == load_model("demo").sha256  # the bundled model
    assert describe_model("null").sha256 == load_model("null").sha256  # no learned parameters
    assert describe_model(tmp_path / "nothing-here") is None


def test_builtin_needs_weights_is_what_the_classes_say():
    """The registry answers needs_weights for its own architectures without importing them (torch): the answer
    must be what their classes declare, for every architecture it registers."""
    from rrsis_cli.models import registry

    assert set(registry.BUILTIN_NEEDS_WEIGHTS) == set(registry.ARCHITECTURE_MODULES)
    for arch, needed in registry.BUILTIN_NEEDS_WEIGHTS.items():
        assert getattr(registry.architecture_class(arch), "needs_weights", True) is needed, arch


def test_all_skipped_run_of_the_null_model_imports_no_torch(tmp_path):
    """A card without weights by design (--model null): its hash is known without building it."""
    from rrsis_cli.predict import PredictOptions, predict

    scene = write_scene(tmp_path / "scene.tif")
    predict([scene], "null", ["the roof"], tmp_path / "o", PredictOptions(tile_size=64, device="cpu"))
    code = f"""
        from rrsis_cli.cli import main
        try:
            main(["predict", {str(scene)!r}, "-m", "null", "-p", "the roof", "-o", {str(tmp_path / 'o')!r},
                  "--tile-size", "64"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    """
    assert _imported_after(code) == []


def test_models_show_counts_parameters_without_building_weights():
    from rrsis_cli.models import build_model
    from rrsis_cli.models.io import count_parameters
    from rrsis_cli.models.registry import config_for

    for card in ("lavt-tiny", "rmsin-tiny", "lgce-tiny", "crobim-tiny", "btdnet-tiny"):
        assert count_parameters(config_for(card)) == build_model(card).parameter_counts(), card

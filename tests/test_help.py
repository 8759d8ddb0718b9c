"""--help: every option with a default shows it (predict's taken from PredictOptions, so they never drift), flags
have no <bool> metavar, -v/--verbose, short options for the common ones, commands in workflow order."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from front_helpers import refuse_model_loading, run_cli, write_scene

from rrsis_cli.cli import app
from rrsis_cli.predict import PredictOptions


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    monkeypatch.setenv("TERMINAL_WIDTH", "250")


def _commands():
    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, group = stack.pop()
        for name, command in group.commands.items():
            yield (*path, name), command
            if hasattr(command, "commands"):
                stack.append(((*path, name), command))


def _help(capsys, *command: str) -> str:
    code, out, err = run_cli(capsys, *command, "--help")
    assert code == 0, err
    return out


def _option_lines(text: str) -> dict[str, str]:
    """Option name -> its help line (the table rows of typer's rich help)."""
    lines = {}
    for line in text.splitlines():
        match = re.match(r"│\s+(--[a-z0-9-]+)", line)
        if match:
            lines[match.group(1)] = line
    return lines


def test_predict_help_shows_the_defaults_of_predict_options(capsys):
    lines = _option_lines(_help(capsys, "predict"))
    defaults = PredictOptions()
    checked = 0
    for field in dataclasses.fields(PredictOptions):
        option = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if option not in lines or isinstance(value, bool):
            continue
        checked += 1
        if value is None:
            assert "[default: (" in lines[option], lines[option]  # described, e.g. the model's input size
        else:
            assert f"[default: {value}]" in lines[option], lines[option]
    assert checked >= 12
    assert "[default: 0.25]" in lines["--overlap"] and "[default: 8]" in lines["--batch-size"]
    assert "[default: (the model's input size)]" in lines["--tile-size"]


def test_predict_option_defaults_are_predict_options(capsys):
    """The command's own defaults are PredictOptions' (not a copy that can drift)."""
    (command,) = [c for path, c in _commands() if path == ("predict",)]
    defaults = dataclasses.asdict(PredictOptions())
    for param in command.params:
        if param.name in defaults and param.name not in ("bands", "stretch"):
            value = param.default.value if hasattr(param.default, "value") else param.default
            assert value == defaults[param.name], param.name


@pytest.mark.parametrize("command", [("predict",), ("evaluate",), ("train",), ("overlay",), ("bench",),
                                     ("models", "init"), ("convert",), ("data", "synth"), ()])
def test_no_bool_metavar_and_no_eaten_brackets(capsys, command):
    text = _help(capsys, *command)
    assert "<bool>" not in text
    assert not re.search(r"\w \.(?=\s)", text)  # "Tile side ." was "[the model's image size]" eaten as rich markup


def test_every_option_with_a_default_shows_it(capsys):
    """Any option whose default is not None shows it (flags excepted); None-default options that have a
    meaningful default describe it (show_default string)."""
    for path, command in _commands():
        if hasattr(command, "commands"):
            continue
        lines = _option_lines(_help(capsys, *path))
        for param in command.params:
            if not param.opts[0].startswith("--") or getattr(param, "is_flag", False) or param.name.startswith(
                    "global_") or param.name == "help":
                continue
            line = lines.get(param.opts[0], "")
            if param.default is not None and param.default != []:
                assert "[default:" in line, f"rrsis {' '.join(path)} {param.opts[0]}: {line}"


def test_verbose_and_short_options(capsys, monkeypatch, tmp_path, model):
    refuse_model_loading(monkeypatch)
    scene = write_scene(tmp_path / "s.tif")
    code, _, err = run_cli(capsys, "predict", scene, "-m", model, "-p", "the roof", "-o", tmp_path / "o",
                           "--dry-run", "-v")
    assert code == 0, err
    assert any(line.startswith("debug: model lavt-tiny") for line in err.splitlines())
    code, _, err = run_cli(capsys, "predict", scene, "-m", model, "-p", "the roof", "-o", tmp_path / "o",
                           "--dry-run")
    assert code == 0 and "debug:" not in err
    text = _help(capsys, "predict")
    for short, long in (("-m", "--model"), ("-p", "--prompt"), ("-o", "--out"), ("-v", "--verbose")):
        assert re.search(rf"{long}\s+{short}\b", text), long


def test_commands_in_workflow_order(capsys):
    text = _help(capsys)
    names = [m.group(1) for m in re.finditer(r"│ (\w+)\s{2,}\S", text)]
    order = [n for n in names if n in ("predict", "evaluate", "train", "overlay", "models", "convert", "data",
                                       "bench", "manifest")]
    assert order[:3] == ["predict", "evaluate", "train"] and len(order) == 9

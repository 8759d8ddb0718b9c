"""The root CLI: --version/--help, models list|show|init, convert, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from rrsis_cli import __version__
from rrsis_cli.models import build_model, load_model


def rrsis(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rrsis_cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_version_and_help():
    res = rrsis("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"rrsis {__version__}"
    res = rrsis("--help")
    assert res.returncode == 0
    for word in ("models", "convert", "Exit codes", "130 interrupted"):
        assert word in res.stdout


def test_models_list_shows_cards_with_provenance():
    res = rrsis("models", "list")
    assert res.returncode == 0, res.stderr
    for name in ("lavt-swin-b", "lavt-swin-t", "lavt-tiny"):
        assert name in res.stdout
    assert "CVPR 2022" in res.stdout


def test_models_show_prints_config_with_parameter_counts():
    res = rrsis("models", "show", "lavt-tiny")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["arch"] == "lavt" and info["parameters"]["total"] == build_model("lavt-tiny").parameter_counts()["total"]


def test_models_init_writes_a_loadable_directory(tmp_path):
    res = rrsis("models", "init", "lavt-tiny", "--out", str(tmp_path / "m"), "--seed", "3")
    assert res.returncode == 0, res.stderr
    model = load_model(tmp_path / "m")
    reference = build_model("lavt-tiny", seed=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())
    again = rrsis("models", "init", "lavt-tiny", "--out", str(tmp_path / "m"))
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"error: {tmp_path / 'm'}: exists and is not empty (use --overwrite)"]


def test_convert_missing_file_is_one_line_exit_1(tmp_path):
    res = rrsis("convert", "--arch", "lavt", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.pth'}: checkpoint file not found"]
    assert "Traceback" not in res.stderr
    debug = rrsis("--debug", "convert", "--arch", "lavt", "--checkpoint", str(tmp_path / "nope.pth"),
                  "--out", str(tmp_path / "o"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_convert_not_a_checkpoint_and_unknown_arch(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    res = rrsis("convert", "--arch", "lavt", "--checkpoint", str(junk), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and str(junk) in res.stderr and len(res.stderr.strip().splitlines()) == 1
    torch.save({"model": {}}, tmp_path / "empty.pth")
    res = rrsis("convert", "--arch", "nosuch", "--checkpoint", str(tmp_path / "empty.pth"), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "unknown architecture 'nosuch'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2():
    assert rrsis("models", "init").returncode == 2
    assert rrsis("no-such-command").returncode == 2
    assert rrsis("convert", "--arch", "lavt").returncode == 2


def test_json_log_format_for_cron(tmp_path):
    res = rrsis("--log-format", "json", "convert", "--arch", "lavt", "--checkpoint", str(tmp_path / "x.pth"),
                "--out", str(tmp_path / "o"))
    record = json.loads(res.stderr.strip().splitlines()[-1])
    assert record["level"] == "error" and "x.pth" in record["message"] and res.returncode == 1

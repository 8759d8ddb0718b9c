"""Logs for cron: with --log-format json every stderr line is a JSON object; pair records carry scene, prompt,
status, tiles and seconds, the summary carries the exit code, and a long scene emits heartbeat records when no
terminal is attached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rrsis_cli.models import build_model, save_model

DATA = Path(__file__).parents[1] / "examples" / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lavt-tiny"
    save_model(build_model("lavt-tiny", seed=1), path)
    return path


def _run(model_dir, out, heartbeat: str):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RRSIS_HEARTBEAT_SECONDS=heartbeat)
    return subprocess.run([sys.executable, "-m", "rrsis_cli", "predict", str(DATA / "rgbn_5m.tif"), "--model",
                           str(model_dir), "--prompt", "the roofs", "--out", str(out), "--tile-size", "64",
                           "--batch-size", "1", "--device", "cpu", "--log-format", "json"],
                          capture_output=True, text=True, env=env, timeout=600)


def _records(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stderr line is not JSON: {line!r}")
    return records


def test_json_records_are_structured_and_heartbeats_appear(model_dir, tmp_path):
    res = _run(model_dir, tmp_path / "out", "0.05")
    assert res.returncode == 0, res.stderr
    records = _records(res.stderr)
    beats = [r for r in records if "progress" in r]
    assert beats, "no heartbeat record"
    assert all(0 < b["progress"]["done"] < b["progress"]["total"] for b in beats)
    pair = next(r for r in records if r.get("status") == "done")
    assert pair["scene"] == str(DATA / "rgbn_5m.tif") and pair["prompt"] == "the roofs"
    assert pair["tiles"] > 0 and pair["seconds"] > 0 and pair["output_dir"]
    summary = records[-1]
    assert summary["status"] == "finished" and summary["exit_code"] == 0 and summary["pairs"] == {"done": 1}

    again = _records(_run(model_dir, tmp_path / "out", "0").stderr)
    assert any(r.get("status") == "skipped-existing" and r["prompt"] == "the roofs" for r in again)
    assert not any("progress" in r for r in again)  # RRSIS_HEARTBEAT_SECONDS=0 turns heartbeats off


def test_json_records_from_several_threads_keep_one_line_each(monkeypatch):
    """The background writer thread logs while the main thread does: each JSON record must be one whole line.
    The stand-in stderr yields the GIL inside every write, as a busy process does at random."""
    import threading
    import time as time_module

    from rrsis_cli import console

    class SlowStderr:
        def __init__(self):
            self.parts: list[str] = []

        def write(self, text: str) -> int:
            time_module.sleep(0.0002)  # another thread runs here
            self.parts.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    slow = SlowStderr()
    monkeypatch.setattr("sys.stderr", slow)
    console.configure(log_format="json")
    try:
        def log(name: str) -> None:
            for k in range(30):
                console.warn(f"{name} {k}")

        threads = [threading.Thread(target=log, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        console.configure()
    lines = "".join(slow.parts).splitlines()
    assert len(lines) == 120
    assert sorted(json.loads(line)["message"] for line in lines) == sorted(f"t{i} {k}" for i in range(4)
                                                                          for k in range(30))

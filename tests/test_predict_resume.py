"""predict under interruption: SIGKILL then rerun resumes from the tile journal and gives a byte-identical mask;
SIGINT, SIGTERM and SIGHUP exit 130/143/129 within seconds, write the manifest with the interrupted pair, release
the lock and leave nothing at a final path, and the rerun is byte-identical; a second run into the same output
waits for or refuses the lock. Real subprocesses with a tiny random LAVT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrsis_cli.inputs import find_scenes, output_dir, work_dir
from rrsis_cli.models import build_model, save_model

DATA = Path(__file__).parents[1] / "examples" / "data"
SCENE = DATA / "RGB.byte.tif"  # 791 x 718: 15 rows x 17 columns of 64 px tiles at 25 % overlap
BANDS = 15  # the journal has one line per finished tile row (row band)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lavt-tiny"
    save_model(build_model("lavt-tiny", seed=3), path)
    return path


def _command(model_dir, out, *extra):
    return [sys.executable, "-m", "rrsis_cli", "predict", str(SCENE), "--model", str(model_dir), "--prompt",
            "the river", "--out", str(out), "--tile-size", "64", "--batch-size", "1", "--device", "cpu", *extra]


def _journal(out: Path) -> Path:
    return work_dir(out, find_scenes([SCENE])[0], "the river") / "journal.txt"


def _mask(out: Path) -> Path:
    return output_dir(out, find_scenes([SCENE])[0], "the river") / "mask.tif"


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal would deliver it. A process started in the background by a shell without
    job control (``cmd &`` in a script, as CI may run the suite) inherits SIGINT *ignored*, and Python then never
    turns it into KeyboardInterrupt: the run would finish as if no Ctrl-C had come."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait_for_bands(cmd, out, batches: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 240
    while time.time() < deadline:
        journal = _journal(out)
        if journal.is_file() and len(journal.read_text().splitlines()) >= batches:
            break
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("no journal progress within 240 s")
    assert proc.poll() is None  # still running: the interruption below happens mid-run
    return proc


@pytest.fixture(scope="module")
def straight_mask(model_dir, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("straight")
    straight = subprocess.run(_command(model_dir, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert straight.returncode == 0, straight.stderr
    return _mask(out).read_bytes()


def test_sigkill_then_rerun_resumes_and_is_byte_identical(model_dir, straight_mask, tmp_path):
    out = tmp_path / "killed"
    proc = _start_and_wait_for_bands(_command(model_dir, out), out, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = len(_journal(out).read_text().splitlines())
    assert 3 <= finished < BANDS
    assert not _mask(out).exists()  # nothing at a final path
    rerun = subprocess.run(_command(model_dir, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    result = json.loads((out / "manifest.json").read_text())["results"][0]
    assert result["tiles_resumed"] >= finished * 17  # whole tile rows were not recomputed
    assert result["tiles"] < 255 - finished * 17 + 2 * 17  # at most the carried overlap rows are rerun
    assert result["work_bytes_per_pixel"] <= 1.01  # the journal: 1 byte per scene pixel
    assert straight_mask == _mask(out).read_bytes()
    assert not (out / ".rrsis-work").exists()  # the work directory goes once everything finished


def test_sigint_exits_130_and_leaves_no_partial_output(model_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = _start_and_wait_for_bands(_command(model_dir, out), out, 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not _mask(out).exists()
    assert not list(_mask(out).parent.glob("mask.*")) if _mask(out).parent.exists() else True
    assert _journal(out).is_file()  # kept, so the next run resumes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["exit_code"] == 130 and [r["status"] for r in manifest["results"]] == ["interrupted"]


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_cleanly_and_the_rerun_is_byte_identical(model_dir, straight_mask, tmp_path,
                                                                          signum, code):
    """What `timeout -s TERM`, SLURM preemption/walltime, systemd and Kubernetes send: exit 128 + signal within
    seconds, summary line, manifest with the interrupted pair, lock released, nothing at a final path; the same
    command then resumes and gives the uninterrupted run's bytes."""
    out = tmp_path / "stopped"
    proc = _start_and_wait_for_bands(_command(model_dir, out, "--log-format", "json"), out, 2)
    sent = time.time()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert time.time() - sent < 30
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(r.get("status") == "interrupted" for r in records), stderr
    assert any(f"stopped by {signal.Signals(signum).name}" in r["message"] for r in records), stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["exit_code"] == code
    assert [r["status"] for r in manifest["results"]] == ["interrupted"]
    assert not _mask(out).exists() and _journal(out).is_file()
    from rrsis_cli.distributed import output_lock

    with output_lock(out):  # released: a new run gets it at once
        pass
    rerun = subprocess.run(_command(model_dir, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0 and "resuming" in rerun.stderr, rerun.stderr
    assert _mask(out).read_bytes() == straight_mask

"""Scale-out: dask LocalCluster gives the same bytes as in-process, a killed worker's scene is rescheduled,
shards are disjoint/complete/stable, shard manifests merge, and the output lock keeps two runs apart."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rasterio
from rasterio.windows import Window

from rrsis_cli.distributed import (
    output_lock,
    parse_shard,
    select_shard,
    shard_from_environment,
)
from rrsis_cli.errors import OutputError, UsageError
from rrsis_cli.manifest import merge_manifests
from rrsis_cli.models import build_model, save_model
from rrsis_cli.predict import PredictOptions, predict

DATA = Path(__file__).parents[1] / "examples" / "data"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    """Four 160 x 160 crops of real scenes (different CRSs, one with a nodata collar) plus a tiny model."""
    root = tmp_path_factory.mktemp("scenes")
    crops = [("RGB.byte.tif", 300, 300), ("RGB.byte.tif", 0, 0), ("rgbn_5m.tif", 40, 40), ("L7_ETMs.tif", 10, 20)]
    for i, (name, row, col) in enumerate(crops):
        with rasterio.open(DATA / name) as src:
            window = Window(col, row, 160, 160)
            profile = {**src.profile, "width": 160, "height": 160, "transform": src.window_transform(window)}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            profile["tiled"] = False
            with rasterio.open(root / f"scene{i}.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
                if src.nodata is None and src.count == 3:
                    dst.write_mask(src.dataset_mask(window=window))
    model = root / "model"
    save_model(build_model("lavt-tiny", seed=5), model)
    return root, model


OPTIONS = dict(tile_size=64, batch_size=4, device="cpu", bands=[1, 2, 3])


def _masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("mask.tif"))}


def test_local_cluster_output_is_byte_identical_to_in_process(small_scenes, tmp_path):
    root, model = small_scenes
    scenes = sorted(root.glob("scene*.tif"))
    here = predict(scenes, str(model), ["the road", "trees"], tmp_path / "here", PredictOptions(**OPTIONS))
    dask = predict(scenes, str(model), ["the road", "trees"], tmp_path / "dask", PredictOptions(**OPTIONS),
                   cluster="local:2")
    assert here.exit_code == dask.exit_code == 0
    assert len(_masks(tmp_path / "here")) == 8
    assert _masks(tmp_path / "here") == _masks(tmp_path / "dask")
    assert [r.status for r in dask.results] == ["done"] * 8
    assert dask.encoder_calls <= 2 * 2  # each prompt encoded once per worker
    rerun = predict(scenes, str(model), ["the road", "trees"], tmp_path / "dask", PredictOptions(**OPTIONS),
                    cluster="local:2")
    assert {r.status for r in rerun.results} == {"skipped-existing"}  # finished scenes are never recomputed


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_worker_scene_is_rescheduled_and_bad_scene_reported(small_scenes, tmp_path, signum):
    """A worker process is SIGKILLed (node failure) or SIGTERMed (a scheduler stopping it) while it holds a scene:
    the scene goes back to the scheduler, which runs it elsewhere, and every good scene completes with the bytes of
    an in-process run; a broken input is reported per scene and the run exits 3."""
    from distributed import Client, LocalCluster

    root, model = small_scenes
    scenes = sorted(root.glob("scene*.tif"))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a real tiff")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        work = tmp_path / "out" / ".rrsis-work"
        killed = []

        def kill_when_busy():
            deadline = time.time() + 180
            while time.time() < deadline and not killed:
                if work.exists() and any(work.rglob("journal.txt")):
                    os.kill(pids[0], signum)
                    killed.append(pids[0])
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        manifest = predict([*scenes, broken], str(model), ["the road"], tmp_path / "out", PredictOptions(**OPTIONS),
                           scheduler=cluster.scheduler_address, retries=2)
        killer.join()
    assert killed, "no worker was killed: the run finished before any journal appeared"
    status = {Path(r.scene).name: r.status for r in manifest.results}
    assert status == {"scene0.tif": "done", "scene1.tif": "done", "scene2.tif": "done", "scene3.tif": "done",
                      "broken.tif": "failed"}
    assert manifest.exit_code == 3
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["exit_code"] == 3 and "broken.tif" in str(written["inputs"])
    here = predict(scenes, str(model), ["the road"], tmp_path / "here", PredictOptions(**OPTIONS))
    assert here.exit_code == 0 and _masks(tmp_path / "here") == _masks(tmp_path / "out")


def test_shards_are_disjoint_complete_and_stable():
    rng = random.Random(0)
    scenes = [Path(f"/data/scenes/tile_{i:04d}.tif") for i in range(200)]
    for count in (1, 2, 3, 7):
        parts = [select_shard(scenes, i, count) for i in range(count)]
        assert sorted(p for part in parts for p in part) == sorted(scenes)  # complete and disjoint
        assert sum(len(p) for p in parts) == len(scenes)
        shuffled = scenes[:]
        rng.shuffle(shuffled)
        subset = shuffled[:50]
        for i in range(count):  # independent of input order and of the other scenes listed
            assert set(select_shard(shuffled, i, count)) == set(parts[i])
            assert set(select_shard(subset, i, count)) == set(parts[i]) & set(subset)
    assert min(len(select_shard(scenes, i, 3)) for i in range(3)) > 40  # roughly balanced
    assert parse_shard("2/5") == (2, 5)
    with pytest.raises(UsageError):
        parse_shard("5/5")
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert shard_from_environment(env) == (3, 8)
    assert shard_from_environment({}) is None


def test_shard_runs_and_manifest_merge(small_scenes, tmp_path):
    root, model = small_scenes
    out = tmp_path / "out"
    for i in range(2):
        res = subprocess.run([sys.executable, "-m", "rrsis_cli", "predict", str(root), "--glob", "scene*.tif",
                              "--model", str(model), "--prompt", "the road", "--out", str(out), "--tile-size",
                              "64", "--device", "cpu", "--bands", "1,2,3", "--shard", f"{i}/2"],
                             capture_output=True, text=True, env=ENV, timeout=300)
        assert res.returncode == 0, res.stderr
        assert (out / f"manifest-shard-{i}-of-2.json").is_file()
    assert len(_masks(out)) == 4
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "manifest", "merge", str(out)], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    merged = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(r["scene"]).name for r in merged["results"]) == [f"scene{i}.tif" for i in range(4)]
    assert merged["exit_code"] == 0 and merged["shards_merged"] == 2
    (out / "manifest-shard-1-of-2.json").unlink()
    with pytest.raises(UsageError, match="shard.* 1 of 2"):
        merge_manifests(out)


def test_output_lock_refuses_a_second_run(small_scenes, tmp_path):
    with output_lock(tmp_path):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path, wait=0.6):
                pass
        with output_lock(tmp_path, shard=(0, 2)):  # shards of an array lock separately
            pass
    with output_lock(tmp_path):  # released
        pass
    # another process holds the lock: `rrsis predict` into the same output fails clearly with exit code 1
    root, model = small_scenes
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from rrsis_cli.distributed import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = subprocess.run([sys.executable, "-m", "rrsis_cli", "predict", str(root / "scene0.tif"), "--model",
                              str(model), "--prompt", "x", "--out", str(tmp_path), "--device", "cpu"],
                             capture_output=True, text=True, env=ENV, timeout=120)
        assert res.returncode == 1 and f"pid {holder.pid}" in res.stderr and "writing here" in res.stderr
        assert not (tmp_path / "scene0").exists()
    finally:
        holder.kill()
        holder.wait()


def test_slurm_cluster_job_script_carries_the_options():
    """--cluster slurm builds a dask-jobqueue SLURMCluster (no SLURM needed to render its job script)."""
    from rrsis_cli.distributed import slurm_cluster

    jobs, cluster = slurm_cluster({"queue": "gpu", "account": "proj42", "walltime": "04:00:00",
                                   "memory": "64GB", "gpus": 4, "jobs": 3})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 3
    for expected in ("#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:4",
                     "--nworkers 4"):
        assert expected in script, script


def test_cron_script_skips_when_a_previous_run_holds_the_lock(tmp_path):
    """examples/cron_predict.sh: an overlapping run exits 0 at once; a failing rrsis exit code is passed on."""
    script = Path(__file__).parents[1] / "examples" / "cron_predict.sh"
    stub = tmp_path / "rrsis-stub"
    stub.write_text("#!/usr/bin/env bash\nsleep \"${STUB_SLEEP:-0}\"\nexit \"${STUB_CODE:-0}\"\n")
    stub.chmod(0o755)
    env = dict(ENV, RRSIS=str(stub), OUT=str(tmp_path / "out"), LOGDIR=str(tmp_path / "logs"),
               LOCK=str(tmp_path / "cron.lock"), SCENES=str(tmp_path), PROMPTS=str(tmp_path / "p.txt"))
    first = subprocess.Popen(["bash", str(script)], env=dict(env, STUB_SLEEP="5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 0 and "still active" in second.stderr
    first.communicate(timeout=60)
    assert first.returncode == 0
    failed = subprocess.run(["bash", str(script)], env=dict(env, STUB_CODE="3"), capture_output=True, text=True,
                            timeout=30)
    assert failed.returncode == 3 and "some scenes failed" in failed.stderr

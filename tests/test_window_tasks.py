"""One scene on many workers: window tasks of tile rows give the bytes of an in-process run, a worker killed in
the middle of a window loses nothing that was journaled, submission keeps a bounded window of tasks in flight,
and local GPU workers are pinned one per device (device count faked: this suite runs on CPUs)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from rrsis_cli import distributed
from rrsis_cli.errors import UsageError
from rrsis_cli.predict import PredictOptions, predict, window_plan
from rrsis_cli.tiling import TileGrid, window_rows

DATA = Path(__file__).parents[1] / "examples" / "data"
SCENE = DATA / "RGB.byte.tif"  # 791 x 718: 15 x 17 tiles of 64 px at overlap 0.25
OPTIONS = dict(tile_size=64, overlap=0.25, batch_size=4, device="cpu", save_prob=True)


@pytest.fixture(scope="module")
def two_workers():
    """A LocalCluster of 2 worker processes (one thread each), shared by the tests of this module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        yield cluster, client


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.name in ("mask.tif", "prob.tif", "mask.geojson")}


FIVE = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]


@pytest.mark.parametrize("cols,split,expected", [(1, 60, []), (3, 10, FIVE), (17, 60, FIVE), (17, 0, []),
                                                 (17, 255, []), (17, 5, [(r, r) for r in range(15)])])
def test_window_rows_cover_the_grid_in_whole_rows(cols, split, expected):
    """About ``split`` tiles a window, whole tile rows (at least one), every row once; no split at or below it."""
    grid = TileGrid(height=718, width=48 * cols + 16, tile=64, stride=48)
    assert (len(grid.rows), len(grid.cols)) == (15, cols)
    assert window_rows(grid, split) == expected


def test_window_plan_keeps_scene_grounding_and_small_scenes_whole():
    options = PredictOptions(**OPTIONS)
    assert len(window_plan((791, 718), 64, options, 60)) == 5
    assert window_plan((791, 718), 64, options, 255) == []  # 255 tiles: not above the limit
    assert window_plan((791, 718), 64, PredictOptions(**OPTIONS, grounding="scene"), 60) == []
    assert window_plan(None, 64, options, 60) == []  # unreadable header: one scene task reports it


def test_a_negative_split_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--split-tiles must be 0"):
        predict([SCENE], "null", ["x"], tmp_path / "out", PredictOptions(**OPTIONS), cluster="local:2",
                split_tiles=-1)
    assert not (tmp_path / "out").exists()


def test_split_scene_on_two_workers_is_byte_identical_to_in_process(tmp_path, two_workers):
    """The scene is split into 5 window tasks on a 2-worker LocalCluster, then finished by one task per prompt;
    mask, probability and vectors of both prompts are the bytes of an in-process run, and the manifest counts
    the windows."""
    from distributed import get_task_stream

    prompts = ["the river", "fields"]
    here = predict([SCENE], "null", prompts, tmp_path / "here", PredictOptions(**OPTIONS))
    with get_task_stream(two_workers[1]) as stream:
        dask = predict([SCENE], "null", prompts, tmp_path / "dask", PredictOptions(**OPTIONS),
                       scheduler=two_workers[0].scheduler_address, split_tiles=60)
    keys = sorted(str(task["key"]) for task in stream.data)
    assert keys == sorted([f"rrsis-finish-0-{k}-RGB.byte" for k in (0, 1)]
                          + [f"rrsis-window-0-{a}-{b}-RGB.byte" for a, b in FIVE])  # each task ran once
    assert here.exit_code == dask.exit_code == 0
    expected = _outputs(tmp_path / "here")
    assert len(expected) == 6 and _outputs(tmp_path / "dask") == expected
    for straight, split in zip(here.results, dask.results, strict=True):
        assert split.status == "done" and split.windows["tasks"] == 5
        assert split.windows == {"tasks": 5, "bands_written": 15, "bands_resumed": 0}
        assert split.tiles > straight.tiles  # the rows above each window are recomputed for its first band
        assert split.reads_per_tile > 1.0
    assert dask.options["split_tiles"] == 60
    assert not (tmp_path / "dask" / ".rrsis-work").exists()


def test_an_in_process_run_continues_from_the_journals_of_window_tasks(tmp_path):
    """Three window tasks run (out of order) and the run stops; an in-process rerun resumes after their 9 tile
    rows (window journals are read by whole-scene runs) and writes the bytes of an uninterrupted run."""
    from rrsis_cli.inputs import find_scenes
    from rrsis_cli.predict import SceneRunner

    prompt = "the river"
    predict([SCENE], "null", [prompt], tmp_path / "straight", PredictOptions(**OPTIONS))
    out = tmp_path / "out"
    runner = SceneRunner("null", [prompt], out, PredictOptions(**OPTIONS))
    plan = window_plan((791, 718), runner.tile, runner.options, 60)
    for rows in reversed(plan[:3]):
        outcome = runner.run_window(find_scenes([SCENE])[0], rows)
        assert outcome["error"] is None and outcome["pairs"][prompt]["bands_written"] == 3
    resumed = predict([SCENE], "null", [prompt], out, PredictOptions(**OPTIONS))
    assert resumed.results[0].tiles_resumed == 9 * 17
    assert _outputs(out) == _outputs(tmp_path / "straight")


def _windows_done(out: Path, prompts: list[str], options: dict):
    """A runner and the scene, after the 5 window tasks of the scene have run (in this process)."""
    from rrsis_cli.inputs import find_scenes
    from rrsis_cli.predict import SceneRunner

    runner = SceneRunner("null", prompts, out, PredictOptions(**options))
    scene = find_scenes([SCENE])[0]
    for rows in window_plan((791, 718), runner.tile, runner.options, 60):
        assert runner.run_window(scene, rows)["error"] is None
    return runner, scene


def test_finishing_a_pair_with_threads_writes_the_bytes_of_an_in_process_run(tmp_path):
    """Each prompt of a split scene is finished on its own (:meth:`SceneRunner.finish_pair`), its COGs compressed
    in 3 GDAL threads and written beside its vectors: the files are those of an uninterrupted in-process run."""
    prompts = ["the river", "fields"]
    predict([SCENE], "null", prompts, tmp_path / "straight", PredictOptions(**OPTIONS))
    out = tmp_path / "out"
    runner, scene = _windows_done(out, prompts, OPTIONS)
    for prompt in prompts:
        record, (result,), km2 = runner.finish_pair(scene, prompt, threads=3)
        assert result.prompt == prompt and result.status == "done" and result.tiles == 0  # nothing recomputed
        assert set(result.outputs) == {"prob", "vectors", "mask"} and "error" not in record
        assert km2 > 0
    assert runner.finish_threads == 1  # back to the default for the runner's next task
    assert _outputs(out) == _outputs(tmp_path / "straight") and len(_outputs(out)) == 6


def test_vectors_failing_beside_the_cogs_keep_the_mask_and_the_probabilities(tmp_path, monkeypatch):
    """Threaded finishing keeps the rule of derived products: the vectors fail, the mask and prob.tif (kept so a
    rerun re-derives the vectors) are written, the pair is partial."""
    def broken(*args, **kwargs):
        raise RuntimeError("no vectors today")

    predict([SCENE], "null", ["the river"], tmp_path / "straight", PredictOptions(**OPTIONS))  # with prob.tif
    out = tmp_path / "out"
    runner, scene = _windows_done(out, ["the river"], dict(OPTIONS, save_prob=False))
    monkeypatch.setattr("rrsis_cli.predict.write.vectorise", broken)
    _, (result,), _ = runner.finish_pair(scene, "the river", threads=2)
    assert result.status == "partial" and "no vectors today" in result.error
    assert set(result.outputs) == {"prob", "mask"}
    straight = _outputs(tmp_path / "straight")
    assert _outputs(out) == {k: v for k, v in straight.items() if not k.endswith("mask.geojson")}


def test_a_cog_failing_in_its_thread_leaves_nothing_and_the_journal_to_resume(tmp_path, monkeypatch):
    """The mask COG fails in the thread beside the vectors: the pair fails with that error, nothing is at the
    final paths, the journal stays; a rerun writes the outputs without running a tile."""
    from rrsis_cli.predict import write as predict_write

    real = predict_write.to_cog

    def broken(src, dst, tags, threads=1):
        if dst.name == "mask.tif":
            raise OSError("disk full")
        real(src, dst, tags, threads)

    out = tmp_path / "out"
    runner, scene = _windows_done(out, ["the river"], OPTIONS)
    monkeypatch.setattr(predict_write, "to_cog", broken)
    _, (result,), _ = runner.finish_pair(scene, "the river", threads=2)
    assert result.status == "failed" and "disk full" in result.error
    assert _outputs(out) == {}
    monkeypatch.undo()
    again = predict([SCENE], "null", ["the river"], out, PredictOptions(**OPTIONS))
    assert again.results[0].status == "done" and again.results[0].tiles == 0
    assert again.results[0].tiles_resumed == 15 * 17


def test_cog_compressed_in_threads_is_the_same_file(tmp_path):
    """GDAL's NUM_THREADS compresses tiles in parallel and writes them in order: a 1300 x 1100 mask (3 x 3 tiles
    and two overviews) gives the same COG with 1 and 3 threads."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from rrsis_cli.outputs import to_cog

    yy, xx = np.mgrid[0:1100, 0:1300]
    mask = ((np.sin(xx / 37.0) + np.cos(yy / 23.0)) > 0.3).astype(np.uint8)
    mask[:40, :] = 255
    raw = tmp_path / "mask_raw.tif"
    with rasterio.open(raw, "w", driver="GTiff", width=1300, height=1100, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 10, 10), nodata=255, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(mask, 1)
    to_cog(raw, tmp_path / "one.tif", {"prompt": "x"})
    to_cog(raw, tmp_path / "three.tif", {"prompt": "x"}, threads=3)
    with rasterio.open(tmp_path / "three.tif") as cog:
        assert cog.overviews(1) == [2, 4] and (cog.read(1) == mask).all()
    assert (tmp_path / "one.tif").read_bytes() == (tmp_path / "three.tif").read_bytes()


def test_a_split_scene_gathers_its_prompts_finishing_outcomes():
    """One finishing task per prompt: results in prompt order, km² and encoder calls added, the record of a
    task that opened the scene kept over that of one whose worker died."""
    from rrsis_cli.inputs import find_scenes
    from rrsis_cli.predict.tasks import failed_outcome, scene_outcome

    scene = find_scenes([SCENE])[0]
    done = {"record": {"path": str(SCENE), "width": 791}, "km2": 1.5, "encoder_calls": 1, "model": "null",
            "model_sha256": "abc", "tile_size": 64,
            "results": [{"scene": str(SCENE), "prompt": "a", "status": "done"}]}
    lost = failed_outcome(scene, ["b"], "KilledWorker")
    outcome = scene_outcome([lost, done])
    assert [r["prompt"] for r in outcome["results"]] == ["b", "a"]
    assert [r["status"] for r in outcome["results"]] == ["failed", "done"]
    assert outcome["record"] == done["record"] and outcome["km2"] == 1.5 and outcome["encoder_calls"] == 1
    assert outcome["model_sha256"] == "abc"
    assert scene_outcome([lost])["record"]["error"] == "KilledWorker" and "model" not in scene_outcome([lost])


def test_output_threads_follow_the_environment(monkeypatch):
    assert distributed.output_threads({"RRSIS_OUTPUT_THREADS": "3"}) == 3
    assert distributed.output_threads({"RRSIS_OUTPUT_THREADS": "0"}) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert distributed.output_threads({}) == 4
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert distributed.output_threads({}) == 1


def test_worker_killed_mid_window_loses_nothing_journaled(tmp_path, two_workers):
    """A worker is SIGKILLed while its window task has journaled some bands: the window is rescheduled, resumes
    after those bands (counted: they are never written again), the other windows finish, and the outputs are
    the bytes of an in-process run."""
    from rrsis_cli.inputs import find_scenes, work_dir
    from rrsis_cli.models import build_model, save_model

    model = tmp_path / "model"
    save_model(build_model("lavt-tiny", seed=5), model)  # a real network: windows last long enough to be hit
    options = dict(OPTIONS, bands=[1, 2, 3], save_prob=False)
    prompt = "the river"
    out = tmp_path / "out"
    journals = work_dir(out, find_scenes([SCENE])[0], prompt)
    cluster, client = two_workers
    pids = client.run(os.getpid)
    victim, pid = next(iter(pids.items()))
    killed: list[int] = []

    def kill_mid_window():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for key in client.processing(workers=[victim]).get(victim, ()):
                if not str(key).startswith("rrsis-window-"):
                    continue
                first, last = str(key).split("-")[3:5]
                journal = journals / f"journal-{first}-{last}.txt"
                if journal.is_file() and 0 < len(journal.read_text().splitlines()) < int(last) - int(first) + 1:
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.3)  # dead: nothing more is appended
                    killed.append(len(journal.read_text().splitlines()))
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_mid_window)
    killer.start()
    manifest = predict([SCENE], str(model), [prompt], out, PredictOptions(**options),
                       scheduler=cluster.scheduler_address, retries=2, split_tiles=60)
    killer.join()
    assert killed, "no worker was killed mid-window: every window finished before the victim journaled a band"
    (result,) = manifest.results
    assert result.status == "done" and manifest.exit_code == 0
    # the bands the killed attempt journaled are resumed, not written again: written + journaled-before = rows
    assert result.windows == {"tasks": 5, "bands_written": 15 - killed[0], "bands_resumed": killed[0]}
    here = predict([SCENE], str(model), [prompt], tmp_path / "here", PredictOptions(**options))
    assert here.exit_code == 0 and _outputs(tmp_path / "here") == _outputs(out)


def _slow_square(x: int) -> int:
    time.sleep(0.02)
    return x * x


def test_streaming_submission_keeps_at_most_the_window_in_flight():
    """Tasks are submitted as results come back: never more than the window outstanding (submitted and not yet
    handed back); a follow-up task queued while consuming runs next."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        outstanding: set[str] = set()
        most = [0]
        submit = client.submit

        def counting_submit(*args, **kwargs):
            outstanding.add(kwargs["key"])
            most[0] = max(most[0], len(outstanding))
            return submit(*args, **kwargs)

        client.submit = counting_submit
        queue = deque(distributed.Task(f"square-{i}", _slow_square, (i,), i) for i in range(30))
        results = {}
        for task, result, error in distributed.stream_tasks(client, queue, retries=0, window=3):
            assert error is None
            outstanding.discard(task.key)
            results[task.tag] = result
            if task.tag == 5:
                queue.appendleft(distributed.Task("follow-up", _slow_square, (100,), "follow-up"))
        assert most[0] == 3  # the window was used, and never exceeded
        assert results == {**{i: i * i for i in range(30)}, "follow-up": 10_000}
        assert distributed.in_flight_limit(client, None) == 8  # default: 2 per worker thread


def test_local_gpu_workers_are_pinned_one_per_device(monkeypatch):
    """FAKED DEVICES: no GPU here. With two GPUs reported, `--cluster local` starts two worker processes, each
    seeing only its own device through CUDA_VISIBLE_DEVICES (the dask-cuda path is switched off, as when it is
    not installed)."""
    monkeypatch.setattr(distributed, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails: the SpecCluster of pinned nannies
    with distributed.make_client("local", None) as client:
        marker = distributed.FIRST_GPU_IS_MINE
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get(marker)))
        client.cluster.close()
    assert sorted(seen.values()) == [("0", "1"), ("1", "1")]  # each its own device, known as cuda:0
    assert distributed.gpu_worker_env(2, ["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4"  # local:3 on 2 GPUs


def test_worker_device_uses_the_workers_own_gpu(monkeypatch):
    """FAKED DEVICES: torch reports 4 GPUs; worker k of a SLURM job (name ``...-k``) gets cuda:k, a worker
    pinned to one device gets cuda:0, an explicit device is kept."""
    import distributed as dask_distributed
    import torch

    class FakeWorker:
        name = "SLURMCluster-7-3"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(dask_distributed, "get_worker", lambda: FakeWorker())
    assert distributed.worker_device("auto") == "cuda:3"
    FakeWorker.name = 6
    assert distributed.worker_device("auto") == "cuda:2"
    assert distributed.worker_device("cpu") == "cpu"
    monkeypatch.setenv(distributed.FIRST_GPU_IS_MINE, "1")  # a local GPU cluster: the first device it sees
    assert distributed.worker_device("auto") == "cuda:0"
    monkeypatch.delenv(distributed.FIRST_GPU_IS_MINE)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.worker_device("auto") == "cuda:0"


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert distributed.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert distributed.visible_gpus() == []


def test_slurm_gpu_job_requests_gres_and_one_worker_per_gpu():
    """--cluster slurm --slurm-gpus 2: the job script asks SLURM for 2 GPUs and starts 2 workers."""
    jobs, cluster = distributed.slurm_cluster({"gpus": 2, "jobs": 4, "queue": "gpu"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 4 and "#SBATCH --gres=gpu:2" in script and "--nworkers 2" in script

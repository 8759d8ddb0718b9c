"""Scale-out for ``rrsis predict``: dask.distributed (a LocalCluster, an existing scheduler or SLURM through
dask-jobqueue), deterministic sharding for job arrays, per-shard manifests and their merge, and the
output-directory lock.

Decisions:

* **One task per scene.** A task runs every prompt of its scene with the worker's model. Large scenes are not
  split across workers: the per-tile journal (:mod:`rrsis_cli.tiling`) already makes a retried scene resume
  where the dead worker stopped, and one scene's tiles are batched on one device, which is what a GPU wants.
* **Model once per worker.** Workers keep a :class:`~rrsis_cli.predict.SceneRunner` per (model, prompts,
  options) in process memory; with GPUs, worker *k* is pinned to ``cuda:(k mod n_gpus)``.
* **Failures.** An exception inside a scene is caught and reported in the manifest (as in-process). A worker that
  dies is replaced (nanny) and its task rescheduled by dask; after ``retries`` further deaths the scene is reported
  as failed (``KilledWorker``) and the run exits 3. Finished scenes are skipped on rerun by their configuration
  hash, unfinished ones resume from their journal.
* **Sharding.** ``--shard I/N`` keeps the scenes whose path hash falls in shard I (0-based): disjoint, complete,
  independent of input order and of which other scenes are listed. Inside a SLURM job array it defaults to
  ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` / ``SLURM_ARRAY_TASK_COUNT``. Each shard writes
  ``manifest-shard-I-of-N.json``; ``rrsis manifest merge OUT`` combines them.
* **Lock.** A run holds an exclusive ``fcntl`` lock on ``OUT/.rrsis.lock`` (``OUT/.rrsis-shard-I-of-N.lock`` for a
  shard, so the shards of one array run side by side). A second run into the same output waits up to
  ``lock_wait`` seconds, then fails with exit code 1 naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rrsis_cli import __version__, console
from rrsis_cli.errors import OutputError, UsageError

_RUNNERS: dict[str, Any] = {}  # per worker process: SceneRunner by job key


# ------------------------------------------------------------------------------------------------ shards
def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(v) for v in spec.split("/"))
    except ValueError as exc:
        raise UsageError(f"--shard must look like I/N (0-based), got {spec!r}") from exc
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {spec}: need 0 <= I < N")
    return index, count


def shard_from_environment(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(I, N) of a SLURM job-array task, or None outside one."""
    env = dict(os.environ if env is None else env)
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    return parse_shard(f"{index}/{int(env['SLURM_ARRAY_TASK_COUNT'])}")


def shard_of(scene: Path, count: int) -> int:
    """Shard of a scene: a hash of its absolute path, so it depends on nothing else."""
    digest = hashlib.sha256(str(Path(scene).absolute()).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(scenes: list, index: int, count: int) -> list:
    """The scenes (:class:`~rrsis_cli.inputs.Scene` or paths) of shard ``index`` of ``count``."""
    return [s for s in scenes if shard_of(getattr(s, "path", s), count) == index]


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.json" if shard is None else f"manifest-shard-{shard[0]}-of-{shard[1]}.json"


def merge_manifests(out: str | Path) -> dict[str, Any]:
    """Combine ``OUT/manifest-shard-*-of-N.json`` into ``OUT/manifest.json``; every shard must be present."""
    out = Path(out)
    paths = sorted(out.glob("manifest-shard-*-of-*.json"))
    if not paths:
        raise UsageError(f"no shard manifests (manifest-shard-I-of-N.json) in {out}")
    parts = [json.loads(p.read_text()) for p in paths]
    counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in paths}
    if len(counts) != 1:
        raise UsageError(f"shard manifests of different shard counts in {out}: {sorted(counts)}")
    count = counts.pop()
    present = {int(p.stem.split("-")[2]) for p in paths}
    missing = sorted(set(range(count)) - present)
    if missing:
        raise UsageError(f"shard(s) {', '.join(map(str, missing))} of {count} have no manifest in {out}")
    first = parts[0]
    merged = {**first, "shard": None, "shards_merged": count,
              "inputs": [i for m in parts for i in m["inputs"]],
              "results": [r for m in parts for r in m["results"]],
              "encoder_calls": sum(m["encoder_calls"] for m in parts),
              "seconds": max(m["seconds"] for m in parts)}
    done = [r for r in merged["results"] if r["status"] == "done"]
    merged["tiles_per_second"] = sum(r["tiles"] for r in done) / merged["seconds"] if merged["seconds"] else 0.0
    from rrsis_cli.predict import exit_code_for

    merged["exit_code"] = exit_code_for([r["status"] for r in merged["results"]])
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    os.replace(tmp, out / "manifest.json")
    return merged


# ------------------------------------------------------------------------------------------------ lock
@contextlib.contextmanager
def output_lock(out: Path, shard: tuple[int, int] | None = None, wait: float = 0.0):
    """Exclusive lock on the output directory (or on this shard of it) for the duration of a run."""
    name = ".rrsis.lock" if shard is None else f".rrsis-shard-{shard[0]}-of-{shard[1]}.lock"
    path = out / name
    handle = open(path, "a+")
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise OutputError(f"another rrsis run ({holder}) is writing here; wait for it or use "
                                      "--lock-wait SECONDS", out) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


# ------------------------------------------------------------------------------------------------ dask
def _job_key(model_spec: str, prompts: list[str], out: str, options: dict) -> str:
    return hashlib.sha256(json.dumps([model_spec, prompts, out, options], sort_keys=True, default=str)
                          .encode()).hexdigest()


def _worker_device(requested: str) -> str:
    """``auto`` on a worker: its own GPU (worker k -> cuda:k mod n) when there are GPUs, else the CPU."""
    import torch

    if requested != "auto" or not torch.cuda.is_available():
        return requested
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else int(hashlib.sha256(str(name).encode()).hexdigest(), 16)
    except (ImportError, ValueError):
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


def run_scene_task(scene: dict | Any, model_spec: str, prompts: list[str], out: str, options: dict
                   ) -> dict[str, Any]:
    """The dask task: one scene (a :class:`~rrsis_cli.inputs.Scene`, or its :meth:`Scene.as_dict`) with this
    worker's cached runner (model loaded once per worker). The scheduler sends the Scene itself: a remote scene's
    dict shows its URL redacted, which the worker could not open."""
    import torch

    from rrsis_cli.inputs import Scene
    from rrsis_cli.predict import PredictOptions, SceneRunner

    torch.set_num_threads(max(1, int(os.environ.get("RRSIS_WORKER_THREADS", "1"))))
    key = _job_key(model_spec, prompts, out, options)
    if key not in _RUNNERS:
        opts = PredictOptions(**{**options, "device": _worker_device(options["device"])})
        _RUNNERS[key] = SceneRunner(model_spec, prompts, Path(out), opts)
    runner = _RUNNERS[key]
    calls_before = runner.texts.calls
    record, results, km2 = runner.run(scene if isinstance(scene, Scene) else Scene.from_dict(scene))
    return {"record": record, "results": [asdict(r) for r in results], "km2": km2,
            "encoder_calls": runner.texts.calls - calls_before, "model": str(runner.model.config.get("name")),
            "model_sha256": runner.model.sha256, "tile_size": runner.tile}


def make_client(cluster: str | None, scheduler: str | None, slurm: dict[str, Any] | None = None):
    """A dask Client: an existing scheduler, a LocalCluster (``local`` or ``local:N`` worker processes, one
    thread each), or a SLURMCluster from dask-jobqueue (``slurm``; ``slurm`` options or the dask config)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s")
    if cluster is None or cluster.startswith("local"):
        workers = int(cluster.split(":", 1)[1]) if cluster and ":" in cluster else max(1, (os.cpu_count() or 2) // 2)
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             host="127.0.0.1")
        return Client(local)
    if cluster == "slurm":
        local_jobs, cluster_obj = slurm_cluster(slurm or {})
        cluster_obj.scale(jobs=local_jobs)
        return Client(cluster_obj)
    raise UsageError(f"--cluster must be local, local:N or slurm, got {cluster!r}")


def slurm_cluster(options: dict[str, Any]):
    """(jobs, SLURMCluster) from ``--slurm-*`` options; anything not given comes from the dask-jobqueue config
    (``~/.config/dask/jobqueue.yaml``)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise UsageError("--cluster slurm needs dask-jobqueue: pip install 'rrsis[slurm]'") from exc
    jobs = int(options.pop("jobs", 1) or 1)
    gpus = int(options.pop("gpus", 0) or 0)
    kwargs = {k: v for k, v in options.items() if v is not None}
    if gpus:
        kwargs.setdefault("job_extra_directives", []).append(f"--gres=gpu:{gpus}")
        kwargs.setdefault("processes", gpus)  # one worker process per GPU
        kwargs.setdefault("cores", gpus)
    kwargs.setdefault("cores", 1)
    kwargs.setdefault("memory", "16GB")
    return jobs, SLURMCluster(**kwargs)


def predict_on_cluster(scenes: list, model_spec: str, prompts: list[str], out: Path, options,
                       client, retries: int = 2, on_outcome=None) -> list[dict[str, Any]]:
    """Run every scene as one dask task; one task result (see :func:`run_scene_task`) per scene, in input order;
    a scene whose task could not finish gets a failed record. ``on_outcome(outcome)`` is called as each scene
    finishes (so an interrupted run keeps what finished)."""
    from distributed import as_completed

    from rrsis_cli.inputs import relative_output_dir
    from rrsis_cli.predict import SceneResult

    plain = asdict(options)
    futures = {client.submit(run_scene_task, s, model_spec, list(prompts), str(out), plain, pure=False,
                             retries=retries, key=f"rrsis-scene-{i}-{s.path.stem}"): s
               for i, s in enumerate(scenes)}
    outcomes: dict[Any, dict[str, Any]] = {}
    with console.progress_bar(len(futures), "scenes", unit="scene") as bar:
        for future in as_completed(futures):
            scene = futures[future]
            try:
                outcomes[scene] = future.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connections: report the scene
                message = f"{scene.path}: {type(exc).__name__}: {exc}"
                console.error(message)
                outcomes[scene] = {"record": {**scene.as_dict(), "error": message}, "km2": 0.0,
                                   "results": [asdict(SceneResult(str(scene.path), p, "failed",
                                                                  relative_output_dir(scene, p), error=message))
                                               for p in prompts], "encoder_calls": 0}
            if on_outcome is not None:
                on_outcome(outcomes[scene])
            bar.update(1)
    return [outcomes[s] for s in scenes]


def cluster_summary(client) -> str:
    info = client.scheduler_info()
    return f"dask scheduler {info.get('address')} with {len(info.get('workers', {}))} worker(s); rrsis {__version__}"

"""Scale-out machinery, independent of what runs: a dask client (a LocalCluster, with one worker pinned to each
GPU where there are GPUs, an existing scheduler, or SLURM through dask-jobqueue), streaming submission of task
functions it is given, a per-worker cache, deterministic sharding for job arrays and the output-directory lock.
The predict pipeline (:mod:`rrsis_cli.predict`) builds its tasks and hands them here; nothing here imports it.

Decisions:

* **Streaming submission.** :func:`stream_tasks` keeps at most a window of tasks in flight (2 per worker thread
  by default, re-read as workers join) and yields each result as it arrives, so the client holds a bounded number
  of futures whatever the number of scenes, and the caller's manifest grows as results come in. The caller may
  queue follow-up tasks while it consumes results (predict's finishing tasks, one per prompt, of a scene split
  into window tasks).
* **Output threads.** A split scene's finishing task runs while the scene's other workers idle: it may use
  :func:`output_threads` threads (``RRSIS_OUTPUT_THREADS``, else the host's cores up to 4) for GDAL's tile
  compression and for writing its COGs beside its vectors; the files are the same bytes.
* **Once per worker.** :func:`worker_cached` keeps an object (predict's scene runner, its model loaded) per key
  in each worker process.
* **GPU workers.** ``--cluster local`` on a host with GPUs starts one worker per GPU, each pinned with
  ``CUDA_VISIBLE_DEVICES`` (dask-cuda's ``LocalCUDACluster`` when it is installed, ``pip install 'rrsis[gpu]'``;
  otherwise a SpecCluster of nannies with one device each); on other clusters (a scheduler address, several
  workers of a SLURM job) :func:`worker_device` gives worker *k* of a job ``cuda:(k mod n)``.
* **Failures.** A worker that dies is replaced (nanny) and its task rescheduled by dask; after ``retries`` further
  deaths the task's error is yielded to the caller (``KilledWorker``).
* **Sharding.** ``--shard I/N`` keeps the scenes whose path hash falls in shard I (0-based): disjoint, complete,
  independent of input order and of which other scenes are listed. Inside a SLURM job array it defaults to
  ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` / ``SLURM_ARRAY_TASK_COUNT``. Each shard writes
  ``manifest-shard-I-of-N.json``; ``rrsis manifest merge OUT`` combines them (:mod:`rrsis_cli.manifest`).
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
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrsis_cli import __version__
from rrsis_cli.errors import OutputError, UsageError
from rrsis_cli.manifest import manifest_name, merge_manifests

__all__ = ["Task", "make_client", "manifest_name", "merge_manifests", "output_lock", "output_threads", "parse_shard",
           "select_shard", "shard_from_environment", "stream_tasks", "worker_cached", "worker_device"]

_CACHE: dict[str, Any] = {}  # per worker process: objects by key (worker_cached)
FIRST_GPU_IS_MINE = "RRSIS_FIRST_GPU_IS_MINE"  # set in the workers of a local GPU cluster (worker_device)


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


# ------------------------------------------------------------------------------------------------ workers
def worker_cached(key: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per worker process for each ``key`` (any JSON-able value), then the same object."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    if digest not in _CACHE:
        _CACHE[digest] = build()
    return _CACHE[digest]


def worker_device(requested: str) -> str:
    """``auto`` on a worker: its own GPU when there are GPUs, else the CPU. A worker of a local GPU cluster
    (:func:`local_cluster`: its own device is the first it sees, with rrsis's pinning or dask-cuda's) or one that
    sees a single device uses ``cuda:0``; otherwise worker *k* (the number that ends its name: ``3``, or
    ``SLURMCluster-7-3`` for the fourth worker of a SLURM job) uses ``cuda:(k mod n)``."""
    import torch

    if requested != "auto" or not torch.cuda.is_available():
        return requested
    if torch.cuda.device_count() == 1 or os.environ.get(FIRST_GPU_IS_MINE) == "1":
        return "cuda:0"
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return "cuda:0"
    found = re.search(r"(\d+)$", name)
    index = int(found.group(1)) if found else int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return f"cuda:{index % torch.cuda.device_count()}"


def output_threads(env: dict[str, str] | None = None) -> int:
    """Threads a worker's output step may use (a split scene's finishing task, while the scene's other workers
    idle): ``RRSIS_OUTPUT_THREADS`` when set (at least 1), else this host's cores, at most 4."""
    env = os.environ if env is None else env
    if env.get("RRSIS_OUTPUT_THREADS", "").strip():
        return max(1, int(env["RRSIS_OUTPUT_THREADS"]))
    return max(1, min(4, os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """The GPUs this host offers: the ids in ``CUDA_VISIBLE_DEVICES`` when set (a SLURM allocation), else
    ``0 .. n-1`` for the n devices torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_worker_env(index: int, gpus: list[str]) -> dict[str, str]:
    """The environment of local worker ``index``: pinned to one GPU (round robin over ``gpus``)."""
    return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)], FIRST_GPU_IS_MINE: "1"}


# ------------------------------------------------------------------------------------------------ clients
def make_client(cluster: str | None, scheduler: str | None, slurm: dict[str, Any] | None = None):
    """A dask Client: an existing scheduler, a local cluster (``local`` or ``local:N`` worker processes, one
    thread each; see :func:`local_cluster`), or a SLURMCluster from dask-jobqueue (``slurm``; ``slurm`` options
    or the dask config)."""
    from distributed import Client

    if scheduler:
        return Client(scheduler, timeout="30s")
    if cluster is None or cluster == "local" or cluster.startswith("local:"):
        count = cluster.split(":", 1)[1] if cluster and ":" in cluster else None
        if count is not None and not (count.isdigit() and int(count) > 0):
            raise UsageError(f"--cluster local:N needs a positive number of workers, got {cluster!r}")
        return Client(local_cluster(None if count is None else int(count)))
    if cluster == "slurm":
        local_jobs, cluster_obj = slurm_cluster(slurm or {})
        cluster_obj.scale(jobs=local_jobs)
        return Client(cluster_obj)
    raise UsageError(f"--cluster must be local, local:N or slurm, got {cluster!r}")


def local_cluster(workers: int | None = None):
    """Worker processes on this host, one thread each. Without GPUs: ``workers`` (default: half the cores). With
    GPUs: ``workers`` (default: one per GPU), worker k pinned to GPU k mod n by ``CUDA_VISIBLE_DEVICES``; with
    one worker per GPU and dask-cuda installed, its ``LocalCUDACluster`` does the pinning."""
    from distributed import LocalCluster

    gpus = visible_gpus()
    if not gpus:
        return LocalCluster(n_workers=workers or max(1, (os.cpu_count() or 2) // 2), threads_per_worker=1,
                            processes=True, dashboard_address=None, host="127.0.0.1")
    workers = workers or len(gpus)
    if workers == len(gpus):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:  # its workers see every GPU, their own first; they inherit this marker from this process
            os.environ[FIRST_GPU_IS_MINE] = "1"
            try:
                return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(gpus), threads_per_worker=1,
                                        dashboard_address=None, host="127.0.0.1")
            finally:
                os.environ.pop(FIRST_GPU_IS_MINE, None)
    return pinned_cluster(workers, gpus)


def pinned_cluster(workers: int, gpus: list[str]):
    """A SpecCluster of ``workers`` nannies, worker k seeing only GPU ``gpus[k mod n]``."""
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    specs = {k: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": gpu_worker_env(k, gpus)}}
             for k in range(workers)}
    return SpecCluster(workers=specs, scheduler=scheduler, name="rrsis-gpu")


def slurm_cluster(options: dict[str, Any]):
    """(jobs, SLURMCluster) from ``--slurm-*`` options; anything not given comes from the dask-jobqueue config
    (``~/.config/dask/jobqueue.yaml``). ``gpus`` per job: ``--gres=gpu:N`` and N worker processes, worker k of
    the job on ``cuda:k`` (:func:`worker_device`)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise UsageError("--cluster slurm needs dask-jobqueue: pip install 'rrsis[slurm]'") from exc
    options = dict(options)
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


def cluster_summary(client) -> str:
    info = client.scheduler_info()
    return f"dask scheduler {info.get('address')} with {len(info.get('workers', {}))} worker(s); rrsis {__version__}"


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class Task:
    """One call ``function(*args)`` to run on a worker; ``key`` names it on the scheduler (unique among the tasks
    in flight), ``tag`` is the caller's."""

    key: str
    function: Callable[..., Any]
    args: tuple
    tag: Any = None


def in_flight_limit(client, window: int | None) -> int:
    """``window``, or 2 tasks per worker thread the scheduler knows now (at least 2)."""
    if window:
        return int(window)
    return max(2, 2 * sum(client.nthreads().values()))


def stream_tasks(client, queue: deque[Task], retries: int = 2, window: int | None = None
                 ) -> Iterator[tuple[Task, Any, BaseException | None]]:
    """Run the tasks of ``queue`` with at most :func:`in_flight_limit` of them (re-read every 2 s) submitted and
    not yet handed back; yield ``(task, result, None)`` or ``(task, None, error)`` in the order they finish.
    Between two items the caller may add tasks to ``queue`` (``appendleft`` runs one next). A task whose worker dies is retried up to
    ``retries`` times by dask; its futures are released as soon as its result is handed back."""
    from distributed import as_completed

    running: dict[str, tuple[Any, Task]] = {}
    finished = as_completed()
    limit = {"value": in_flight_limit(client, window), "at": time.monotonic()}

    def submit_more() -> None:
        if time.monotonic() - limit["at"] > 2.0:  # workers join and leave: ask the scheduler now and then
            limit.update(value=in_flight_limit(client, window), at=time.monotonic())
        while queue and len(running) < limit["value"]:
            task = queue.popleft()
            future = client.submit(task.function, *task.args, key=task.key, pure=False, retries=retries)
            running[future.key] = (future, task)
            finished.add(future)

    submit_more()
    while running:
        done = next(finished)
        future, task = running.pop(done.key)
        try:
            result, error = future.result(), None
        except Exception as exc:  # noqa: BLE001 - KilledWorker, lost connections: the caller reports the task
            result, error = None, exc
        future.release()
        yield task, result, error
        submit_more()

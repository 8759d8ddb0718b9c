"""Scale-out benchmark of ``rrsis predict`` (issue: one huge scene on many workers). Everything runs on this
machine, with the null model (no network cost: what is measured is the scale-out machinery and the host
pipeline).

(a) ``small``: N small scenes in one process, on ``--cluster local:2`` (scheduler inside the client process), and
    on a separate scheduler with 2 workers (so the client's and the scheduler's peak RSS are measured apart):
    seconds, scenes/hour, peak RSS of the client (the ``rrsis predict`` process) and of the scheduler.
(b) ``large``: one SIZE² scene on 1 and on 2 dask workers, split into window tasks (``--split-tiles``), plus
    the in-process run as reference; speedup of 2 workers over 1 (goal >= 1.6) and whether the three masks
    are the same bytes.

  python benchmarks/scaleout_bench.py --scenes 20 --large-size 2000 --split-tiles 8        # smoke (~2 min)
  python benchmarks/scaleout_bench.py --scenes 500 --large-size 12000                      # full (~5-8 min)

With the null model a tile costs little, so the serial part of a split scene (assembling the journal into the
mask and probability COGs, once every window is done) weighs on the 2-over-1 speedup; ``--model lavt-tiny``
(random weights) makes the windows compute-bound. A split scene is finished by one task per prompt
(``--prompts N`` runs N prompts), which compresses its COGs in ``RRSIS_OUTPUT_THREADS`` GDAL threads (default:
the cores, at most 4) and writes them beside its vectors (``--vectors``). The default ``--split-tiles 512`` cuts a 12000² scene (31 x 31
tiles of 512 px) into 2 windows of 16 and 15 tile rows: one per worker, one recomputed tile row.

Each run is a separate ``python -m rrsis_cli predict`` process (peak RSS from ``wait4``); the scheduler's peak
is its ``VmHWM``. Results are appended as JSON lines to benchmarks/results/scaleout_bench.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "examples" / "data" / "rgbn_5m.tif"
RESULTS = HERE / "results" / "scaleout_bench.jsonl"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RRSIS_WORKER_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def record(payload: dict) -> None:
    line = {"kind": "scaleout", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "command": " ".join(sys.argv), **payload}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line, indent=2))


def write_small_scenes(folder: Path, count: int, size: int) -> None:
    """``count`` distinct ``size``² RGB uint8 GeoTIFFs (smooth fields, the scene number in the first row)."""
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        path = folder / f"scene{i:05d}.tif"
        if path.exists():
            continue
        phase = i * 0.37
        bands = np.stack([np.sin(6 * xx + phase) + np.cos(5 * yy), np.cos(4 * xx - phase), np.sin(3 * yy + 2 * phase)])
        image = np.clip((bands + 2) * 60, 0, 255).astype(np.uint8)
        image[:, 0, :8] = np.frombuffer(i.to_bytes(8, "big"), np.uint8)
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
                   "crs": "EPSG:32633", "transform": from_origin(500000 + 10 * size * i, 4600000, 10, 10)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(image)


MODEL = ["--model", "null"]  # set from --model in main()
PROMPTS = ["--prompt", "the building"]  # set from --prompts in main()


def run_predict(inputs: list[str], out: Path, extra: list[str]) -> dict:
    """One ``rrsis predict`` process: seconds, its peak RSS, and the manifest's exit code."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "rrsis_cli", "--quiet", "predict", *inputs, *MODEL, *PROMPTS,
           "--out", str(out), "--device", "cpu", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"rrsis predict exited {code}: {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"seconds": round(seconds, 2), "client_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "results": len(manifest["results"]), "tiles": sum(r["tiles"] for r in manifest["results"])}


class Scheduler:
    """A ``dask scheduler`` process and ``workers`` worker processes (one thread each) on this host."""

    def __init__(self, work: Path, workers: int):
        self.file = work / "scheduler.json"
        self.file.unlink(missing_ok=True)
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.file)], env=ENV, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not self.file.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", str(workers),
             "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=ENV, stderr=subprocess.DEVNULL)
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.scheduler.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def close(self) -> None:
        for proc in (self.workers, self.scheduler):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def small(a, work: Path) -> dict:
    scenes = work / f"small-{a.scene_size}"
    write_small_scenes(scenes, a.scenes, a.scene_size)
    listing = work / "small.txt"
    listing.write_text("".join(f"{scenes / f'scene{i:05d}.tif'}\n" for i in range(a.scenes)))
    rows = {"in-process": run_predict([str(listing)], work / "out-small-here", []),
            "local:2": run_predict([str(listing)], work / "out-small-local2", ["--cluster", "local:2"])}
    cluster = Scheduler(work, 2)
    try:
        rows["scheduler+2 workers"] = run_predict([str(listing)], work / "out-small-sched",
                                                  ["--scheduler", cluster.address])
        rows["scheduler+2 workers"]["scheduler_peak_rss_mb"] = cluster.peak_rss_mb()
    finally:
        cluster.close()
    for row in rows.values():
        row["scenes_per_hour"] = round(a.scenes / row["seconds"] * 3600)
    return {"scenes": a.scenes, "scene_size": a.scene_size, "model": MODEL, "runs": rows}


def mask_digest(out: Path) -> str:
    """One digest of every output file (masks, probabilities, vectors) of the run, by relative path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name.startswith(("mask.", "prob."))):
        digest.update(str(path.relative_to(out)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def large(a, work: Path) -> dict:
    from rrsis_cli.bench import build_scene

    scene = work / f"large-{a.large_size}.tif"
    if not scene.exists():
        build_scene(SOURCE, scene, a.large_size)
    common = ["--bands", "1,2,3", "--split-tiles", str(a.split_tiles), *([] if a.vectors else ["--no-vectors"])]
    rows, digests = {}, {}
    for workers in (1, 2):
        cluster = Scheduler(work, workers)
        try:
            out = work / f"out-large-{workers}"
            rows[f"{workers} worker(s)"] = run_predict([str(scene)], out, ["--scheduler", cluster.address, *common])
            digests[workers] = mask_digest(out)
        finally:
            cluster.close()
    if not a.skip_in_process:
        out = work / "out-large-here"
        rows["in-process"] = run_predict([str(scene)], out, common)  # --split-tiles: dask only
        digests["in-process"] = mask_digest(out)
    speedup = rows["1 worker(s)"]["seconds"] / rows["2 worker(s)"]["seconds"]
    return {"size": a.large_size, "split_tiles": a.split_tiles, "model": MODEL, "vectors": a.vectors,
            "prompts": a.prompts, "output_threads": ENV.get("RRSIS_OUTPUT_THREADS") or "default", "runs": rows,
            "speedup_2_over_1": round(speedup, 2), "goal_met": speedup >= 1.6,
            "outputs_identical": len(set(digests.values())) == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("small", "large", "both"), default="both")
    parser.add_argument("--scenes", type=int, default=500, help="small scenes for (a)")
    parser.add_argument("--scene-size", type=int, default=256, help="side of each small scene, px")
    parser.add_argument("--large-size", type=int, default=12000, help="side of the large scene of (b), px")
    parser.add_argument("--split-tiles", type=int, default=512, help="--split-tiles of (b): tiles per window task")
    parser.add_argument("--model", default="null", help="null (host pipeline only), or a tiny card such as "
                        "lavt-tiny (random weights) to weigh compute against the serial assembly")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--vectors", action="store_true", help="(b) also vectorises (in the finishing tasks)")
    parser.add_argument("--prompts", type=int, default=1, help="prompts per run (a split scene: one finishing task each)")
    parser.add_argument("--skip-in-process", action="store_true", help="(b) without the in-process reference")
    parser.add_argument("--work", default="/tmp/rrsis-scaleout-bench")
    a = parser.parse_args()
    MODEL[:] = ["--model", a.model] + ([] if a.model == "null" else ["--allow-random-weights"]) + \
        ([] if a.tile_size is None else ["--tile-size", str(a.tile_size)])
    PROMPTS[:] = [arg for k in range(a.prompts) for arg in ("--prompt", "the building" if k == 0 else
                                                           f"the building {k + 1}")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    payload = {}
    if a.part in ("small", "both"):
        payload["small"] = small(a, work)
    if a.part in ("large", "both"):
        payload["large"] = large(a, work)
    record(payload)


if __name__ == "__main__":
    main()

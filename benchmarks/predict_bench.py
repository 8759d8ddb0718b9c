"""Predict benchmarks for benchmarks/RESULTS.md (issues: predict, bench, scale-out). Everything runs on this
machine; each figure is the median of --repeats runs.

  python benchmarks/predict_bench.py throughput --model lavt-swin-t --size 2000     # ours vs forward vs naive
  python benchmarks/predict_bench.py memory --model lavt-tiny --tile-size 512 --sizes 2000 20000
  python benchmarks/predict_bench.py scaleout --model lavt-tiny --tile-size 256 --scenes 8 --size 1500

Results are appended as JSON lines to benchmarks/results/predict_bench.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rrsis_cli.bench import bench, build_scene

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "examples" / "data" / "rgbn_5m.tif"
RESULTS = HERE / "results" / "predict_bench.jsonl"


def record(kind: str, payload: dict) -> None:
    line = {"kind": kind, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "command": " ".join(sys.argv), **payload}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line, indent=2))


def naive(scene: Path, model: str, prompt: str, tile_size: int | None, out: Path) -> dict:
    cmd = [sys.executable, str(HERE / "naive_predict.py"), str(scene), model, prompt, str(out)]
    if tile_size:
        cmd += ["--tile-size", str(tile_size)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "naive baseline failed"
        log.seek(0)
        result = json.loads(log.read().decode().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def throughput(a) -> None:
    work = Path(a.work)
    report = bench(a.model, work / f"ours-{a.size}", size=a.size, source=SOURCE, tile_size=a.tile_size,
                   batch_size=a.batch_size, device="cpu", repeats=a.repeats, forward_tiles=a.forward_tiles)
    scene = Path(report["scene"])
    runs = [naive(scene, a.model, "the building", a.tile_size, work / "naive.tif") for _ in range(a.repeats)]
    naive_tps = statistics.median(r["tiles_per_s"] for r in runs)
    naive_rss = statistics.median(r["peak_rss_mb"] for r in runs)
    ours = report["predict"]
    record("throughput", {
        "model": a.model, "size": a.size, "tile_size": report["tile_size"], "batch_size": a.batch_size,
        "tiles": ours["tiles"], "ours_tiles_per_s": ours["tiles_per_s"], "ours_wall_s": ours["wall_s"],
        "ours_peak_rss_mb": ours["peak_rss_mb"], "forward_only_tiles_per_s": report["forward_only"]["tiles_per_s"],
        "ratio_predict_to_forward": report["ratio_predict_to_forward"], "stages_s": ours["stages_s"],
        "km2_per_hour": ours["km2_per_hour"], "encoder_calls": ours["encoder_calls"],
        "naive_tiles_per_s": naive_tps, "naive_peak_rss_mb": naive_rss,
        "speedup_vs_naive": ours["tiles_per_s"] / naive_tps, "memory_ratio_naive_to_ours": naive_rss / ours["peak_rss_mb"],
        "repeats": a.repeats})


def memory(a) -> None:
    work = Path(a.work)
    rows = {}
    for size in a.sizes:
        report = bench(a.model, work / f"mem-{size}", size=size, source=SOURCE, tile_size=a.tile_size,
                       batch_size=a.batch_size, device="cpu", repeats=a.repeats, forward_tiles=8)
        rows[size] = {"tiles": report["predict"]["tiles"], "peak_rss_mb": report["predict"]["peak_rss_mb"],
                      "seconds": report["predict"]["seconds"], "stages_s": report["predict"]["stages_s"],
                      "tiles_per_s": report["predict"]["tiles_per_s"]}
        if a.naive:
            rows[size]["naive"] = naive(Path(report["scene"]), a.model, "the building", a.tile_size,
                                        work / f"naive-{size}.tif")
        (work / f"mem-{size}" / f"scene_{size}.tif").unlink(missing_ok=True) if a.cleanup else None
    small, large = min(a.sizes), max(a.sizes)
    record("memory", {"model": a.model, "tile_size": a.tile_size, "batch_size": a.batch_size, "sizes": rows,
                      "rss_ratio_large_to_small": rows[large]["peak_rss_mb"] / rows[small]["peak_rss_mb"],
                      "repeats": a.repeats})


def scaleout(a) -> None:
    work = Path(a.work) / "scaleout"
    scenes_dir = work / "scenes"
    scenes_dir.mkdir(parents=True, exist_ok=True)
    base = scenes_dir / "base.tif"
    if not base.exists():
        build_scene(SOURCE, base, a.size)
    for i in range(a.scenes):
        target = scenes_dir / f"scene{i:02d}.tif"
        if not target.exists():
            os.link(base, target)
    base.unlink()
    rows = {}
    for label, extra in (("in-process", []), ("local:1", ["--cluster", "local:1"]), ("local:2", ["--cluster", "local:2"])):
        times = []
        for _ in range(a.repeats):
            out = work / f"out-{label}"
            cmd = [sys.executable, "-m", "rrsis_cli", "--quiet", "predict", str(scenes_dir), "--model", a.model,
                   "--prompt", "the building", "--out", str(out), "--overwrite", "--device", "cpu",
                   "--tile-size", str(a.tile_size), "--allow-random-weights", *extra]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        rows[label] = {"seconds": seconds, "scenes_per_hour": a.scenes / seconds * 3600}
    record("scaleout", {"model": a.model, "tile_size": a.tile_size, "scenes": a.scenes, "size": a.size,
                        "runs": rows, "repeats": a.repeats})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["throughput", "memory", "scaleout"])
    ap.add_argument("--model", default="lavt-swin-t")
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forward-tiles", type=int, default=32)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--naive", action="store_true", help="memory: also run the naive baseline at each size")
    ap.add_argument("--cleanup", action="store_true", help="memory: delete each built scene after use")
    ap.add_argument("--work", default="/tmp/rrsis-bench")
    a = ap.parse_args()
    {"throughput": throughput, "memory": memory, "scaleout": scaleout}[a.kind](a)


if __name__ == "__main__":
    main()

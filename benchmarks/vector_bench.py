"""Vectorising predict's mask: seconds and peak memory of ``rrsis_cli.vectors.vectorise`` on synthetic masks.

Masks (deterministic, written as tiled DEFLATE GeoTIFFs in EPSG:32618 with 0.5 m pixels, plus a probability
raster):

* ``blobs``: ``--polygons`` separate small regions on a jittered grid of a ``--size`` mask: single pixels, bars,
  L shapes and 3x3 rings with a hole (one polygon each, never touching); where the jitter puts a region across
  a window seam it is merged across the seam. The memory goal compares 100 with 100,000 polygons on the same
  mask size: peak RSS(100,000) / peak RSS(100) <= 1.2.
* ``noisy``: uniform noise smoothed by a Gaussian of ``--sigma`` px and cut at its median: ragged regions with
  holes, many crossing seams, as an untrained model's mask. The speed goal: vectorise seconds / forward seconds
  <= 0.1 for a 6000^2 mask, the forward seconds being those of lavt-tiny on the issue's 6000^2 scene
  (``--forward-seconds``, 35.0 as measured in issue 18).

Each mask is made in one fresh process and vectorised in another (so peak RSS is the vectorisation's alone,
``resource.getrusage``: the process and, with ``--workers`` > 1, the largest worker). One JSON line per run is
printed and appended to ``benchmarks/results/vector_bench.jsonl``.

    python benchmarks/vector_bench.py memory --size 4096                 # 100 vs 100,000 polygons
    python benchmarks/vector_bench.py speed --size 6000 --sigma 5        # the noisy 6000^2 mask, default workers
    python benchmarks/vector_bench.py speed --size 6000 --sigma 5 --workers 1 2   # one process vs one worker more
    python benchmarks/vector_bench.py speed --size 6000 --sigma 5 --block 1024     # predict's window size
    python benchmarks/vector_bench.py speed --size 6000 --sigma 5 --impl reference --repeat 1   # before
    python benchmarks/vector_bench.py memory --size 512 --polygons 10 1000 --repeat 1 --out /tmp/smoke.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "vector_bench.jsonl"
BLOCK = 512


# ------------------------------------------------------------------------------------------------ masks
def blob_mask(size: int, polygons: int, seed: int = 0) -> np.ndarray:
    """``polygons`` separate 4-connected regions (pixel, bar, L, ring with a hole) on a jittered grid."""
    cells = int(np.ceil(np.sqrt(polygons)))
    pitch = size // cells
    if pitch < 5:
        raise SystemExit(f"{polygons} polygons do not fit in {size}^2 (need a 5 px pitch)")
    rng = np.random.default_rng(seed)
    shapes = [np.ones((1, 1)), np.ones((1, 3)), np.array([[1, 0], [1, 1]]), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])]
    mask = np.zeros((size, size), np.uint8)
    for i in range(polygons):
        shape = shapes[i % len(shapes)]
        h, w = shape.shape
        row = (i // cells) * pitch + int(rng.integers(0, pitch - h))
        col = (i % cells) * pitch + int(rng.integers(0, pitch - w))
        mask[row:row + h, col:col + w] = shape
    return mask


def noisy_mask(size: int, sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed uniform noise cut at its median, and the smoothed values as a probability (0-254)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).random((size, size), dtype=np.float32), sigma)
    cut = np.median(field)
    low, high = float(field.min()), float(field.max())
    prob = np.clip((field - low) / max(high - low, 1e-12) * 254, 0, 254).astype(np.uint8)
    return (field > cut).astype(np.uint8), prob


def write_mask(directory: Path, mask: np.ndarray, prob: np.ndarray | None = None) -> tuple[Path, Path]:
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": mask.shape[1], "height": mask.shape[0], "count": 1, "dtype": "uint8",
               "crs": "EPSG:32618", "transform": from_origin(300000, 4500000, 0.5, 0.5), "tiled": True,
               "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "nodata": 255}
    if prob is None:
        prob = np.where(mask == 1, 200, 30).astype(np.uint8)
    paths = directory / "mask.tif", directory / "prob.tif"
    for path, data in zip(paths, (mask, prob), strict=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
    return paths


# ------------------------------------------------------------------------------------------------ one run
def make(args: argparse.Namespace) -> None:
    directory = Path(args.directory)
    if args.kind == "blobs":
        write_mask(directory, blob_mask(args.size, args.polygons))
    else:
        write_mask(directory, *noisy_mask(args.size, args.sigma))


def measure(args: argparse.Namespace) -> None:
    """Vectorise the mask in ``--directory`` (this process does nothing else) and print one JSON object."""
    import pyarrow  # noqa: F401 - imported before the clock starts, as in predict (warm)
    import pyogrio  # noqa: F401
    import rasterio  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import shapely  # noqa: F401

    from rrsis_cli.vectors import vectorise

    directory = Path(args.directory)
    stats: dict = {}
    paths = directory / "mask.tif", directory / "prob.tif", directory / f"mask.{args.format}"
    started = time.perf_counter()
    if args.impl == "reference":  # the implementation before streaming, kept for the tests
        sys.path.insert(0, str(ROOT / "tests"))
        from vector_reference import vectorise as reference

        count = reference(*paths, "x", args.format, 0.0, 0.0, args.block)
    else:
        count = vectorise(*paths, "x", args.format, 0.0, 0.0, args.block, workers=args.workers or None, stats=stats)
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"features": count, "seconds": round(seconds, 3), "peak_rss_mb": round(own, 1),
                      "worker_peak_rss_mb": round(children, 1),
                      "file_mb": round((directory / f"mask.{args.format}").stat().st_size / 1e6, 2), **stats}))


def _child(*argv: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def run_case(kind: str, size: int, value: float, workers: int, fmt: str, repeat: int, impl: str, block: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        option = ["--polygons", str(int(value))] if kind == "blobs" else ["--sigma", str(value)]
        _child("_make", kind, "--size", str(size), *option, "--directory", tmp)
        runs = [_child("_measure", "--directory", tmp, "--workers", str(workers), "--format", fmt, "--impl", impl,
                       "--block", str(block)) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    return {"impl": impl, "kind": kind, "size": size, ("polygons" if kind == "blobs" else "sigma"): value, "workers": workers,
            "format": fmt, "block": block, "runs": repeat, "seconds_median": statistics.median(r["seconds"] for r in runs),
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs), **best,
            "machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _record(row: dict, path: Path) -> None:
    print(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    memory = sub.add_parser("memory", help="peak RSS for few vs many polygons on one mask size")
    memory.add_argument("--size", type=int, default=4096)
    memory.add_argument("--polygons", type=int, nargs="+", default=[100, 100_000])
    speed = sub.add_parser("speed", help="seconds for a noisy mask")
    speed.add_argument("--size", type=int, default=6000)
    speed.add_argument("--sigma", type=float, default=5.0)
    speed.add_argument("--forward-seconds", type=float, default=35.0,
                       help="forward seconds of the model on a scene of this size (issue 18: lavt-tiny, 35 s)")
    for command in (memory, speed):
        command.add_argument("--workers", type=int, nargs="+", default=[0],
                             help="processes (1: this one alone); 0: the library's default_workers")
        command.add_argument("--block", type=int, default=BLOCK, help="window size in pixels (predict: 1024)")
        command.add_argument("--format", default="geojson", choices=["geojson", "gpkg", "fgb", "parquet"])
        command.add_argument("--repeat", type=int, default=3)
        command.add_argument("--out", type=Path, default=OUT, help="JSON lines appended here")
        command.add_argument("--impl", default="streaming", choices=["streaming", "reference"],
                             help="reference: the implementation before streaming (tests/vector_reference.py)")
    hidden_make = sub.add_parser("_make")
    hidden_make.add_argument("kind", choices=["blobs", "noisy"])
    hidden_make.add_argument("--size", type=int, required=True)
    hidden_make.add_argument("--polygons", type=int, default=0)
    hidden_make.add_argument("--sigma", type=float, default=0.0)
    hidden_make.add_argument("--directory", required=True)
    hidden_measure = sub.add_parser("_measure")
    hidden_measure.add_argument("--directory", required=True)
    hidden_measure.add_argument("--workers", type=int, default=1)
    hidden_measure.add_argument("--format", default="geojson")
    hidden_measure.add_argument("--impl", default="streaming")
    hidden_measure.add_argument("--block", type=int, default=BLOCK)
    args = parser.parse_args()
    if args.command == "_make":
        make(args)
    elif args.command == "_measure":
        measure(args)
    elif args.command == "memory":
        for workers in args.workers:
            rows = [run_case("blobs", args.size, n, workers, args.format, args.repeat, args.impl, args.block)
                    for n in args.polygons]
            for row in rows:
                _record(row, args.out)
            ratio = rows[-1]["peak_rss_mb_median"] / rows[0]["peak_rss_mb_median"]
            _record({"summary": "memory", "impl": args.impl, "workers": rows[-1].get("workers", workers), "size": args.size, "polygons": args.polygons,
                     "peak_rss_ratio": round(ratio, 3), "goal": "<= 1.2"}, args.out)
    else:
        for workers in args.workers:
            row = run_case("noisy", args.size, args.sigma, workers, args.format, args.repeat, args.impl, args.block)
            _record(row, args.out)
            _record({"summary": "speed", "impl": args.impl, "workers": row.get("workers", workers), "size": args.size, "sigma": args.sigma,
                     "features": row["features"], "seconds_median": row["seconds_median"],
                     "forward_seconds": args.forward_seconds,
                     "ratio": round(row["seconds_median"] / args.forward_seconds, 3), "goal": "<= 0.1"}, args.out)


if __name__ == "__main__":
    main()

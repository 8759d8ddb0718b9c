"""Peak resident memory of ``rrsis predict`` over scene sizes: does memory grow with the scene?

Each size's scene is built from real imagery (``rrsis bench``'s mirror tiling, cached in OUT) and ``rrsis
predict --model null`` runs on it in a fresh process per run (its own ``wait4`` peak RSS), ``--no-vectors`` by
default; sizes are interleaved run by run (2000, 20000, 2000, 20000, ...) so that a change of machine load falls
on every size. Reports the median of ``--repeats`` per size and its ratio to the smallest size's median (the
issue's goal: RSS(20000²) ÷ RSS(2000²) ≤ 1.15), and writes OUT/pipeline_rss.json.

Usage (the lead's numbers; about 1.2 GB of disk per 20000² scene):
    python benchmarks/pipeline_rss.py --sizes 2000 20000 --repeats 3 --out /tmp/rss
Smoke run: python benchmarks/pipeline_rss.py --sizes 300 600 --repeats 1 --tile-size 128 --out /tmp/rss
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rrsis_cli.bench import build_scene, run_predict_child

SOURCE = Path(__file__).resolve().parents[1] / "examples" / "data" / "RGB.byte.tif"


def measure(sizes: list[int], repeats: int, out: Path, source: Path, tile: int, batch: int, workers: int,
            vectors: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for size in sizes:
        scenes[size] = out / f"scene_{size}.tif"
        if not scenes[size].exists():
            build_scene(source, scenes[size], size)
    extra = ["--tile-size", str(tile), "--batch-size", str(batch), "--read-workers", str(workers),
             "--device", "cpu"] + ([] if vectors else ["--no-vectors"])
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    for i in range(repeats):
        for size in sizes:
            run = run_predict_child(scenes[size], "null", "the river", out / "predict", extra)
            runs[size].append({"peak_rss_mb": run["peak_rss_mb"], "wall_s": run["wall_s"],
                               "predict_s": run["manifest"]["seconds"]})
            print(f"run {i + 1}/{repeats}, {size}²: peak RSS {run['peak_rss_mb']:.0f} MB, "
                  f"{run['manifest']['seconds']:.1f} s", flush=True)
    medians = {size: statistics.median(r["peak_rss_mb"] for r in runs[size]) for size in sizes}
    smallest = min(sizes)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(), "source": str(source),
            "tile_size": tile, "batch_size": batch, "read_workers": workers, "vectors": vectors,
            "repeats": repeats, "gdal_cachemax": os.environ.get("GDAL_CACHEMAX"),
            "median_peak_rss_mb": {str(s): medians[s] for s in sizes},
            "ratio_to_smallest": {str(s): medians[s] / medians[smallest] for s in sizes},
            "runs": {str(s): runs[s] for s in sizes}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--read-workers", type=int, default=2)
    parser.add_argument("--vectors", action="store_true", help="vectorise too (default: --no-vectors)")
    args = parser.parse_args()
    report = measure(sorted(args.sizes), args.repeats, args.out, args.source, args.tile_size, args.batch_size,
                     args.read_workers, args.vectors)
    (args.out / "pipeline_rss.json").write_text(json.dumps(report, indent=2) + "\n")
    for size, rss in report["median_peak_rss_mb"].items():
        print(f"{size}²: median peak RSS {rss:.0f} MB, ratio to the smallest {report['ratio_to_smallest'][size]:.3f}")


if __name__ == "__main__":
    main()

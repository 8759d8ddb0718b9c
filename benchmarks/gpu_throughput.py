"""GPU throughput of predict against the forward alone (issue: keep a GPU busy), for a lent GPU machine.

    python benchmarks/gpu_throughput.py --out gpu-bench [--size 10000] [--batches 8 16 32] [--card lavt-swin-b]

For each batch size, in bf16 autocast (predict's CUDA default), channels-last:
* forward-only tiles/s: the model's forward on tiles already on the host, text encoded once;
* predict tiles/s on a ``size``² scene built from ``examples/data`` (fresh process, vectors off, so the
  pipeline's tile loop is what is measured), and the ratio predict / forward (goal ≥ 0.8);
* GPU utilisation (``nvidia-smi`` sampled every 0.2 s during predict) and MFU from the measured 398 GFLOPs per
  480² LAVT Swin-B tile (2 FLOPs per multiply-add) against the GPU's dense bf16 peak (``--peak-tflops``).
Writes ``OUT/gpu.json``. Needs rasterio, geopandas, pyogrio, shapely, pyproj, scipy, zarr, dask and rrsis itself
installed on the machine (wheels carried from a machine with the package registries).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

GFLOPS_PER_TILE = {"lavt-swin-b": 398.0}


def sample_utilisation(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            samples.append(float(out.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
        time.sleep(0.2)


def main() -> None:
    from rrsis_cli.bench import build_scene, forward_only, run_predict_child

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--card", default="lavt-swin-b")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--forward-tiles", type=int, default=256)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scene = args.out / f"scene_{args.size}.tif"
    if not scene.exists():
        build_scene(Path(__file__).parents[1] / "examples" / "data" / "RGB.byte.tif", scene, args.size)
    rows = []
    for batch in args.batches:
        fwd = forward_only(scene, args.card, "the buildings", None, batch, "cuda", "bf16", args.forward_tiles)
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=sample_utilisation, args=(stop, samples), daemon=True)
        sampler.start()
        run = run_predict_child(scene, args.card, "the buildings", args.out / f"predict-b{batch}",
                                ["--batch-size", str(batch), "--device", "cuda", "--precision", "bf16",
                                 "--no-vectors", "--read-workers", "8"])
        stop.set()
        sampler.join()
        result = run["manifest"]["results"][0]
        predict_tps = result["tiles"] / run["manifest"]["seconds"]
        flops = GFLOPS_PER_TILE.get(args.card)
        rows.append({"batch": batch, "forward_tiles_per_s": fwd["tiles_per_s"], "predict_tiles_per_s": predict_tps,
                     "ratio": predict_tps / fwd["tiles_per_s"],
                     "gpu_utilisation_pct": statistics.median(samples) if samples else None,
                     "mfu_forward": None if flops is None else fwd["tiles_per_s"] * flops / (args.peak_tflops * 1e3),
                     "mfu_predict": None if flops is None else predict_tps * flops / (args.peak_tflops * 1e3),
                     "stages_s": result["seconds"], "peak_rss_mb": run["peak_rss_mb"]})
        print(json.dumps(rows[-1]))
    (args.out / "gpu.json").write_text(json.dumps({"card": args.card, "size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

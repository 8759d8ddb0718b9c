"""The output side's ceiling (issue 18): how fast this machine can write predict's rasters, against the raw
read+decode rate of the same scene that ``rrsis bench --pipeline`` takes as the pipeline's ceiling.

The probability stand-in is band 1 of the scene itself (real imagery: compresses like a smooth probability
field, not like noise) clipped to 0..254, the mask that band above its median. Each raster is written as a tiled
GTiff, then made a COG by :func:`rrsis_cli.outputs.to_cog` (DEFLATE, 512 px tiles, overviews): what predict does
per pair. One warm-up write first; then 1 and 2 GDAL compression threads. Reads: 2 threads, 512² windows.

  python benchmarks/write_ceiling.py SCENE.tif      # e.g. the 4000² scene `rrsis bench --pipeline` builds

Prints one JSON object and appends it to benchmarks/results/write_ceiling.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from rrsis_cli.outputs import to_cog

RESULTS = Path(__file__).parent / "results" / "write_ceiling.jsonl"


def read_scene(scene: Path, threads: int = 2, tile: int = 512) -> float:
    """Seconds to read and decode every 512² window of the scene, rows of windows split between threads."""
    with rasterio.open(scene) as ds:
        height, width = ds.height, ds.width

    def rows(first: int) -> None:
        with rasterio.open(scene) as ds:
            for row in range(first * tile, height, threads * tile):
                for col in range(0, width, tile):
                    ds.read(window=Window(col, row, min(tile, width - col), min(tile, height - row)))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(rows, range(threads)))
    return time.perf_counter() - started


def write_cog(array: np.ndarray, profile: dict, work: Path, name: str, threads: int) -> float:
    """Seconds to write ``array`` as a tiled GTiff and turn it into a COG (:func:`to_cog`)."""
    source = work / f"{name}.tif"
    started = time.perf_counter()
    with rasterio.open(source, "w", **profile) as dst:
        dst.write(array, 1)
    to_cog(source, work / f"{name}-cog.tif", {}, threads)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path)
    args = parser.parse_args()
    with rasterio.open(args.scene) as ds:
        prob = np.minimum(ds.read(1), 254).astype(np.uint8)
        profile = {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
                   "crs": ds.crs, "transform": ds.transform, "tiled": True, "blockxsize": 512, "blockysize": 512}
    mask = (prob > np.median(prob)).astype(np.uint8)
    mpx = prob.size / 1e6
    read_scene(args.scene)  # page cache and GDAL warm
    decode = read_scene(args.scene)
    row = {"scene": str(args.scene), "mpx": round(mpx, 2), "cpus": os.cpu_count(), "load": os.getloadavg()[0],
           "date": time.strftime("%Y-%m-%d %H:%M"), "read_decode_mpx_s": round(mpx / decode, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        write_cog(mask, profile, Path(tmp), "warm-up", 1)
        for threads in (1, 2):
            mask_s = write_cog(mask, profile, Path(tmp), "mask", threads)
            prob_s = write_cog(prob, profile, Path(tmp), "prob", threads)
            row[f"threads_{threads}"] = {
                "mask_cog_mpx_s": round(mpx / mask_s, 1), "mask_and_prob_mpx_s": round(mpx / (mask_s + prob_s), 1),
                "mask_cog_over_read": round(decode / mask_s, 3),
                "mask_and_prob_over_read": round(decode / (mask_s + prob_s), 3)}
    print(json.dumps(row, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

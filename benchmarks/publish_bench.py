"""Publishing benchmark: wall time and peak memory of ``rrsis publish`` (STAC Items, Catalog, VRT mosaics, merged
GeoPackage) over an output of many scenes.

Usage: python benchmarks/publish_bench.py [--scenes 200] [--size 256] [--prompts 2] [--json FILE]

One ``predict --model null`` run writes the outputs (not measured): ``--scenes`` synthetic scenes of ``--size``
pixels, tiled side by side in one UTM zone (so the mosaic has them all), ``--prompts`` prompts. Then
``rrsis publish OUT`` runs in a fresh interpreter; its wall time and peak RSS (its own ``ru_maxrss``) are
reported with the pairs, features and bytes written. Run it on a quiet machine: the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLISH = ("import resource, sys\nfrom rrsis_cli import console\nconsole.configure(quiet=True)\n"
           "from rrsis_cli.publish import publish_folder\npublish_folder(sys.argv[1])\n"
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def write_scenes(folder: Path, count: int, size: int) -> list[Path]:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    per_row = max(1, int(count ** 0.5))
    for k in range(count):
        x, y = 500000 + (k % per_row) * size * 5, 4000000 - (k // per_row) * size * 5
        path = folder / f"scene{k:05d}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                           crs="EPSG:32618", transform=from_origin(x, y, 5, 5)) as dst:
            dst.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_scenes(tmp / "scenes", args.scenes, args.size)
        prompts = [arg for k in range(args.prompts) for arg in ("-p", f"object {k}")]
        subprocess.run([sys.executable, "-m", "rrsis_cli", "--quiet", "predict", str(tmp / "scenes"), "--model",
                        "null", *prompts, "--out", str(tmp / "out"), "--tile-size", "128"], env=env, check=True)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", PUBLISH, str(tmp / "out")], env=env, check=True,
                               capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak_mb = int(child.stdout.split()[-1]) / 1024  # ru_maxrss of the publishing process, KiB on Linux
        written = [p for p in (tmp / "out").rglob("*") if p.name in ("item.json", "catalog.json")
                   or p.parent.parent.name == "mosaic"]
        result = {"scenes": args.scenes, "size": args.size, "prompts": args.prompts,
                  "pairs": args.scenes * args.prompts, "publish_seconds": round(seconds, 3),
                  "seconds_per_pair": round(seconds / (args.scenes * args.prompts), 4),
                  "publish_peak_rss_mb": round(peak_mb, 1),
                  "published_bytes": sum(p.stat().st_size for p in written), "load": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Remote-read benchmark: bytes fetched and wall time of ``predict`` on a COG served over HTTP (a loopback
Range-capable server, tests/loopback.py), for the whole scene and for a corner ``--aoi``, against the same file
read locally. The null model keeps the model's cost out: what is measured is reading.

Usage: python benchmarks/remote_read.py [--size 4096] [--aoi-size 512] [--latency-ms 0] [--read-workers N]
       [--json benchmarks/results/remote_read.json]

The COG is ``--size`` px square, 3 bands of uint8 noise (compression cannot hide what is read), 256 px tiles,
DEFLATE, with overviews. Each case runs in this process with a fresh URL (GDAL's /vsicurl/ cache lives as long as
the process), ``--no-vectors``. Loopback has no latency: the times show GDAL's overhead, not a network's. The
first case (local) also pays for the imports and the null model's set-up; ``--latency-ms`` makes the server wait
that long before each answer, as a network's round trip would. Run it from the repository root with this
checkout's code (``PYTHONPATH=$PWD`` when another checkout is installed in the venv).

Bytes are counted by the server: ``fetched`` (everything sent), its share of the file, and ``x distinct``: fetched
divided by the distinct bytes of the file that were sent at least once (1.00 = no byte fetched twice). A whole
scene does not need the overviews of the COG (about a quarter of its bytes), so its distinct bytes are below the
file size. The scene's fingerprint (two ranged GETs of at most 1 MiB on first sight, a fixed cost per scene) is
taken first and reported apart (``fingerprint``); the counts that follow are the run's, with the fingerprint
cached as on a rerun (one byte). The fingerprint cache is a temporary folder (``RRSIS_CACHE_DIR``), not yours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def write_cog(path: Path, size: int) -> Path:
    import numpy as np
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 256, size=(3, size, size), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32618",
               "transform": from_origin(500000, 4000000 + size, 1, 1)}
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
        with memory.open() as src:
            copy(src, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    assert rasterio.open(path).width == size
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--aoi-size", type=int, default=512)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--read-workers", type=int, help="predict's read threads (default: from the core count)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from loopback import RangeServer
    from rrsis_cli.inputs import find_scenes
    from rrsis_cli.predict import PredictOptions, predict

    work = Path(tempfile.mkdtemp(prefix="rrsis-remote-bench-"))
    os.environ["RRSIS_CACHE_DIR"] = str(work / "cache")
    try:
        (work / "site").mkdir()
        cog = write_cog(work / "scene.tif", args.size)
        for name in ("whole.tif", "corner.tif"):
            shutil.copy(cog, work / "site" / name)
        top = 4000000 + args.size
        aoi = f"500000,{top - args.aoi_size},{500000 + args.aoi_size},{top},EPSG:32618"
        server = RangeServer(work / "site").start()
        server.latency = args.latency_ms / 1000
        rows = []
        try:
            for case, source, extra in (("local, whole scene", str(cog), {}),
                                        ("http, whole scene", f"{server.url}/whole.tif", {}),
                                        ("http, corner --aoi", f"{server.url}/corner.tif", {"aoi": aoi})):
                remote = source.startswith("http")
                server.reset_counts()
                if remote:
                    find_scenes([source])  # the fingerprint, cached: its cost is reported apart
                fingerprint = {"fingerprint_bytes": server.bytes_sent, "fingerprint_requests": len(server.requests)}
                server.reset_counts()
                started = time.perf_counter()
                manifest = predict([source], "null", ["x"], work / case.replace(" ", "_").replace(",", ""),
                                   PredictOptions(vectors=False, read_workers=args.read_workers, **extra))
                seconds = time.perf_counter() - started
                rows.append({"case": case, "exit_code": manifest.exit_code, "seconds": round(seconds, 3),
                             "bytes_fetched": server.bytes_sent if remote else None,
                             "distinct_bytes": server.distinct_bytes() if remote else None,
                             "requests": len(server.requests) if remote else None,
                             **(fingerprint if remote else {})})
        finally:
            server.stop()
        result = {"size": args.size, "aoi_size": args.aoi_size, "latency_ms": args.latency_ms,
                  "read_workers": args.read_workers, "file_bytes": cog.stat().st_size, "cases": rows}
        for row in rows:
            fetched = "-" if row["bytes_fetched"] is None else \
                (f"{row['bytes_fetched']} B ({100 * row['bytes_fetched'] / result['file_bytes']:.1f} % of the file, "
                 f"{row['bytes_fetched'] / max(1, row['distinct_bytes']):.3f} x distinct)")
            first = f"  fingerprint {row['fingerprint_bytes']} B in {row['fingerprint_requests']} requests" \
                if "fingerprint_bytes" in row else ""
            print(f"{row['case']:<22} exit {row['exit_code']}  {row['seconds']:8.2f} s  fetched {fetched}  "
                  f"requests {row['requests'] or '-'}{first}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

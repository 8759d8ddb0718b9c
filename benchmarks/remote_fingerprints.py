"""How long finding and keying N remote scenes takes before any work starts: ``find_scenes`` over N URLs of a
loopback Range server (tests/loopback.py) that waits ``--latency-ms`` before each answer, as a network's round
trip would. Cold (no fingerprint cache: two ranged GETs of at most 1 MiB per scene) and warm (cache present: one
1-byte GET per scene), with 1 thread (one scene after another) and with ``inputs.FINGERPRINT_THREADS``; both also
ask one byte of ``<name>.msk`` and ``<name>.aux.xml`` per scene (the side-car check, :func:`remote.find_sidecars`).

Usage: python benchmarks/remote_fingerprints.py [--scenes 200] [--latency-ms 30] [--json FILE]

Each scene is a distinct 2.5 MiB file (so both samples are read). The fingerprint cache is a temporary folder
(``RRSIS_CACHE_DIR``), not yours. Run it from the repository root with this checkout's code (``PYTHONPATH=$PWD``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def timed_find(urls: list[str], cache: Path, threads: int) -> tuple[float, list[str]]:
    from rrsis_cli import inputs

    os.environ["RRSIS_CACHE_DIR"] = str(cache)
    inputs.FINGERPRINT_THREADS = threads
    started = time.perf_counter()
    scenes = inputs.find_scenes(urls)
    return time.perf_counter() - started, [s.key for s in scenes]


def main() -> None:
    import numpy as np

    from loopback import RangeServer
    from rrsis_cli import inputs

    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    many = inputs.FINGERPRINT_THREADS
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "served"
        root.mkdir()
        for i in range(a.scenes):
            (root / f"s{i:05d}.tif").write_bytes(np.random.default_rng(i).bytes(5 * 2**19))
        server = RangeServer(root).start()
        try:
            server.latency = a.latency_ms / 1000
            urls = [f"{server.url}/s{i:05d}.tif" for i in range(a.scenes)]
            keys = []
            for threads in (1, many):
                cache = Path(tmp) / f"cache-{threads}"
                for state in ("cold", "warm"):
                    server.reset_counts()
                    seconds, found = timed_find(urls, cache, threads)
                    keys.append(found)
                    rows[f"{state}, {threads} thread(s)"] = {
                        "seconds": round(seconds, 2), "scenes_per_second": round(a.scenes / seconds, 1),
                        "requests": len(server.requests), "bytes": server.bytes_sent}
        finally:
            server.stop()
    result = {"kind": "remote_fingerprints", "date": time.strftime("%Y-%m-%d %H:%M"), "scenes": a.scenes,
              "latency_ms": a.latency_ms, "threads": many, "cpu_count": os.cpu_count(), "runs": rows,
              "same_keys": all(k == keys[0] for k in keys),
              "cold_speedup": round(rows["cold, 1 thread(s)"]["seconds"] / rows[f"cold, {many} thread(s)"]["seconds"], 2),
              "warm_speedup": round(rows["warm, 1 thread(s)"]["seconds"] / rows[f"warm, {many} thread(s)"]["seconds"], 2)}
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

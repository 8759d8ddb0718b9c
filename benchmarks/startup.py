"""Start-up benchmark: wall time of CLI invocations that should not pay for torch (``--help``, ``models list``,
a ``predict`` whose every output is already finished), plus ``models show`` of a Swin-B card and a dry run.

Usage: python benchmarks/startup.py [--repeats 5] [--json benchmarks/results/startup.json]

Each command runs in a fresh interpreter (``python -m rrsis_cli ...``), ``--repeats`` times after one warm-up
run (file cache); the median and the minimum are reported. Before measuring, ``models init lavt-tiny`` writes a model
directory and one real ``predict`` with it on three 256 px scenes writes the outputs that the "all skipped" runs
then find. Run it on a quiet machine: the numbers
are wall-clock times and move with the load (printed with the results).
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

ROOT = Path(__file__).resolve().parents[1]


def write_scene(path: Path, size: int = 256) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 255, size=(3, size, size)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(500000, 4000000, 5, 5)) as dst:
        dst.write(data)
    return path


def run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", *args], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    elapsed = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"rrsis {' '.join(args)} exited {res.returncode}:\n{res.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(ROOT),
                                                                         os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="rrsis-startup-") as tmp:
        scenes = [write_scene(Path(tmp) / f"scene{i}.tif") for i in range(3)]
        out, model = Path(tmp) / "out", Path(tmp) / "lavt-tiny"
        run(["models", "init", "lavt-tiny", "--out", str(model), "--quiet"], env)
        predict = ["predict", *map(str, scenes), "--model", str(model), "--prompt", "the roof", "--prompt",
                   "the pond", "--out", str(out), "--tile-size", "64", "--device", "cpu", "--quiet"]
        run(predict, env)  # writes every output: the runs below skip them all
        cases = {
            "rrsis --help": ["--help"],
            "rrsis predict --help": ["predict", "--help"],
            "rrsis models list": ["models", "list"],
            "rrsis models show lavt-swin-b": ["models", "show", "lavt-swin-b"],
            "rrsis predict (3 scenes x 2 prompts, all skipped)": predict,
            "rrsis predict --dry-run (3 scenes x 2 prompts)": [*predict, "--dry-run"],
        }
        results = []
        for name, command in cases.items():
            run(command, env)  # warm-up
            times = [run(command, env) for _ in range(args.repeats)]
            results.append({"command": name, "median_s": statistics.median(times), "min_s": min(times),
                            "repeats": args.repeats})
    load = os.getloadavg()
    print(f"| command | median s | min s |  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()})")
    print("|---|---:|---:|")
    for r in results:
        print(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "load_average": load, "cpus": os.cpu_count(),
                                         "python": platform.python_version(),
                                         "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()

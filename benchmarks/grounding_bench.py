"""Scene grounding vs tiled prediction on the synthetic look-alike scenario (rrsis_cli.synth.make_grounding_scene)
with the shipped demo model: IoU per mode, tiles refined in pass 2, wall time. Appends a JSON line to
benchmarks/results/grounding.jsonl.

    python benchmarks/grounding_bench.py --scenes 12 --scale 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import rasterio

from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.synth import make_grounding_scene

ROOT = Path(__file__).resolve().parents[1]


def iou(mask: Path, gt: str) -> float:
    with rasterio.open(mask) as m, rasterio.open(gt) as g:
        p, t = m.read(1) == 1, g.read(1) == 1
    return float((p & t).sum() / max((p | t).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--coarse-weight", type=float, default=0.75)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.scenes):
            kind = ("position", "relation", "comparison")[i % 3]
            s = make_grounding_scene(ROOT / "examples/data/rgbn_5m.tif", Path(tmp) / f"s{i}.tif", kind, a.scale,
                                     a.seed + i)
            row = {"kind": kind, "expression": s["expression"], "look_alikes": s["look_alikes"]}
            for mode in ("tiles", "scene"):
                started = time.perf_counter()
                m = predict([s["scene"]], str(ROOT / "examples/demo-model"), [s["expression"]], Path(tmp) / mode,
                            PredictOptions(device="cpu", batch_size=16, grounding=mode,
                                           coarse_weight=a.coarse_weight, overwrite=True))
                row[f"{mode}_seconds"] = time.perf_counter() - started
                row[f"{mode}_iou"] = iou(Path(m.results[0].outputs["mask"]), s["gt"])
                if mode == "scene":
                    g = m.results[0].grounding
                    row["tiles_refined"], row["tiles_total"] = g["tiles_refined"], g["tiles_total"]
            rows.append(row)
            print(json.dumps(row))
    mean = statistics.mean
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "scenes": a.scenes,
               "scale": a.scale, "size": 96 * a.scale, "coarse_weight": a.coarse_weight,
               "tiles_miou": mean(r["tiles_iou"] for r in rows), "scene_miou": mean(r["scene_iou"] for r in rows),
               "by_kind": {k: {"tiles": mean(r["tiles_iou"] for r in rows if r["kind"] == k),
                               "scene": mean(r["scene_iou"] for r in rows if r["kind"] == k)}
                           for k in ("position", "relation", "comparison")},
               "refined_fraction": mean(r["tiles_refined"] / r["tiles_total"] for r in rows),
               "wall_ratio_scene_to_tiles": sum(r["scene_seconds"] for r in rows) / sum(r["tiles_seconds"] for r in rows),
               "command": "python benchmarks/grounding_bench.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                           for k, v in vars(a).items()),
               "rows": rows}
    out = ROOT / "benchmarks" / "results" / "grounding.jsonl"
    with open(out, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

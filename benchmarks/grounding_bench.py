"""Scene grounding (`--grounding scene`) against tiled prediction (`--grounding tiles`) with the shipped demo model:
mask IoU against the referent, full-resolution tiles run, coarse views run and wall time per mode.

Scenarios:

* ``quickstart``: the README's quickstart scene (``rrsis data scene examples/data/rgbn_5m.tif --size 1024``,
  seed 0) and its three ground-truth prompts ("the red circle", ...; every instance of the colour and shape).
* ``large``: the scenario of the first scene-grounding benchmark (768 px scenes, objects of 100-200 px, 1-3
  look-alikes, one of position / relation / comparison per scene).
* ``synthetic``: ``rrsis_cli.synth.make_grounding_scene`` scenes of ``--size`` px with referents of each
  ``--object-px`` size, 2-3 look-alikes and ``--distractors`` other objects, for each expression kind:
  ``attribute`` ("the red circle"; a tile holding the referent sees all it needs) and ``position``, ``relation``,
  ``comparison`` (the layout is spread over the whole scene, so the expression needs context beyond a tile).
  Scene ``i`` of a cell uses seed ``--seed + 1000 * i + object_px`` (the same layout family across sizes).

Modes: ``tiles``; ``scene`` (defaults: the full-resolution pass runs everywhere, coarse levels decide which
objects); ``scene-min`` (``--min-object-size`` = half the referent's size, as a user who knows roughly how small
the targets are would set it: the full-resolution pass runs only around candidates). One JSON line per scene and
a summary are appended to ``benchmarks/results/grounding.jsonl``.

    python benchmarks/grounding_bench.py quickstart
    python benchmarks/grounding_bench.py large --scenes 12
    python benchmarks/grounding_bench.py synthetic --scenes 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.synth import GROUNDING_KINDS, make_demo_scene, make_grounding_scene

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "demo-model"
SOURCE = ROOT / "examples" / "data" / "rgbn_5m.tif"
OUT = ROOT / "benchmarks" / "results" / "grounding.jsonl"


def iou(mask: Path, gt: str | Path) -> float:
    """IoU of the mask (1 = target) against a GeoTIFF (1 = referent) or GeoJSON polygons."""
    from rasterio.features import rasterize

    with rasterio.open(mask) as m:
        pred = m.read(1) == 1
        if str(gt).endswith(".tif"):
            with rasterio.open(gt) as g:
                truth = g.read(1) == 1
        else:
            import geopandas as gpd

            shapes = gpd.read_file(gt).to_crs(m.crs).geometry
            truth = (rasterize([(s, 1) for s in shapes], out_shape=pred.shape, transform=m.transform).astype(bool)
                     if len(shapes) else np.zeros_like(pred))
    return float((pred & truth).sum() / max((pred | truth).sum(), 1))


def run_modes(scene: str, prompt: str, gt: str | Path, work: Path, modes: dict[str, dict]) -> dict:
    row: dict = {}
    for name, extra in modes.items():
        started = time.perf_counter()
        manifest = predict([scene], str(MODEL), [prompt], work / name,
                           PredictOptions(device="cpu", batch_size=16, overwrite=True, **extra))
        result = manifest.results[0]
        g = result.grounding or {}
        row[name] = {"iou": round(iou(Path(result.outputs["mask"]), gt), 4),
                     "seconds": round(time.perf_counter() - started, 2), "tiles_run": result.tiles,
                     "coarse_views": g.get("coarse_views", 0), "tiles_total": g.get("tiles_total", result.tiles),
                     "tiles_refined_fraction": g.get("tiles_refined_fraction", 1.0),
                     "candidates": g.get("candidates_total"), "rejected": g.get("rejected_total"),
                     "fallback": g.get("fallback"), "warning": g.get("warning")}
    return row


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def quickstart(a) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        report = make_demo_scene(SOURCE, Path(tmp) / "scene", size=a.size, seed=0)
        for prompt, info in report["prompts"].items():
            row = {"scenario": "quickstart", "size": a.size, "prompt": prompt, "objects": info["objects"],
                   **run_modes(str(Path(tmp) / "scene" / "scene.tif"), prompt, Path(tmp) / "scene" / info["path"],
                               Path(tmp), {"tiles": {"grounding": "tiles"}, "scene": {"grounding": "scene"}})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def synthetic(a) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for px in a.object_px:
            for kind in a.kinds:
                for i in range(a.scenes):
                    seed = a.seed + 1000 * i + px
                    s = make_grounding_scene(SOURCE, Path(tmp) / f"{kind}{px}_{i}.tif", kind, seed=seed, size=a.size,
                                             object_px=px, distractors=a.distractors)
                    modes = {"tiles": {"grounding": "tiles"}, "scene": {"grounding": "scene"},
                             "scene-min": {"grounding": "scene", "min_object_size": px / 2}}
                    row = {"scenario": "synthetic", "size": a.size, "object_px": px, "kind": kind, "seed": seed,
                           "expression": s["expression"], "look_alikes": s["look_alikes"],
                           "distractors": s["distractors"], "context": s["context"],
                           **run_modes(s["scene"], s["expression"], s["gt"], Path(tmp), modes)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def large(a) -> list[dict]:
    """The scenario of the first scene-grounding benchmark: 768 px scenes, the chip layout scaled 8x (objects of
    100-200 px), seeds 1000 + i, kinds position / relation / comparison in turn."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.scenes):
            kind = ("position", "relation", "comparison")[i % 3]
            s = make_grounding_scene(SOURCE, Path(tmp) / f"s{i}.tif", kind, 8, 1000 + i)
            modes = {"tiles": {"grounding": "tiles"}, "scene": {"grounding": "scene"},
                     "scene-min": {"grounding": "scene", "min_object_size": 64}}
            row = {"scenario": "large", "size": 768, "object_px": "100-200", "kind": kind, "seed": 1000 + i,
                   "expression": s["expression"], "look_alikes": s["look_alikes"], "context": True,
                   **run_modes(s["scene"], s["expression"], s["gt"], Path(tmp), modes)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    modes = [m for m in ("tiles", "scene", "scene-min") if rows and m in rows[0]]
    mean = statistics.mean
    cells: dict = {}
    for row in rows:
        key = f"{row.get('object_px', 'quickstart')}/{'context' if row.get('context') else 'local'}"
        cells.setdefault(key, []).append(row)
    return {k: {"n": len(v), **{m: {"miou": round(mean(r[m]["iou"] for r in v), 3),
                                    "tiles_fraction": round(mean(r[m]["tiles_run"] / r["tiles"]["tiles_run"]
                                                                 for r in v), 3),
                                    "views_fraction": round(mean((r[m]["tiles_run"] + r[m]["coarse_views"])
                                                                 / r["tiles"]["tiles_run"] for r in v), 3),
                                    "seconds": round(mean(r[m]["seconds"] for r in v), 2)} for m in modes}}
            for k, v in cells.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=("quickstart", "synthetic", "large"))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--scenes", type=int, default=2, help="synthetic: scenes per (size, kind); large: scenes")
    ap.add_argument("--object-px", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--kinds", nargs="+", default=list(GROUNDING_KINDS))
    ap.add_argument("--distractors", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT, help="JSON lines file the summary is appended to")
    a = ap.parse_args()
    started, load_before = time.time(), load()
    rows = {"quickstart": quickstart, "synthetic": synthetic, "large": large}[a.scenario](a)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": os.cpu_count(),
               "load_before": load_before, "load_after": load(), "minutes": round((time.time() - started) / 60, 1),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, "cells": summarise(rows), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

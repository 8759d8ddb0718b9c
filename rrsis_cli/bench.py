"""``rrsis bench``: measure ``predict`` on a realistic scene of a given size.

The scene is built from real imagery by mirror tiling (bounded memory, block by block; the source's CRS, pixel
size and origin) or is a user's file. Each repeat runs ``rrsis predict`` in a fresh subprocess, so its peak
resident memory (``wait4`` rusage of that child alone) and its per-stage timings (from the manifest) are its
own. The model's forward alone is then timed in this process on the same scene's tiles with the same batch
size, giving the ratio *predict throughput / forward-only throughput*. Medians over the repeats are reported.
Speed does not depend on the weights, so a zoo card without weights runs with seeded random weights
(``--allow-random-weights``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rrsis_cli import __version__, console
from rrsis_cli.errors import InputError, UsageError

STAGES = ("read", "read_wait", "infer", "blend", "journal", "assemble", "write", "vectorise")


def build_scene(source: str | Path, out: str | Path, size: int, block: int = 512) -> Path:
    """A ``size``² tiled GeoTIFF (BigTIFF when needed) of ``source``'s pixels, mirror-tiled, written block by
    block so memory stays at one block whatever the size."""
    import rasterio
    from rasterio.windows import Window

    from rrsis_cli.synth import mirror_indices

    out = Path(out)
    try:
        src_ds = rasterio.open(source)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read source imagery: {exc}", source) from exc
    with src_ds:
        pixels = src_ds.read()
        profile = {"driver": "GTiff", "width": size, "height": size, "count": src_ds.count,
                   "dtype": src_ds.dtypes[0], "crs": src_ds.crs, "transform": src_ds.transform, "tiled": True,
                   "blockxsize": block, "blockysize": block, "BIGTIFF": "IF_SAFER", "nodata": src_ds.nodata}
    _, sh, sw = pixels.shape
    tmp = out.with_name(f".{out.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            rows = mirror_indices(r, min(block, size - r), sh)
            band_rows = pixels[:, rows]
            for c in range(0, size, block):
                cols = mirror_indices(c, min(block, size - c), sw)
                dst.write(band_rows[:, :, cols], window=Window(c, r, len(cols), len(rows)))
    os.replace(tmp, out)
    return out


def run_predict_child(scene: Path, model: str, prompt: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One ``rrsis predict`` in a fresh process: wall time, its own peak RSS and its manifest."""
    cmd = [sys.executable, "-m", "rrsis_cli", "--quiet", "predict", str(scene), "--model", model, "--prompt", prompt,
           "--out", str(out), "--overwrite", "--allow-random-weights", *extra]
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise UsageError(f"predict failed during the benchmark (exit {proc.returncode}): "
                             f"{log.read().decode(errors='replace')[-500:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "manifest": manifest}


def forward_only(scene: Path, model_spec: str, prompt: str, tile_size: int | None, batch_size: int, device: str,
                 precision: str, n_tiles: int) -> dict[str, Any]:
    """Throughput of the model's forward alone on the first ``n_tiles`` (valid) tiles of the scene, already in
    memory and normalised, same batch size and precision; the text is encoded once."""
    import torch

    from rrsis_cli.inference import infer, pick_device
    from rrsis_cli.models import load_model
    from rrsis_cli.predict import TextCache
    from rrsis_cli.scene import SceneReader
    from rrsis_cli.tiling import TileGrid

    dev = pick_device(device)
    model = load_model(model_spec, device=dev, allow_random_weights=True)
    tile = int(tile_size or model.config["image_size"])
    reader = SceneReader(scene, None)
    grid = TileGrid.for_scene(reader.ds.height, reader.ds.width, tile, 0.25)
    tiles = []
    for index in range(len(grid)):
        data, valid = reader.read(*grid.origin(index), tile)
        if valid.any():
            tiles.append(data)
        if len(tiles) == n_tiles:
            break
    reader.close()
    text = TextCache(model).get(prompt)
    infer(model, text, tiles[:batch_size], dev, precision)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(tiles), batch_size):
        infer(model, text, tiles[start:start + batch_size], dev, precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"tiles": len(tiles), "seconds": seconds, "tiles_per_s": len(tiles) / seconds, "tile_size": tile}


def bench(model: str, out_dir: str | Path, size: int = 2000, scene: str | Path | None = None,
          source: str | Path | None = None, prompt: str = "the building", tile_size: int | None = None,
          batch_size: int = 8, device: str = "auto", precision: str = "fp32", repeats: int = 3,
          forward_tiles: int = 64) -> dict[str, Any]:
    """Run the benchmark; writes ``OUT/bench.json`` and returns it."""
    import platform

    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scene is None:
        if source is None:
            raise UsageError("give --scene FILE or --source FILE to build a scene from")
        scene = out / f"scene_{size}.tif"
        if not scene.exists():
            started = time.perf_counter()
            build_scene(source, scene, size)
            console.info(f"built {scene} ({size}x{size}) in {time.perf_counter() - started:.1f} s")
    scene = Path(scene)
    extra = ["--batch-size", str(batch_size), "--device", device, "--precision", precision]
    if tile_size:
        extra += ["--tile-size", str(tile_size)]
    runs = []
    for i in range(repeats):
        run = run_predict_child(scene, model, prompt, out / "predict", extra)
        result = run["manifest"]["results"][0]
        tiles = result["tiles"]
        runs.append({"wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "tiles": tiles,
                     "predict_s": run["manifest"]["seconds"],
                     "tiles_per_s": tiles / run["manifest"]["seconds"],
                     "km2_per_hour": run["manifest"]["km2_per_hour"],
                     "encoder_calls": run["manifest"]["encoder_calls"],
                     "stages_s": {k: result["seconds"].get(k, 0.0) for k in STAGES},
                     "gpu_max_memory_mb": run["manifest"].get("gpu_max_memory_mb")})
        console.info(f"run {i + 1}/{repeats}: {tiles} tiles in {run['manifest']['seconds']:.1f} s, "
                     f"peak RSS {run['peak_rss_mb']:.0f} MB")
    fwd = [forward_only(scene, model, prompt, tile_size, batch_size, device, precision, forward_tiles)
           for _ in range(repeats)]
    median = statistics.median
    report = {
        "rrsis_version": __version__, "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "device": device, "precision": precision, "model": model, "scene": str(scene), "size": size,
        "batch_size": batch_size, "tile_size": fwd[0]["tile_size"], "repeats": repeats,
        "predict": {"tiles": runs[0]["tiles"], "tiles_per_s": median(r["tiles_per_s"] for r in runs),
                    "seconds": median(r["predict_s"] for r in runs), "wall_s": median(r["wall_s"] for r in runs),
                    "peak_rss_mb": median(r["peak_rss_mb"] for r in runs),
                    "km2_per_hour": median(r["km2_per_hour"] or 0.0 for r in runs),
                    "encoder_calls": runs[0]["encoder_calls"],
                    "stages_s": {k: median(r["stages_s"][k] for r in runs) for k in STAGES},
                    "gpu_max_memory_mb": runs[0]["gpu_max_memory_mb"]},
        "forward_only": {"tiles": fwd[0]["tiles"], "tiles_per_s": median(f["tiles_per_s"] for f in fwd)},
        "runs": runs,
    }
    report["ratio_predict_to_forward"] = report["predict"]["tiles_per_s"] / report["forward_only"]["tiles_per_s"]
    tmp = out / ".bench.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "bench.json")
    return report


MAIN_THREAD_STAGES = ("read_wait", "infer", "blend", "journal", "assemble", "write", "vectorise")


def raw_read_rate(scene: Path, workers: int, block: int = 512) -> dict[str, Any]:
    """The ceiling: every pixel of ``scene`` read and decoded once, in ``block``² windows, by ``workers``
    threads with one dataset handle each (GDAL releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from rasterio.windows import Window

    with rasterio.open(scene) as ds:
        width, height = ds.width, ds.height
    windows = [Window(c, r, min(block, width - c), min(block, height - r))
               for r in range(0, height, block) for c in range(0, width, block)]

    def read_share(k: int) -> int:
        with rasterio.open(scene) as ds:
            return sum(int(ds.read(window=w).size) for w in windows[k::workers])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(read_share, range(workers)))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mpx_per_s": width * height / seconds / 1e6, "workers": workers}


def pipeline_bench(out_dir: str | Path, scene: str | Path, workers: int = 2, tile_size: int = 512,
                   batch_size: int = 8, prompts: int = 1, repeats: int = 3, vectors: bool = True,
                   model: str = "null") -> dict[str, Any]:
    """The host pipeline alone: ``rrsis predict --model null`` (no network cost) on ``scene`` in fresh
    processes against the raw read+decode rate of the same scene with the same number of threads; per-stage
    seconds, the stage that bounds the run, peak RSS, reads per tile, journal bytes per pixel. Medians over
    ``repeats``; writes ``OUT/pipeline.json``."""
    import platform

    import rasterio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = Path(scene)
    with rasterio.open(scene) as ds:
        pixels = ds.width * ds.height
        size = f"{ds.width}x{ds.height}"
    extra = ["--tile-size", str(tile_size), "--batch-size", str(batch_size), "--read-workers", str(workers),
             "--device", "cpu"] + ([] if vectors else ["--no-vectors"])
    names = [f"prompt number {i}" for i in range(prompts)]
    extra += [a for name in names[1:] for a in ("--prompt", name)]
    runs, reads = [], []
    for i in range(repeats):
        reads.append(raw_read_rate(scene, workers))
        run = run_predict_child(scene, model, names[0], out / "predict", extra)
        results = run["manifest"]["results"]
        seconds = run["manifest"]["seconds"]
        stages = {k: results[0]["seconds"].get(k, 0.0) for k in STAGES}
        for r in results[1:]:  # assemble/write/vectorise are per pair; the tile loop is shared
            for k in ("assemble", "write", "vectorise"):
                stages[k] += r["seconds"].get(k, 0.0)
        runs.append({"seconds": seconds, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                     "mpx_per_s": pixels * prompts / seconds / 1e6, "tiles": results[0]["tiles"],
                     "tiles_per_s": results[0]["tiles"] / seconds, "stages_s": stages,
                     "reads_per_tile": results[0].get("reads_per_tile"),
                     "work_bytes_per_pixel": results[0].get("work_bytes_per_pixel")})
        console.info(f"run {i + 1}/{repeats}: pipeline {runs[-1]['mpx_per_s']:.1f} Mpx/s, raw read "
                     f"{reads[-1]['mpx_per_s']:.1f} Mpx/s")
    median = statistics.median
    stages = {k: median(r["stages_s"][k] for r in runs) for k in STAGES}
    report = {
        "rrsis_version": __version__, "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "scene": str(scene), "size": size,
        "model": model, "tile_size": tile_size, "batch_size": batch_size, "workers": workers, "prompts": prompts,
        "vectors": vectors, "repeats": repeats,
        "raw_read_mpx_per_s": median(r["mpx_per_s"] for r in reads),
        "pipeline_mpx_per_s": median(r["mpx_per_s"] for r in runs),
        "tiles_per_s": median(r["tiles_per_s"] for r in runs),
        "peak_rss_mb": median(r["peak_rss_mb"] for r in runs),
        "reads_per_tile": runs[0]["reads_per_tile"], "work_bytes_per_pixel": runs[0]["work_bytes_per_pixel"],
        "stages_s": stages, "bounding_stage": max(MAIN_THREAD_STAGES, key=lambda k: stages[k]),
        "runs": runs, "raw_reads": reads,
    }
    report["ratio_pipeline_to_raw_read"] = report["pipeline_mpx_per_s"] / report["raw_read_mpx_per_s"]
    tmp = out / ".pipeline.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "pipeline.json")
    return report


def pipeline_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("scene", f"{report['size']} ({report['scene']})"), ("model", report["model"]),
            ("threads", str(report["workers"])), ("prompts", str(report["prompts"])),
            ("raw read+decode (Mpx/s)", f"{report['raw_read_mpx_per_s']:.1f}"),
            ("pipeline (Mpx/s, all prompts)", f"{report['pipeline_mpx_per_s']:.1f}"),
            ("ratio pipeline / raw read", f"{report['ratio_pipeline_to_raw_read']:.3f}"),
            ("tiles/s", f"{report['tiles_per_s']:.1f}"), ("reads per tile", f"{report['reads_per_tile']}"),
            ("journal bytes per pixel", f"{report['work_bytes_per_pixel']:.3f}"),
            ("peak RSS (MB)", f"{report['peak_rss_mb']:.0f}"), ("bounding stage", report["bounding_stage"])]
    rows += [(f"stage {k} (s)", f"{v:.2f}") for k, v in report["stages_s"].items()]
    return rows


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    p = report["predict"]
    rows = [("scene", f"{report['size']}² ({report['scene']})"), ("model", report["model"]),
            ("tiles", str(p["tiles"])), ("predict tiles/s", f"{p['tiles_per_s']:.2f}"),
            ("forward-only tiles/s", f"{report['forward_only']['tiles_per_s']:.2f}"),
            ("ratio predict / forward", f"{report['ratio_predict_to_forward']:.3f}"),
            ("km²/h", f"{p['km2_per_hour']:.1f}"), ("peak RSS (MB)", f"{p['peak_rss_mb']:.0f}"),
            ("encoder calls", str(p["encoder_calls"]))]
    rows += [(f"stage {k} (s)", f"{v:.2f}") for k, v in p["stages_s"].items()]
    if p.get("gpu_max_memory_mb"):
        rows.append(("GPU max memory (MB)", f"{p['gpu_max_memory_mb']:.0f}"))
    return rows


"""``rrsis predict``: stream GeoTIFF scenes through a model tile by tile, blend overlapping tiles on disk, write
a Cloud-Optimised GeoTIFF mask and vector polygons per (scene, prompt).

Data path, one module per stage: :mod:`rrsis_cli.scene` (windowed boundless reads with read-ahead, nodata mask,
scene-level normalisation, optional resampling to a GSD) → batched model here, with each prompt's text features
computed once per run → :mod:`rrsis_cli.tiling` (per-tile probabilities in a zarr store with a batch journal in
the work directory, blended block by block with sine² weights) → :mod:`rrsis_cli.outputs` (COG mask and
probability, vectors merged across windows). Memory depends on the tile and block sizes, not on the scene size.
Every output is written under a temporary name and renamed; a killed run resumes from its journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rrsis_cli import __version__, console
from rrsis_cli.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    OutputError,
    RrsisError,
    Stopped,
    UsageError,
)
from rrsis_cli.inputs import WORK_DIR, Scene, find_scenes, output_dir, relative_output_dir, work_dir
from rrsis_cli.outputs import VECTOR_DRIVERS, mask_profile, to_cog, vectorise
from rrsis_cli.scene import SceneReader, prefetch
from rrsis_cli.tiling import TileGrid, TileStore, blend_weights, tile_origins

__all__ = ["PredictOptions", "RunManifest", "SceneResult", "blend_weights", "predict", "tile_origins"]


@dataclass
class PredictOptions:
    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"
    threshold: float = 0.5
    bands: list[int] | None = None
    save_prob: bool = False
    vector_format: str = "geojson"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    dry_run: bool = False
    block_size: int = 1024
    gsd: float | None = None
    stretch: tuple[list[float], list[float]] | None = None
    read_ahead: int = 2
    grounding: str = "tiles"
    coarse_size: int | None = None
    coarse_weight: float = 0.75
    coarse_support: float = 0.25
    refine_margin: float = 0.5
    save_coarse: bool = False
    min_object_size: float | None = None  # scene grounding: smallest referent, px (None: the model's limit)


@dataclass
class SceneResult:
    scene: str
    prompt: str
    status: str = "pending"
    output_dir: str | None = None  # relative to OUT: <scene key>/<prompt key>
    outputs: dict[str, str] = field(default_factory=dict)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    tiles_resumed: int = 0
    grounding: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunManifest:
    rrsis_version: str
    model: str
    model_sha256: str | None
    prompts: list[str]
    options: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    results: list[SceneResult] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # inputs reached twice, processed once
    encoder_calls: int = 0
    seconds: float = 0.0
    tiles_per_second: float = 0.0
    km2_per_hour: float | None = None
    shard: str | None = None
    gpu_max_memory_mb: float | None = None
    exit_code: int = 0


# ------------------------------------------------------------------------------------------------ engine
def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)


class TextCache:
    """Text features once per prompt per run; ``calls`` counts encoder invocations."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[str, Any] = {}
        self.calls = 0

    def get(self, prompt: str):
        if prompt not in self.cache:
            ids, mask = self.model.tokenize([prompt])
            with torch.inference_mode():
                self.cache[prompt] = self.model.encode_text(ids, mask)
            self.calls += 1
        return self.cache[prompt]


def infer(model, text, tiles: list[np.ndarray], device: torch.device, precision: str) -> np.ndarray:
    """Foreground probability (B, tile, tile) for normalised tiles."""
    cfg = model.config
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = ((torch.from_numpy(np.stack(tiles)) - mean) / std).to(device)
    ctx = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
           if precision != "fp32" and device.type == "cuda" else torch.inference_mode())
    with torch.inference_mode(), ctx:
        logits = model.forward_with_text(x, text)
    return logits.float().softmax(1)[:, 1].cpu().numpy()


# ------------------------------------------------------------------------------------------------ hashes
def config_hash(model_sha: str | None, scene: Scene, prompt: str, options: PredictOptions, tile: int) -> str:
    """Identifies one (scene, prompt, model, parameters): stored in ``mask.tif`` and in the journal, so an
    existing output is skipped, and a journal resumed, only for exactly this pair and configuration."""
    payload = {"model": model_sha, "scene": scene.fingerprint, "prompt": prompt, "tile": tile,
               "overlap": options.overlap,
               "threshold": options.threshold, "bands": options.bands, "gsd": options.gsd,
               "stretch": options.stretch, "version": __version__}
    if options.grounding != "tiles":
        payload["grounding"] = [options.grounding, options.coarse_size, options.coarse_weight,
                                options.coarse_support, options.refine_margin, options.min_object_size, 2]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_finished(mask_path: Path, scene: Scene, prompt: str, chash: str) -> bool:
    """True when ``mask_path`` exists and its tags prove it is the output of this scene (fingerprint), this exact
    prompt and this configuration: a file of the same name is not enough."""
    import rasterio

    if not mask_path.exists():
        return False
    try:
        with rasterio.open(mask_path) as ds:
            tags = ds.tags()
    except rasterio.errors.RasterioIOError:
        return False
    return (tags.get("rrsis_config_hash") == chash and tags.get("prompt") == prompt
            and tags.get("rrsis_scene_fingerprint") == scene.fingerprint)


# ------------------------------------------------------------------------------------------------ scenes
def ground_scene(reader: SceneReader, model, text, options: PredictOptions, tile: int, grid: TileGrid,
                 device: torch.device, result: SceneResult):
    """Coarse passes of scene grounding (:mod:`rrsis_cli.grounding`): the levels, their candidates and the tiles
    the full-resolution pass will run (all of them when it is the pyramid's finest level), recorded in the result
    for the manifest. (None, None) when no coarse scale can work here: the pair falls back to tiled mode."""
    from rrsis_cli.grounding import coarse_pass, scales_text, tiles_in_windows

    started = time.perf_counter()
    if options.coarse_size and options.coarse_size % 32:
        raise UsageError(f"--coarse-size must be a multiple of 32, got {options.coarse_size}")
    notes: list[str] = []
    coarse = coarse_pass(reader, model, text, options, tile, device, notes)
    if coarse is None:
        result.grounding = {"mode": "tiles", "requested": "scene", "fallback": notes[0], "tiles_refined": len(grid),
                            "tiles_total": len(grid), "tiles_refined_fraction": 1.0}
        console.warn(f"{reader.path.name}: scene grounding falls back to tiled mode: {notes[0]}")
        return None, None
    active = None if coarse.plan.fine_everywhere else tiles_in_windows(grid, coarse.windows)
    refined = len(grid) if active is None else len(active)
    result.grounding = {
        "mode": "scene", "levels": [lv.record() for lv in coarse.levels],
        "coarse_size": coarse.levels[0].view_size if options.coarse_size else None,
        "resolve_px": coarse.plan.resolve_px, "min_object_size": options.min_object_size,
        "full_resolution_pass": "everywhere" if active is None else "windows",
        "coarse_weight": options.coarse_weight, "coarse_support": options.coarse_support,
        "candidates": coarse.candidates(), "candidates_total": len(coarse.groups),
        "rejected": coarse.candidates(rejected=True), "rejected_total": len(coarse.rejected),
        "coarse_views": sum(lv.views for lv in coarse.levels), "tiles_refined": refined, "tiles_total": len(grid),
        "tiles_refined_fraction": round(refined / max(len(grid), 1), 4), "notes": notes,
        "coarse_seconds": time.perf_counter() - started}
    for note in notes:
        console.info(f"{reader.path.name}: scene grounding: {note}")
    console.info(f"{reader.path.name}: scene grounding at coarse scale(s) {scales_text(coarse)} found "
                 f"{len(coarse.groups)} coarse candidate(s) ({len(coarse.rejected)} look-alike(s) rejected); refining "
                 f"{refined} of {len(grid)} tiles" + (" (full-resolution pass everywhere: objects down to the "
                                                      "model's limit)" if active is None else ""))
    return coarse, active


def report_grounding(reader: SceneReader, coarse, options: PredictOptions, result: SceneResult) -> None:
    """After fusion: full-resolution detections kept or dropped, and the warning when nothing was found."""
    from rrsis_cli.grounding import empty_advice

    result.grounding.update(fine_detections_kept=coarse.fine_kept, fine_detections_dropped=coarse.fine_dropped)
    if coarse.plan.fine_everywhere and (coarse.fine_kept or coarse.fine_dropped):
        console.info(f"{reader.path.name} / {result.prompt!r}: full-resolution pass: kept {coarse.fine_kept} "
                     f"detection(s) too small for the coarse scales, dropped {coarse.fine_dropped} larger one(s) "
                     "that no coarse scale chose")
    if not coarse.groups and not coarse.fine_kept:
        message = empty_advice(coarse, options.threshold)
        result.grounding["warning"] = message
        console.warn(f"{reader.path.name} / {result.prompt!r}: {message}")


def write_coarse(reader: SceneReader, coarse, path: Path) -> None:
    """The coarse probability maps (× 254, uint8; one band per level, coarsest first) as a COG on the grid of the
    finest coarse level, georeferenced over the scene's extent."""
    import rasterio
    from rasterio.transform import Affine

    ds = reader.ds
    bands = coarse.resampled(ds.height, ds.width)
    height, width = bands.shape[1:]
    transform = ds.transform * Affine.scale(ds.width / width, ds.height / height)
    tmp = path.with_name(f".{path.name}.raw.tif")
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(bands), "dtype": "uint8",
               "crs": ds.crs, "transform": transform, "nodata": 255}
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.round(bands * 254).astype(np.uint8))
        for k, level in enumerate(coarse.levels, start=1):
            dst.set_band_description(k, f"level {k - 1}: 1/{level.factor:.3f}")
    to_cog(tmp, path, {"values": "coarse probability x 254, one band per level (coarsest first)"})
    tmp.unlink()


def run_tiles(reader: SceneReader, model, text, grid: TileGrid, store: TileStore, options: PredictOptions,
              device: torch.device, result: SceneResult, label: str, active: list[int] | None = None) -> None:
    """Run every batch of the grid (or of its ``active`` tiles) not yet in the journal: reads happen
    ``read_ahead`` batches ahead in a background thread; each finished batch is stored and journaled."""
    every = grid.batches(options.batch_size, active)
    batches = [b for b in every if b[0] not in store.done]
    result.tiles_resumed = sum(len(b) for b in every if b[0] in store.done)
    seconds = {"read_wait": 0.0, "infer": 0.0, "store": 0.0}
    reader.seconds = {"read": 0.0, "normalise": 0.0}

    def read_job(batch: list[int]):
        def job():
            tiles, nodata = {}, []
            for index in batch:
                data, valid = reader.read(*grid.origin(index), grid.tile)
                if valid.any():
                    tiles[index] = data
                else:
                    nodata.append(index)
            return batch, tiles, nodata
        return job

    total = len(grid) if active is None else len(active)
    with console.progress_bar(total, label, unit="tile", initial=result.tiles_resumed) as bar:
        for (batch, tiles, nodata), waited in prefetch(map(read_job, batches), options.read_ahead):
            seconds["read_wait"] += waited
            started = time.perf_counter()
            probs = infer(model, text, list(tiles.values()), device, options.precision) if tiles else []
            seconds["infer"] += time.perf_counter() - started
            started = time.perf_counter()
            store.write_batch(batch[0], dict(zip(tiles, probs, strict=True)), nodata)
            seconds["store"] += time.perf_counter() - started
            result.tiles += len(tiles)
            bar.update(len(batch))
    result.tiles_skipped_nodata = len(store.skipped)
    result.seconds.update(reader.seconds)  # spent in the read-ahead thread, overlapped with inference
    result.seconds.update(seconds)


def finalise(reader: SceneReader, store: TileStore, options: PredictOptions, mask_raw: Path, prob_raw: Path,
             coarse=None, active: set[int] | None = None) -> None:
    """Blend the stored tiles block by block into the mask (probability ≥ threshold → 1, nodata → 255) and the
    uint8 probability raster (probability × 254, nodata 255), both tiled GTiffs in the work directory. With a
    coarse grounding, the block's probability is fused with it (:mod:`rrsis_cli.grounding`)."""
    import rasterio
    from rasterio.windows import Window

    ds = reader.ds
    weights = blend_weights(store.grid.tile)
    block = options.block_size
    profile = mask_profile(reader)
    with rasterio.open(mask_raw, "w", **profile) as mask_dst, rasterio.open(prob_raw, "w", **profile) as prob_dst:
        for r in range(0, ds.height, block):
            for c in range(0, ds.width, block):
                window = Window(c, r, min(block, ds.width - c), min(block, ds.height - r))
                prob, covered = store.blend(r, r + window.height, c, c + window.width, weights, active)
                keep = prob >= options.threshold
                if coarse is not None:
                    prob, keep = coarse.fuse_block(prob, covered, r, r + window.height, c, c + window.width,
                                                   options.threshold, options.coarse_weight, options.coarse_support)
                valid = reader.valid(window)
                mask = np.where(keep, 1, 0).astype(np.uint8)
                mask[~valid] = 255
                mask_dst.write(mask, 1, window=window)
                p8 = np.round(prob * 254).astype(np.uint8)
                p8[~valid] = 255
                prob_dst.write(p8, 1, window=window)


def predict_scene(reader: SceneReader, model, text, scene: Scene, prompt: str, out_dir: Path, work: Path,
                  options: PredictOptions, tile: int, device: torch.device, result: SceneResult) -> None:
    """One (scene, prompt): tiles (resuming from the journal in ``work``), blending, COG outputs, vectors."""
    ds = reader.ds
    grid = TileGrid.for_scene(ds.height, ds.width, tile, options.overlap)
    chash = config_hash(model.sha256, scene, prompt, options, tile)
    coarse, active = None, None
    if options.grounding == "scene":
        coarse, active = ground_scene(reader, model, text, options, tile, grid, device, result)
    job = {"config_hash": chash, "grid": asdict(grid), "batch_size": options.batch_size,
           "active": None if active is None else hashlib.sha256(str(active).encode()).hexdigest()}
    store = TileStore(work, grid, job)
    if store.resumed_batches:
        console.info(f"{reader.path.name} / {prompt!r}: resuming, {store.resumed_batches} finished batch(es) "
                     "found in the journal")
    run_tiles(reader, model, text, grid, store, options, device, result,
              f"{reader.path.stem[:24]} / {prompt[:24]}", active)

    started = time.perf_counter()
    mask_raw, prob_raw = work / "mask_raw.tif", work / "prob_raw.tif"
    finalise(reader, store, options, mask_raw, prob_raw, coarse, None if active is None else set(active))
    result.seconds["blend"] = time.perf_counter() - started
    if coarse is not None:
        report_grounding(reader, coarse, options, result)
    if coarse is not None and options.save_coarse:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_coarse(reader, coarse, out_dir / "coarse.tif")
        result.outputs["coarse"] = str(out_dir / "coarse.tif")

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = {"prompt": prompt, "model": str(model.config.get("name")), "model_sha256": str(model.sha256),
            "rrsis_version": __version__, "tile_size": str(tile), "overlap": str(options.overlap),
            "threshold": str(options.threshold), "rrsis_config_hash": chash, "rrsis_scene": str(scene.path),
            "rrsis_scene_fingerprint": scene.fingerprint}
    if options.gsd is not None:
        tags["gsd"] = str(options.gsd)
    if options.save_prob:
        to_cog(prob_raw, out_dir / "prob.tif", {**tags, "values": "probability x 254, 255 nodata"})
        result.outputs["prob"] = str(out_dir / "prob.tif")
    result.seconds["write"] = time.perf_counter() - started

    started = time.perf_counter()
    _, suffix = VECTOR_DRIVERS[options.vector_format]
    vec_path = out_dir / f"mask.{suffix}"
    count = vectorise(mask_raw, prob_raw, vec_path, prompt, options.vector_format, options.min_area,
                      options.simplify, options.block_size)
    result.outputs["vectors"] = str(vec_path)
    result.outputs["features"] = str(count)
    result.seconds["vectorise"] = time.perf_counter() - started

    # the mask is written last: its presence (with the same configuration hash) marks the pair as finished
    started = time.perf_counter()
    to_cog(mask_raw, out_dir / "mask.tif", tags)
    result.outputs["mask"] = str(out_dir / "mask.tif")
    result.seconds["write"] += time.perf_counter() - started


def pair_fields(result: SceneResult) -> dict[str, Any]:
    """Structured fields of one (scene, prompt) for JSON log records."""
    return {"scene": result.scene, "prompt": result.prompt, "status": result.status, "tiles": result.tiles,
            "tiles_resumed": result.tiles_resumed, "seconds": round(sum(result.seconds.values()), 3),
            "output_dir": result.output_dir, **({"error": result.error} if result.error else {})}


def unique_prompts(prompts: list[str]) -> list[str]:
    """The prompts in order, each exact text once (a repeated prompt would write the same outputs twice)."""
    unique = list(dict.fromkeys(prompts))
    if len(unique) < len(prompts):
        console.warn(f"{len(prompts) - len(unique)} repeated prompt(s) dropped; each prompt runs once")
    return unique


def check_output_dir(out: Path) -> None:
    """Create ``out`` and fail early (OutputError) when it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".rrsis-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror})", out) from exc


def validate_options(options: PredictOptions, prompts: list[str]) -> None:
    if not prompts:
        raise UsageError("give at least one --prompt (or --prompts-file)")
    if not 0 <= options.overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), got {options.overlap}")
    if options.vector_format not in VECTOR_DRIVERS:
        raise UsageError(f"--vector-format must be one of {', '.join(VECTOR_DRIVERS)}")
    if options.precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be fp32, bf16 or fp16, got {options.precision!r}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if not 0 < options.threshold < 1:
        raise UsageError(f"--threshold must be in (0, 1), got {options.threshold}")
    if options.grounding not in ("tiles", "scene"):
        raise UsageError(f"--grounding must be tiles or scene, got {options.grounding!r}")
    if not 0 <= options.coarse_weight <= 1:
        raise UsageError(f"--coarse-weight must be in [0, 1], got {options.coarse_weight}")
    if options.min_object_size is not None and options.min_object_size < 0:
        raise UsageError(f"--min-object-size must be at least 0, got {options.min_object_size}")


class SceneRunner:
    """Everything needed to process scenes with one loaded model; used in-process and by dask workers (one per
    worker process, so the model is loaded once per worker)."""

    def __init__(self, model_spec: str, prompts: list[str], out: Path, options: PredictOptions):
        from rrsis_cli.models import load_model

        self.options = options
        self.prompts = list(prompts)
        self.out = Path(out)
        self.device = pick_device(options.device)
        self.model = load_model(model_spec, device=self.device)
        self.tile = int(options.tile_size or self.model.config["image_size"])
        if self.tile % 32:
            raise UsageError(f"--tile-size must be a multiple of 32, got {self.tile}")
        self.texts = TextCache(self.model)

    def run(self, scene: Scene, results: list[SceneResult] | None = None
            ) -> tuple[dict[str, Any], list[SceneResult], float]:
        """(input record for the manifest, one result per prompt, km² processed) for one scene. Results are
        appended to ``results`` as each prompt starts, so an interrupted run still knows the pair in flight."""
        options, prompts = self.options, self.prompts
        results = [] if results is None else results
        try:
            reader = SceneReader(scene.path, options.bands, options.gsd, options.stretch)
        except RrsisError as exc:
            console.error(exc.one_line())
            results += [SceneResult(str(scene.path), p, "failed", relative_output_dir(scene, p),
                                    error=exc.one_line()) for p in prompts]
            return {**scene.as_dict(), "error": exc.one_line()}, results, 0.0
        ds = reader.ds
        record = {**scene.as_dict(), "width": reader.native_size[0], "height": reader.native_size[1],
                  "processed_width": ds.width, "processed_height": ds.height, "bands": reader.bands,
                  "dtype": str(reader.dtype), "crs": str(ds.crs) if ds.crs else None,
                  "normalisation": {"low": reader.lo.tolist(), "high": reader.hi.tolist(),
                                    "method": "user" if options.stretch else
                                    ("/255" if reader.dtype == np.uint8 else "2-98% percentiles")}}
        area_km2 = 0.0
        try:
            for prompt in prompts:
                result = SceneResult(str(scene.path), prompt, output_dir=relative_output_dir(scene, prompt))
                results.append(result)
                self._run_prompt(reader, scene, prompt, result)
                if result.status == "done" and ds.crs is not None and not ds.crs.is_geographic:
                    area_km2 += abs(ds.transform.a * ds.transform.e) * ds.width * ds.height / 1e6
        finally:
            reader.close()
        return record, results, area_km2

    def _run_prompt(self, reader: SceneReader, scene: Scene, prompt: str, result: SceneResult) -> None:
        options, tile, ds = self.options, self.tile, reader.ds
        target = output_dir(self.out, scene, prompt)
        if options.dry_run:
            result.tiles = len(TileGrid.for_scene(ds.height, ds.width, tile, options.overlap))
            result.status = "dry-run"
            return
        if not options.overwrite and is_finished(target / "mask.tif", scene, prompt,
                                                 config_hash(self.model.sha256, scene, prompt, options, tile)):
            result.status = "skipped-existing"
            console.info(f"{scene.path.name} / {prompt!r}: skipped-existing (finished with the same scene, prompt "
                         "and configuration)", **pair_fields(result))
            return
        work = work_dir(self.out, scene, prompt)
        try:
            predict_scene(reader, self.model, self.texts.get(prompt), scene, prompt, target, work, options, tile,
                          self.device, result)
            result.status = "done"
            shutil.rmtree(work, ignore_errors=True)  # kept on failure or interruption: the next run resumes
        except RrsisError as exc:
            result.status, result.error = "failed", exc.one_line()
            console.error(exc.one_line())
        except Exception as exc:  # noqa: BLE001 - one scene never stops the others
            result.status, result.error = "failed", f"{scene.path}: {type(exc).__name__}: {exc}"
            console.error(result.error)
        console.info(f"{scene.path.name} / {prompt!r}: {result.status} ({result.tiles} tiles run, "
                     f"{result.tiles_resumed} resumed, {result.tiles_skipped_nodata} nodata tiles skipped)",
                     **pair_fields(result))


@dataclass
class RunClock:
    """When processing started (perf_counter, after the model loaded) and the km² finished so far."""

    started: float = field(default_factory=time.perf_counter)
    km2: float = 0.0


def finish_manifest(manifest: RunManifest, out: Path, started: float, area_km2: float,
                    name: str = "manifest.json", exit_code: int | None = None) -> RunManifest:
    """Throughput from ``started`` (a perf_counter time), exit code (0 all done or skipped, 3 some failed,
    1 all failed; or ``exit_code`` for an interrupted run) and the atomic JSON write."""
    manifest.seconds = time.perf_counter() - started
    tiles = sum(r.tiles for r in manifest.results if r.status == "done")
    manifest.tiles_per_second = tiles / manifest.seconds if manifest.seconds else 0.0
    manifest.km2_per_hour = area_km2 / manifest.seconds * 3600 if area_km2 and manifest.seconds else None
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        manifest.gpu_max_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    manifest.exit_code = exit_code_for([r.status for r in manifest.results]) if exit_code is None else exit_code
    write_manifest(manifest, out / name)
    work = out / WORK_DIR
    if work.is_dir() and not any(work.rglob("job.json")):
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def exit_code_for(statuses: list[str]) -> int:
    """0 when nothing failed (done, skipped or dry-run), 1 when everything failed, 3 when some failed."""
    failed = sum(status == "failed" for status in statuses)
    return EXIT_OK if not failed else (EXIT_FATAL if failed == len(statuses) else EXIT_PARTIAL)


def write_manifest(manifest: RunManifest, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, default=str) + "\n")
    os.replace(tmp, path)


def predict(inputs: list[str | Path], model_spec: str, prompts: list[str], out_dir: str | Path,
            options: PredictOptions | None = None, glob: str | None = None, cluster: str | None = None,
            scheduler: str | None = None, shard: str | None = None, lock_wait: float = 0.0, retries: int = 2,
            slurm: dict[str, Any] | None = None) -> RunManifest:
    """Run every (scene, prompt); returns the manifest (also written to ``OUT/manifest.json``, or
    ``OUT/manifest-shard-I-of-N.json`` for a shard).

    In this process by default; on dask workers with ``cluster`` (``local``, ``local:N``, ``slurm``) or
    ``scheduler`` (an address), or automatically on a LocalCluster with one worker per GPU when several GPUs and
    several scenes are there. ``shard="I/N"`` (or a SLURM job array) processes one deterministic share of the
    scenes (see :mod:`rrsis_cli.distributed`)."""
    from rrsis_cli import distributed

    options = options or PredictOptions()
    prompts = unique_prompts(prompts)
    validate_options(options, prompts)
    duplicates: list[dict[str, str]] = []
    scenes = find_scenes(inputs, glob, duplicates)
    part = distributed.parse_shard(shard) if shard else distributed.shard_from_environment()
    if part is not None:
        scenes = distributed.select_shard(scenes, *part)
        console.info(f"shard {part[0]}/{part[1]}: {len(scenes)} scene(s)")
    out = Path(out_dir)
    check_output_dir(out)
    if cluster is None and scheduler is None and len(scenes) > 1 and options.device == "auto" \
            and torch.cuda.is_available() and torch.cuda.device_count() > 1 and not options.dry_run:
        cluster = f"local:{torch.cuda.device_count()}"
    manifest = RunManifest(__version__, str(model_spec), None, list(prompts), asdict(options),
                           shard=None if part is None else f"{part[0]}/{part[1]}", duplicates=duplicates)
    clock = RunClock()
    with distributed.output_lock(out, part, lock_wait):
        try:
            if (cluster or scheduler) and not options.dry_run:
                _predict_with_dask(manifest, clock, scenes, model_spec, prompts, out, options, cluster, scheduler,
                                   retries, slurm)
            else:
                _predict_here(manifest, clock, scenes, model_spec, prompts, out, options)
        except (KeyboardInterrupt, Stopped) as exc:
            code = exc.exit_code if isinstance(exc, Stopped) else EXIT_INTERRUPTED
            mark_interrupted(manifest, scenes, prompts)
            finish_manifest(manifest, out, clock.started, clock.km2, distributed.manifest_name(part), code)
            done = sum(r.status == "done" for r in manifest.results)
            console.warn(f"{'interrupted' if code == EXIT_INTERRUPTED else exc} after {done} pair(s) done; "
                         f"{sum(r.status == 'interrupted' for r in manifest.results)} interrupted pair(s) resume "
                         f"on the next run; manifest in {out / distributed.manifest_name(part)}",
                         status="interrupted", exit_code=code)
            raise
        return finish_manifest(manifest, out, clock.started, clock.km2, distributed.manifest_name(part))


def mark_interrupted(manifest: RunManifest, scenes: list[Scene], prompts: list[str]) -> None:
    """Every pair without a final status (in flight, or not started) becomes ``interrupted`` in the manifest."""
    for result in manifest.results:
        if result.status == "pending":
            result.status = "interrupted"
    seen = {(r.scene, r.prompt) for r in manifest.results}
    recorded = {i.get("path") for i in manifest.inputs}
    for scene in scenes:
        if str(scene.path) not in recorded:
            manifest.inputs.append(scene.as_dict())
        manifest.results += [SceneResult(str(scene.path), p, "interrupted", relative_output_dir(scene, p))
                             for p in prompts if (str(scene.path), p) not in seen]


def _predict_here(manifest: RunManifest, clock: RunClock, scenes: list[Scene], model_spec: str,
                  prompts: list[str], out: Path, options: PredictOptions) -> None:
    """An in-process run, filling ``manifest`` as pairs start and finish (so an interrupted run can write what
    it has); ``clock`` starts once the model is loaded. :func:`finish_manifest` completes the timings."""
    runner = SceneRunner(model_spec, prompts, out, options)
    manifest.model, manifest.model_sha256 = str(runner.model.config.get("name")), runner.model.sha256
    manifest.options["tile_size"] = runner.tile
    clock.started = time.perf_counter()
    try:
        with console.progress_bar(len(scenes), "scenes", unit="scene") as bar:
            for scene in scenes:
                record, _, km2 = runner.run(scene, manifest.results)
                manifest.inputs.append(record)
                clock.km2 += km2
                bar.update(1)
    finally:
        manifest.encoder_calls = runner.texts.calls


def _predict_with_dask(manifest: RunManifest, clock: RunClock, scenes: list[Scene], model_spec: str,
                       prompts: list[str], out: Path, options: PredictOptions, cluster: str | None,
                       scheduler: str | None, retries: int, slurm: dict[str, Any] | None) -> None:
    """A dask run (the clock includes cluster start-up), filling ``manifest`` as scenes finish and ordering it
    by input at the end; :func:`finish_manifest` completes the timings."""
    from rrsis_cli import distributed

    manifest.options.update(cluster=cluster, scheduler=scheduler, retries=retries)

    def record(outcome: dict[str, Any]) -> None:
        if "model" in outcome and manifest.model_sha256 is None:
            manifest.model, manifest.model_sha256 = str(outcome["model"]), outcome["model_sha256"]
            manifest.options["tile_size"] = outcome["tile_size"]
        manifest.inputs.append(outcome["record"])
        manifest.results += [SceneResult(**r) for r in outcome["results"]]
        manifest.encoder_calls += outcome["encoder_calls"]
        clock.km2 += outcome["km2"]

    with distributed.make_client(cluster, scheduler, slurm) as client:
        console.info(distributed.cluster_summary(client))
        distributed.predict_on_cluster(scenes, model_spec, prompts, out, options, client, retries, record)
        if cluster is not None and client.cluster is not None:
            client.cluster.close()
    order = {str(s.path): i for i, s in enumerate(scenes)}
    manifest.inputs.sort(key=lambda i: order.get(i["path"], len(order)))
    manifest.results.sort(key=lambda r: order.get(r.scene, len(order)))  # stable: prompt order kept

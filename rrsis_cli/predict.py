"""``rrsis predict``: stream GeoTIFF scenes through a model tile by tile, blend overlapping tiles in bounded
memory, write a Cloud-Optimised GeoTIFF mask and vector polygons per (scene, prompt).

Data path, one module per stage, in one direction: :mod:`rrsis_cli.inputs` (which scenes, where each pair
writes) → :mod:`rrsis_cli.scene` (georeference, windowed reads, nodata mask, scene-level normalisation) →
:mod:`rrsis_cli.pipeline` (parallel reads, one read per tile for every prompt, batched inference through
:mod:`rrsis_cli.inference`, streaming blend and band journal of :mod:`rrsis_cli.blend`) →
:mod:`rrsis_cli.outputs` (COG mask and probability, vectors). This module decides what each pair needs
(skip, re-threshold, compute), drives the pipeline per scene and writes the manifest. Memory depends on the
tile size, the scene width and the batches in flight, not on the scene's height. Every output is written under a
temporary name and renamed; a killed run resumes from its journal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rrsis_cli import __version__, console
from rrsis_cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    ModelError,
    OutputError,
    OutsideAoi,
    RrsisError,
    Stopped,
    UsageError,
)
from rrsis_cli.inputs import WORK_DIR, Scene, find_scenes, output_dir, relative_output_dir, work_dir
from rrsis_cli.manifest import exit_code_for, manifest_name
from rrsis_cli.models.info import INPUT_MULTIPLE, ModelInfo
from rrsis_cli.outputs import mask_profile, to_cog
from rrsis_cli.pipeline import (
    BackgroundWriter,
    assemble,
    mask_from_probability,
    new_pair,
    quantise,
    run_pairs,
)
from rrsis_cli.scene import SceneReader, describe_error
from rrsis_cli.tiling import TileGrid, blend_weights, tile_origins, window_rows
from rrsis_cli.vectors import VECTOR_DRIVERS, check_vector_format, vectorise

if TYPE_CHECKING:  # torch is imported where a model runs: deciding, validating and skipping do without it
    import torch

    from rrsis_cli.preflight import SceneHeader
    from rrsis_cli.store import RemoteOutput

__all__ = ["PredictOptions", "RunManifest", "SceneResult", "blend_weights", "mask_from_probability", "pick_device",
           "predict", "quantise", "tile_origins"]


@dataclass
class PredictOptions:
    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on the CPU
    threshold: float = 0.5
    bands: list[int] | None = None
    save_prob: bool = False
    vectors: bool = True  # False (--no-vectors): mask (and prob) only, no vectorisation
    vector_format: str = "geojson"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    dry_run: bool = False
    block_size: int = 1024
    gsd: float | None = None
    rpc_height: float | None = None  # RPC scenes: constant height (m above the ellipsoid) [the RPCs' HEIGHT_OFF]
    rpc_dem: str | None = None  # RPC scenes: DEM with heights above the ellipsoid
    stretch: tuple[list[float], list[float]] | None = None
    read_ahead: int = 2
    read_workers: int | None = None  # tile-reading threads; None: from the core count (2..4)
    compile_model: bool = False  # torch.compile the model's forward (falls back to eager)
    grounding: str = "tiles"
    coarse_size: int | None = None
    coarse_weight: float = 0.75
    coarse_support: float = 0.25
    refine_margin: float = 0.5
    save_coarse: bool = False
    allow_random_weights: bool = False  # run a card without weights (seeded random weights, with a warning)
    min_object_size: float | None = None  # scene grounding: smallest referent, px (None: the model's limit)
    aoi: str | None = None  # --aoi: GeoJSON file or minx,miny,maxx,maxy[,CRS] (rrsis_cli.aoi); None: whole scenes


@dataclass
class SceneResult:
    scene: str
    prompt: str
    status: str = "pending"
    output_dir: str | None = None  # relative to OUT: <scene key>/<prompt key>
    reads_per_tile: float | None = None  # tile reads of the run ÷ tiles of the grid (1.0: one read for all prompts)
    work_bytes_per_pixel: float | None = None  # work journal on disk ÷ scene pixels, at its largest
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path
    features: int | None = None  # polygons written; None when no vectors were written (--no-vectors, skipped)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    tiles_resumed: int = 0
    grounding: dict[str, Any] | None = None
    windows: dict[str, Any] | None = None  # a scene split into window tasks: tasks, bands written and resumed
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
def read_workers(options: PredictOptions) -> int:
    """Tile-reading threads: ``--read-workers``, else the core count clamped to 2..4."""
    return int(options.read_workers or min(4, max(2, os.cpu_count() or 2)))


def pick_device(spec: str) -> torch.device:
    from rrsis_cli.inference import pick_device as pick

    return pick(spec)


class TextCache:
    """Text features once per prompt per run; ``calls`` counts encoder invocations."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[str, Any] = {}
        self.calls = 0

    def get(self, prompt: str):
        import torch

        if prompt not in self.cache:
            ids, mask = self.model.tokenize([prompt])
            with torch.inference_mode():
                self.cache[prompt] = self.model.encode_text(ids, mask)
            self.calls += 1
        return self.cache[prompt]


# ------------------------------------------------------------------------------------------------ hashes
def config_hash(model_sha: str | None, scene: Scene, prompt: str, options: PredictOptions, tile: int,
                threshold: bool = True) -> str:
    """Identifies one (scene, prompt, model, parameters): stored in ``mask.tif`` and in the journal, so an
    existing output is skipped, and a journal resumed, only for exactly this pair and configuration.

    ``threshold=False`` leaves the threshold out: the hash of the probability raster (tag ``rrsis_prob_hash``),
    which does not depend on it in tile grounding, so a ``prob.tif`` is re-thresholded for any threshold. With
    scene grounding the threshold picks the coarse candidates, so it stays in (no re-thresholding)."""
    payload = {"model": model_sha, "scene": scene.fingerprint, "prompt": prompt, "tile": tile,
               "overlap": options.overlap,
               "threshold": options.threshold, "bands": options.bands, "gsd": options.gsd,
               "stretch": options.stretch, "version": __version__}
    if options.rpc_height is not None or options.rpc_dem is not None:
        payload["rpc"] = [options.rpc_height, options.rpc_dem]
    if options.aoi is not None:
        from rrsis_cli.aoi import parse_aoi

        payload["aoi"] = parse_aoi(options.aoi).record()
    if options.grounding != "tiles":
        payload["grounding"] = [options.grounding, options.coarse_size, options.coarse_weight,
                                options.coarse_support, options.refine_margin, options.min_object_size, 2]
    elif not threshold:
        payload.pop("threshold")
        payload["kind"] = "probability"
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
    return tags_prove_finished(tags, scene, prompt, chash)


def tags_prove_finished(tags: dict[str, str] | None, scene: Scene, prompt: str, chash: str) -> bool:
    """The rule of :func:`is_finished` on a mask's tags (read locally or from an object store)."""
    return (tags is not None and tags.get("rrsis_config_hash") == chash and tags.get("prompt") == prompt
            and tags.get("rrsis_scene_fingerprint") == scene.fingerprint)


def reusable_prob(prob_path: Path, reader: SceneReader, scene: Scene, prompt: str, phash: str) -> bool:
    """True when ``prob_path`` exists and its tags prove it is the probability raster of this scene, this exact
    prompt and this configuration except the threshold (``rrsis_prob_hash``), on the scene's grid."""
    import rasterio

    if not prob_path.exists():
        return False
    try:
        with rasterio.open(prob_path) as ds:
            tags, shape = ds.tags(), (ds.height, ds.width)
    except rasterio.errors.RasterioIOError:
        return False
    return (tags.get("rrsis_prob_hash") == phash and tags.get("prompt") == prompt
            and tags.get("rrsis_scene_fingerprint") == scene.fingerprint
            and shape == (reader.ds.height, reader.ds.width))


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
               "crs": reader.crs, "transform": transform, "nodata": 255}
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.round(bands * 254).astype(np.uint8))
        for k, level in enumerate(coarse.levels, start=1):
            dst.set_band_description(k, f"level {k - 1}: 1/{level.factor:.3f}")
    to_cog(tmp, path, {"values": "coarse probability x 254, one band per level (coarsest first)"})
    tmp.unlink()


def rethreshold(reader: SceneReader, prob_path: Path, threshold: float, mask_raw: Path,
                block_size: int) -> None:
    """The mask of an existing ``prob.tif`` at ``threshold`` (:func:`mask_from_probability`, block by block)
    as a tiled GTiff in the work directory: what :func:`finalise` writes for the same probabilities."""
    import rasterio
    from rasterio.windows import Window

    ds = reader.ds
    with rasterio.open(prob_path) as src, rasterio.open(mask_raw, "w", **mask_profile(reader)) as dst:
        for r in range(0, ds.height, block_size):
            for c in range(0, ds.width, block_size):
                window = Window(c, r, min(block_size, ds.width - c), min(block_size, ds.height - r))
                dst.write(mask_from_probability(src.read(1, window=window), threshold), 1, window=window)


@dataclass
class PairJob:
    """One (scene, prompt) that needs tiles: where it writes and works, and its result."""

    prompt: str
    result: SceneResult
    target: Path
    work: Path


def run_now(step, cleanup: bool = False) -> None:
    """``submit`` for steps run at once, in the calling thread."""
    step()


def compute_pairs(reader: SceneReader, model, texts: TextCache, scene: Scene, jobs: list[PairJob],
                  options: PredictOptions, tile: int, device: torch.device, submit=run_now) -> None:
    """Run the tiles of one or more (scene, prompt) pairs together (:func:`run_tiles`), then hand each pair's
    output step to ``submit`` (at once by default; a :class:`~rrsis_cli.pipeline.BackgroundWriter`'s ``submit``
    writes them while the next scene's tiles run). A pair whose outputs fail is marked failed on its own; an error
    in the shared tile loop fails every pair of it."""
    pairs = run_tiles(reader, model, texts, scene, jobs, options, tile, device)
    for job, pair in zip(jobs, pairs, strict=True):
        submit(lambda job=job, pair=pair: run_for_pair(
            job, scene, lambda: write_pair(reader, model, scene, job, pair, options, tile)))


def run_tiles(reader: SceneReader, model, texts: TextCache, scene: Scene, jobs: list[PairJob],
              options: PredictOptions, tile: int, device: torch.device,
              tile_rows: tuple[int, int] | None = None) -> list:
    """Run the tiles of the pairs — each batch read once for all of them (:func:`rrsis_cli.pipeline.run_pairs`),
    resuming each from its journal — and count them in each job's result; the pairs, their journals open. With
    scene grounding each pair first gets its coarse pass and its own set of tiles. ``tile_rows = (first, last)``:
    a window task, which journals only the bands of those tile rows (tile grounding only)."""
    from rrsis_cli.inference import resolve_precision

    ds = reader.ds
    grid = TileGrid.for_scene(ds.height, ds.width, tile, options.overlap)
    pairs = []
    try:
        for job in jobs:
            text = texts.get(job.prompt)
            coarse, active = None, None
            if options.grounding == "scene":
                if tile_rows is not None:
                    raise UsageError("window tasks run tile grounding only")
                coarse, active = ground_scene(reader, model, text, options, tile, grid, device, job.result)
            spec = {"format": "bands-1", "grid": asdict(grid), "batch_size": options.batch_size,
                    "config_hash": config_hash(model.sha256, scene, job.prompt, options, tile),
                    "active": None if active is None else hashlib.sha256(str(active).encode()).hexdigest()}
            pair = new_pair(job.work, grid, spec, job.prompt, text, coarse, active, options.coarse_weight,
                            options.coarse_support, tile_rows)
            pairs.append(pair)
            journal = pair.journal
            if journal.finished >= journal.first:
                where = "" if tile_rows is None else f" of tile rows {journal.first}-{journal.last}"
                console.info(f"{reader.path.name} / {job.prompt!r}: resuming, {journal.finished + 1 - journal.first}"
                             f" of {journal.last + 1 - journal.first} row band(s){where} found in the journal")
        label = f"{reader.path.stem[:24]} / " + (jobs[0].prompt[:24] if len(jobs) == 1 else f"{len(jobs)} prompts")
        workers = read_workers(options)
        stats = run_pairs(reader, model, grid, pairs, options.batch_size, device,
                          resolve_precision(options.precision, device), workers,
                          max(options.read_ahead, workers + 1), label)
        for job, pair in zip(jobs, pairs, strict=True):
            result = job.result
            result.tiles, result.tiles_resumed = pair.tiles, pair.tiles_resumed
            result.tiles_skipped_nodata = pair.nodata_tiles
            result.reads_per_tile = stats.tiles_read / max(1, len(grid))
            result.seconds.update(stats.seconds)  # shared by the pairs run together
            pair.blender = None  # the bands are journaled: writing needs only the journal
    except BaseException:
        for pair in pairs:
            pair.journal.close()
        raise
    return pairs


def work_profile(reader: SceneReader) -> dict[str, Any]:
    """The profile of the mask and probability rasters in the work directory: the output profile with DEFLATE's
    fastest level (they are read once or twice, by the COG and vector writers, and deleted: level 6 cost 3x the
    time for little less scratch disk). The COGs are compressed as before: their bytes do not depend on it."""
    return {**mask_profile(reader), "zlevel": 1}


def write_pair(reader: SceneReader, model, scene: Scene, job: PairJob, pair, options: PredictOptions,
               tile: int) -> None:
    """The mask and probability rasters of a pair from its journal, then its outputs (COGs, vectors)."""
    started = time.perf_counter()
    grid = pair.journal.grid
    mask_raw, prob_raw = job.work / "mask_raw.tif", job.work / "prob_raw.tif"
    journal = pair.journal
    try:  # the probability raster is only read for prob.tif and for the vectors' scores
        assemble(reader, journal, options.threshold, mask_raw, prob_raw if options.save_prob or options.vectors
                 else None, work_profile(reader), options.block_size,
                 None if pair.coarse is None else coarse_fusion(pair.coarse, options))
        job.result.work_bytes_per_pixel = journal.disk_bytes() / max(1, grid.height * grid.width)
    finally:
        journal.close()
    job.result.seconds["assemble"] = time.perf_counter() - started
    if pair.coarse is not None:
        report_grounding(reader, pair.coarse, options, job.result)
    extra: dict[str, Path] = {}
    if pair.coarse is not None and options.save_coarse:
        extra["coarse"] = job.work / "coarse.tif"
        write_coarse(reader, pair.coarse, extra["coarse"])
    write_outputs(mask_raw, prob_raw, job.target, job.work, job.prompt, options,
                  output_tags(model, scene, job.prompt, options, tile), job.result, options.save_prob, extra)
    job.result.status = "done"


def coarse_fusion(coarse, options: PredictOptions):
    """``fuse(fine, covered, row0, row1, col0, col1) -> (probability, keep)`` of a block with scene grounding: the
    fine probability fused with the coarse levels (:meth:`rrsis_cli.grounding.CoarseGrounding.fuse_block`)."""
    def fuse_block(fine, covered, row0, row1, col0, col1):
        return coarse.fuse_block(fine, covered, row0, row1, col0, col1, options.threshold, options.coarse_weight,
                                 options.coarse_support)

    return fuse_block


def run_for_pair(job: PairJob, scene: Scene, step) -> None:
    """Run ``step`` for one pair: its status (done, or partial when a derived product failed), its work directory
    removed when it finished, or failed with the one-line error (work kept: the next run resumes)."""
    result = job.result
    try:
        step()
        if result.error:  # the mask is written; a derived product (vectors) failed
            result.status = "partial"
            console.warn(f"{scene.path}: {job.prompt!r}: mask written, {result.error}; prob.tif kept so a rerun "
                         "re-derives the vectors without running tiles")
        shutil.rmtree(job.work, ignore_errors=True)
    except RrsisError as exc:
        result.status, result.error = "failed", exc.one_line()
        console.error(exc.one_line())
    except Exception as exc:  # noqa: BLE001 - one pair never stops the others
        result.status, result.error = "failed", f"{scene.path}: {describe_error(exc)}"
        console.error(result.error)
    log_pair(result, scene)


def log_pair(result: SceneResult, scene: Scene) -> None:
    console.info(f"{scene.path.name} / {result.prompt!r}: {result.status} ({result.tiles} tiles run, "
                 f"{result.tiles_resumed} resumed, {result.tiles_skipped_nodata} nodata tiles skipped)",
                 **pair_fields(result))


def rethreshold_pair(reader: SceneReader, model, scene: Scene, prompt: str, prob_path: Path, out_dir: Path,
                     work: Path, options: PredictOptions, tile: int, result: SceneResult) -> None:
    """One (scene, prompt) whose ``prob.tif`` (:func:`reusable_prob`) is there: the mask at the requested
    threshold and its vectors from it, no tile run; the files are those of a full run at that threshold."""
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    mask_raw = work / "mask_raw.tif"
    rethreshold(reader, prob_path, options.threshold, mask_raw, options.block_size)
    result.seconds["blend"] = time.perf_counter() - started
    write_outputs(mask_raw, prob_path, out_dir, work, prompt, options,
                  output_tags(model, scene, prompt, options, tile), result, False)


def output_tags(model, scene: Scene, prompt: str, options: PredictOptions, tile: int) -> dict[str, str]:
    """Tags of ``mask.tif`` and ``prob.tif``: what produced them, and the hashes that let a later run skip the
    pair (``rrsis_config_hash``) or re-threshold its ``prob.tif`` (``rrsis_prob_hash``)."""
    tags = {"prompt": prompt, "model": str(model.config.get("name")), "model_sha256": str(model.sha256),
            "rrsis_version": __version__, "tile_size": str(tile), "overlap": str(options.overlap),
            "threshold": str(options.threshold),
            "rrsis_config_hash": config_hash(model.sha256, scene, prompt, options, tile),
            "rrsis_prob_hash": config_hash(model.sha256, scene, prompt, options, tile, threshold=False),
            "rrsis_scene": str(scene.path), "rrsis_scene_fingerprint": scene.fingerprint}
    if options.gsd is not None:
        tags["gsd"] = str(options.gsd)
    return tags


def _prob_hash_of(path: Path) -> str | None:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.tags().get("rrsis_prob_hash")
    except rasterio.errors.RasterioIOError:
        return None


def write_outputs(mask_raw: Path, prob_raw: Path, out_dir: Path, work: Path, prompt: str, options: PredictOptions,
                  tags: dict[str, str], result: SceneResult, save_prob: bool,
                  extra: dict[str, Path] | None = None) -> None:
    """Write a pair's outputs (``prob.tif`` when ``save_prob``, the vectors unless ``--no-vectors``,
    ``mask.tif``) into ``work/out``, then move them, and the ``extra`` files already written, into ``out_dir``.
    ``mask.tif`` moves last: its presence (with its configuration hash) marks the pair finished; just before it,
    vectors of an earlier mask (other formats, or all with ``--no-vectors``) and a ``prob.tif`` of another
    configuration are removed, so the directory only describes the new mask. Anything that fails leaves
    nothing at the final paths."""
    stage = work / "out"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        started = time.perf_counter()
        moves = list((extra or {}).items())
        if save_prob:
            to_cog(prob_raw, stage / "prob.tif", {**tags, "values": "probability x 254, 255 nodata"})
            moves.append(("prob", stage / "prob.tif"))
        result.seconds["write"] = time.perf_counter() - started
        count = None
        if options.vectors:
            started = time.perf_counter()
            _, suffix = VECTOR_DRIVERS[options.vector_format]
            vec_path = stage / f"mask.{suffix}"
            try:
                count = vectorise(mask_raw, prob_raw, vec_path, prompt, options.vector_format, options.min_area,
                                  options.simplify, options.block_size)
                moves.append(("vectors", vec_path))
            except Exception as exc:  # noqa: BLE001 - a derived product never discards the mask
                result.error = f"vectors failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                if not save_prob and prob_raw.parent != out_dir:  # keep the probabilities: a rerun re-derives
                    to_cog(prob_raw, stage / "prob.tif", {**tags, "values": "probability x 254, 255 nodata"})
                    moves.append(("prob", stage / "prob.tif"))
                    save_prob = True
            result.seconds["vectorise"] = time.perf_counter() - started
        started = time.perf_counter()
        to_cog(mask_raw, stage / "mask.tif", tags)

        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, path in moves:
            target = out_dir / path.name
            if target.is_dir():  # mask.fgb written as a directory by earlier versions
                shutil.rmtree(target)
            os.replace(path, target)
            result.outputs[kind] = str(target)
        written = {path.name for _, path in moves}
        for _, suffix in VECTOR_DRIVERS.values():
            stale = out_dir / f"mask.{suffix}"
            if stale.name not in written and (stale.is_file() or stale.is_dir()):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        prob = out_dir / "prob.tif"
        if not save_prob and prob.exists():
            found = _prob_hash_of(prob)
            if found == tags["rrsis_prob_hash"]:
                result.outputs["prob"] = str(prob)  # the probabilities of this mask (kept, e.g. re-thresholded)
            elif found is not None:
                prob.unlink()  # the probabilities of another configuration
        os.replace(stage / "mask.tif", out_dir / "mask.tif")
        result.outputs["mask"] = str(out_dir / "mask.tif")
        result.features = count
        result.seconds["write"] += time.perf_counter() - started
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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


def check_prompts(prompts: list[str]) -> None:
    """UsageError for a prompt that is empty or blank (``--prompt ""``, ``--prompt "$UNSET"``) or that is an
    option name (``--prompt $UNSET --out DIR`` reads ``--out`` as the prompt)."""
    if not prompts:
        raise UsageError("give at least one --prompt (or --prompts-file)")
    for number, prompt in enumerate(prompts, 1):
        where = f"--prompt #{number}" if len(prompts) > 1 else "--prompt"
        if not prompt.strip():
            raise UsageError(f"{where} is empty{' (only whitespace)' if prompt else ''}: an unset shell variable? "
                             "Quote it (--prompt \"$VAR\") and check that it is set")
        if prompt.startswith("--"):
            raise UsageError(f"{where} is {prompt!r}, an option name: the prompt text is missing (an unset shell "
                             "variable without quotes?)")


def _check_range(name: str, value: float | None, low: float, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """UsageError naming ``--name`` when ``value`` (unless None) is not a finite number in the range."""
    if value is None:
        return
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        if high is None:
            bounds = f"{'>' if low_open else '>='} {low:g}"
        else:
            bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UsageError(f"--{name.replace('_', '-')} must be {bounds}, got {value:g}")


def validate_options(options: PredictOptions, prompts: list[str], cluster: str | None = None,
                     scheduler: str | None = None, split_tiles: int = 0) -> None:
    """Every check that needs neither the model nor the scenes (UsageError, exit 2, naming the option). The
    checks that need the model's input size (:func:`tile_size_for`) or a scene's header
    (:mod:`rrsis_cli.preflight`) follow, still before the model loads."""
    check_prompts(prompts)
    if cluster and scheduler:
        raise UsageError("--cluster and --scheduler exclude each other: --cluster starts workers, --scheduler uses "
                         "the workers of a running scheduler")
    if split_tiles < 0:
        raise UsageError(f"--split-tiles must be 0 (never split) or a number of tiles, got {split_tiles}")
    _check_range("overlap", options.overlap, 0, 1, high_open=True)
    if options.vector_format not in VECTOR_DRIVERS:
        raise UsageError(f"--vector-format must be one of {', '.join(VECTOR_DRIVERS)}")
    if options.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, got {options.precision!r}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    _check_range("threshold", options.threshold, 0, 1, low_open=True, high_open=True)
    for name in ("tile_size", "coarse_size"):
        value = getattr(options, name)
        if value is not None and (value <= 0 or value % INPUT_MULTIPLE):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive multiple of {INPUT_MULTIPLE} (the "
                             f"models' stride), got {value}")
    _check_range("gsd", options.gsd, 0, low_open=True)
    _check_range("min_area", options.min_area, 0)
    _check_range("simplify", options.simplify, 0)
    if options.bands is not None:
        if len(options.bands) not in (1, 3) or min(options.bands) < 1:
            raise UsageError("--bands takes 1 band (grey) or 3 bands (red, green, blue), numbered from 1, got "
                             + ",".join(map(str, options.bands)))
    if options.stretch is not None:
        low, high = options.stretch
        if len(low) != len(high) or not low:
            raise UsageError(f"--stretch needs as many LOW as HIGH values, got {len(low)} and {len(high)}")
        if options.bands is not None and len(low) != len(options.bands):
            raise UsageError(f"--stretch gives {len(low)} value(s) per end for {len(options.bands)} --bands")
        if not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in zip(low, high, strict=True)):
            raise UsageError("--stretch needs LOW < HIGH for every band, got "
                             + ", ".join(f"{a:g}:{b:g}" for a, b in zip(low, high, strict=True)))
    if options.grounding not in ("tiles", "scene"):
        raise UsageError(f"--grounding must be tiles or scene, got {options.grounding!r}")
    if options.save_coarse and options.grounding != "scene":
        raise UsageError("--save-coarse writes the coarse map of --grounding scene; it has no effect with "
                         f"--grounding {options.grounding}")
    _check_range("coarse_weight", options.coarse_weight, 0, 1)
    _check_range("coarse_support", options.coarse_support, 0, 1)
    _check_range("refine_margin", options.refine_margin, 0)
    _check_range("min_object_size", options.min_object_size, 0)
    if options.block_size < 1 or options.read_ahead < 1:
        raise UsageError("block_size and read_ahead must be at least 1")
    if options.rpc_dem is not None and not Path(options.rpc_dem).is_file():
        raise UsageError("--rpc-dem: file not found", options.rpc_dem)
    scene_aoi(options)  # UsageError for an --aoi that cannot be read


def check_writers(options: PredictOptions) -> None:
    """UsageError when the writer of ``--vector-format`` is missing: checked once work is known to remain (a run
    whose every pair is finished does not import the vector stack), before the model loads or a tile runs."""
    if options.vectors:
        check_vector_format(options.vector_format)


def tile_size_for(options: PredictOptions, image_size: int, multiple: int = INPUT_MULTIPLE,
                  model: str = "the model") -> int:
    """``--tile-size``, or the model's input size; UsageError unless a multiple of the model's stride."""
    tile = image_size if options.tile_size is None else int(options.tile_size)
    if tile % multiple:
        if options.tile_size is None:
            raise UsageError(f"the input size {image_size} of {model} is not a multiple of {multiple}; give "
                             f"--tile-size")
        raise UsageError(f"--tile-size must be a multiple of {multiple} for {model}, got {tile}")
    return tile


def warn_about_prompts(prompts: list[str], tokenizer, max_tokens: int) -> list[dict[str, Any]]:
    """Warn about prompts the model cannot read whole: longer than ``max_tokens`` (the model reads the first
    ``max_tokens`` tokens, ``[CLS]`` included, and the rest is cut) or without a single token the tokenizer knows
    (every token ``[UNK]``). Tokens are counted without truncation. Returns one record per prompt."""
    records = []
    for prompt in prompts:
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        known = [i for i in ids if i != tokenizer.unk_token_id]
        total = len(ids) + 2  # [CLS] ... [SEP]
        records.append({"prompt": prompt, "tokens": total, "unknown": len(ids) - len(known)})
        words = max(0, max_tokens - 1)  # the model reads [CLS] and the first max_tokens - 1 tokens
        if len(ids) > words:
            console.warn(f"prompt {prompt!r} is {total} tokens but the model reads {max_tokens}: "
                         f"{tokenizer.decode(ids[words:])!r} is cut off")
        if not known:
            console.warn(f"prompt {prompt!r} has no word the model's tokenizer knows (every token is [UNK]); "
                         "the model reads it as an empty sentence")
    return records


def error_line(scene: Scene, exc: BaseException) -> str:
    """The one-line error of a scene: a project error's own line, else the path and the error described."""
    return exc.one_line() if isinstance(exc, RrsisError) else f"{scene.path}: {describe_error(exc)}"


def scene_aoi(options: PredictOptions):
    """The parsed ``--aoi`` (:func:`rrsis_cli.aoi.parse_aoi`), or None."""
    if options.aoi is None:
        return None
    from rrsis_cli.aoi import parse_aoi

    return parse_aoi(options.aoi)


class SceneRunner:
    """Everything needed to process scenes with one loaded model; used in-process and by dask workers (one per
    worker process, so the model is loaded once per worker)."""

    def __init__(self, model_spec: str, prompts: list[str], out: Path, options: PredictOptions,
                 remote: RemoteOutput | None = None):
        from rrsis_cli.models import load_model, random_model, require_weights
        from rrsis_cli.pipeline import bound_heap

        bound_heap()  # memory does not grow with the scene's width through heap fragmentation
        self.options = options
        self.remote = remote  # an object-store output: finished pairs are looked up there
        self.prompts = list(prompts)
        self.out = Path(out)
        self.device = pick_device(options.device)
        if require_weights(model_spec, options.allow_random_weights).kind == "none":  # a card without weights
            self.model = random_model(model_spec, device=self.device)
        else:
            self.model = load_model(model_spec, device=self.device)
        from rrsis_cli.inference import prepare_model

        prepare_model(self.model, self.device, options.compile_model)  # eval; CUDA: channels-last, TF32
        config = self.model.config
        self.tile = tile_size_for(options, int(config["image_size"]),
                                  int(config.get("input_multiple", INPUT_MULTIPLE)), str(config.get("name")))
        self.texts = TextCache(self.model)

    def run(self, scene: Scene, results: list[SceneResult] | None = None, writer=None
            ) -> tuple[dict[str, Any], list[SceneResult], float]:
        """(input record for the manifest, one result per prompt, km² processed) for one scene. Results are
        appended to ``results`` as each prompt starts, so an interrupted run still knows the pair in flight.

        With ``writer`` (a :class:`~rrsis_cli.pipeline.BackgroundWriter`) the pairs' outputs are written by its
        thread while the caller goes on with the next scene: the results' statuses are final once the writer is
        closed, the scene is closed by the writer after its pairs, and the km² is added to ``writer.km2``
        (0.0 is returned)."""
        options, prompts = self.options, self.prompts
        results = [] if results is None else results
        try:
            reader = SceneReader(scene.path, options.bands, options.gsd, options.stretch, options.rpc_height,
                                 options.rpc_dem, scene_aoi(options))
        except OutsideAoi as exc:  # not a failure: the scene is not in the area asked for
            console.info(exc.one_line())
            results += [SceneResult(str(scene.path), p, "skipped-aoi", relative_output_dir(scene, p))
                        for p in prompts]
            return {**scene.as_dict(), "aoi": "outside"}, results, 0.0
        except Exception as exc:  # noqa: BLE001 - one scene never stops the others
            error = exc.one_line() if isinstance(exc, RrsisError) else f"{scene.path}: {describe_error(exc)}"
            console.error(error)
            results += [SceneResult(str(scene.path), p, "failed", relative_output_dir(scene, p),
                                    error=error) for p in prompts]
            return {**scene.as_dict(), "error": error}, results, 0.0
        ds = reader.ds
        record = {**scene.as_dict(), "width": reader.native_size[0], "height": reader.native_size[1],
                  "processed_width": ds.width, "processed_height": ds.height, "bands": reader.bands,
                  "dtype": str(reader.dtype), "crs": str(reader.crs) if reader.crs else None,
                  "georeference": reader.georeference.as_record(),
                  "normalisation": {"low": reader.lo.tolist(), "high": reader.hi.tolist(),
                                    "method": "user" if options.stretch else
                                    ("/255" if reader.dtype == np.uint8 else "2-98% percentiles")}}
        if reader.window is not None:  # --aoi: the window processed, in pixels of the full processed grid
            w = reader.window
            record["aoi_window"] = {"col_off": int(w.col_off), "row_off": int(w.row_off), "width": int(w.width),
                                    "height": int(w.height), "transform": list(ds.transform)[:6]}
        first = len(results)
        area = [0.0]

        def finish_scene() -> None:  # after the scene's pairs are written: its area, and the scene is closed
            try:
                if reader.crs is not None and not reader.crs.is_geographic:
                    pixel_km2 = abs(ds.transform.a * ds.transform.e) * ds.width * ds.height / 1e6
                    mine = results[first:first + len(prompts)]
                    area[0] = pixel_km2 * sum(r.status in ("done", "partial") for r in mine)
                    if writer is not None:
                        writer.km2 += area[0]
            finally:
                reader.close()

        submit = run_now if writer is None else writer.submit
        try:
            jobs = []
            for prompt in prompts:
                result = SceneResult(str(scene.path), prompt, output_dir=relative_output_dir(scene, prompt))
                results.append(result)
                job = self._prepare_pair(reader, scene, prompt, result)
                if job is not None:
                    jobs.append(job)
            if jobs:
                self._compute(reader, scene, jobs, submit)
        finally:
            submit(finish_scene, cleanup=True)
        return record, results, area[0] if writer is None else 0.0

    def run_window(self, scene: Scene, tile_rows: tuple[int, int]) -> dict[str, Any]:
        """A window task: the bands of tile rows ``tile_rows = (first, last)`` of every pair of the scene that
        needs tiles, journaled into the pair's work directory (shared by the scene's window tasks), nothing
        written at the final paths. Returns ``{"tile_rows", "pairs": {prompt: counts}, "encoder_calls",
        "error"}``; the task that finishes the scene (:meth:`run`, once every window is done) writes the outputs."""
        options = self.options
        outcome: dict[str, Any] = {"tile_rows": list(tile_rows), "pairs": {}, "encoder_calls": 0, "error": None}
        calls = self.texts.calls
        try:
            reader = SceneReader(scene.path, options.bands, options.gsd, options.stretch, options.rpc_height,
                                 options.rpc_dem)
        except Exception as exc:  # noqa: BLE001 - reported by the client for the whole scene
            outcome["error"] = error_line(scene, exc)
            return outcome
        try:
            nrows = len(TileGrid.for_scene(reader.ds.height, reader.ds.width, self.tile, options.overlap).rows)
            rows = (tile_rows[0], min(tile_rows[1], nrows - 1))  # a warped scene's planned size is approximate
            jobs = [PairJob(prompt, SceneResult(str(scene.path), prompt), output_dir(self.out, scene, prompt),
                            work_dir(self.out, scene, prompt))
                    for prompt in self.prompts if rows[0] <= rows[1] and self._needs_tiles(reader, scene, prompt)]
            if jobs:
                pairs = run_tiles(reader, self.model, self.texts, scene, jobs, options, self.tile, self.device, rows)
                for job, pair in zip(jobs, pairs, strict=True):
                    pair.journal.close()
                    outcome["pairs"][job.prompt] = window_counts(job.result, pair)
        except Exception as exc:  # noqa: BLE001 - reported by the client for the whole scene
            outcome["error"] = error_line(scene, exc)
        finally:
            reader.close()
            outcome["encoder_calls"] = self.texts.calls - calls
        return outcome

    def _needs_tiles(self, reader: SceneReader, scene: Scene, prompt: str) -> bool:
        """False for a pair that is finished or that its ``prob.tif`` re-thresholds (:meth:`_prepare_pair`)."""
        if not self.options.overwrite and pair_finished(self.out, scene, prompt, self.options, self.model.sha256,
                                                        self.tile):
            return False
        return not self._rethresholds(reader, scene, prompt)

    def _rethresholds(self, reader: SceneReader, scene: Scene, prompt: str) -> bool:
        """True when the pair's ``prob.tif`` is of this configuration but the threshold (no tile to run)."""
        options, tile = self.options, self.tile
        prob = output_dir(self.out, scene, prompt) / "prob.tif"
        return not options.overwrite and options.grounding == "tiles" and reusable_prob(
            prob, reader, scene, prompt, config_hash(self.model.sha256, scene, prompt, options, tile, False))

    def _prepare_pair(self, reader: SceneReader, scene: Scene, prompt: str, result: SceneResult
                      ) -> PairJob | None:
        """Settle a pair that needs no tiles (dry run, finished, re-thresholded from its prob.tif); else the job
        to compute."""
        options, tile, ds = self.options, self.tile, reader.ds
        target = output_dir(self.out, scene, prompt)
        if options.dry_run:  # predict() plans a dry run without a runner; a runner asked for one counts the tiles
            result.tiles = len(TileGrid.for_scene(ds.height, ds.width, tile, options.overlap))
            result.status = "dry-run"
            return None
        if not options.overwrite and pair_finished(self.out, scene, prompt, options, self.model.sha256, tile,
                                                   self.remote):
            result.status = "skipped-existing"
            log_skipped(result, scene)
            return None
        job = PairJob(prompt, result, target, work_dir(self.out, scene, prompt))
        prob = target / "prob.tif"
        if self._rethresholds(reader, scene, prompt):  # same pair and configuration but the threshold: no tile run
            def step():
                rethreshold_pair(reader, self.model, scene, prompt, prob, target, job.work, options, tile, result)
                result.status = "rethresholded"
            run_for_pair(job, scene, step)
            return None
        return job

    def _compute(self, reader: SceneReader, scene: Scene, jobs: list[PairJob], submit=run_now) -> None:
        """The pairs' tiles, read once for all prompts (each prompt alone with scene grounding: each has its own
        tiles); an error in the tile loop fails the pairs it served."""
        groups = [jobs] if self.options.grounding == "tiles" else [[job] for job in jobs]
        for group in groups:
            try:
                compute_pairs(reader, self.model, self.texts, scene, group, self.options, self.tile, self.device,
                              submit)
            except Exception as exc:  # noqa: BLE001 - one scene never stops the others
                error = exc.one_line() if isinstance(exc, RrsisError) else f"{scene.path}: {describe_error(exc)}"
                console.error(error)
                for job in group:
                    job.result.status, job.result.error = "failed", error
                    log_pair(job.result, scene)


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
    torch = sys.modules.get("torch")  # no model ran without it (everything skipped): nothing to ask CUDA
    if torch is not None and torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        manifest.gpu_max_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    manifest.exit_code = exit_code_for([r.status for r in manifest.results]) if exit_code is None else exit_code
    write_manifest(manifest, out / name)
    work = out / WORK_DIR
    if work.is_dir() and not any(work.rglob("job.json")):
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def write_manifest(manifest: RunManifest, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, default=str) + "\n")
    os.replace(tmp, path)


def predict(inputs: list[str | Path], model_spec: str, prompts: list[str], out_dir: str | Path,
            options: PredictOptions | None = None, glob: str | None = None, cluster: str | None = None,
            scheduler: str | None = None, shard: str | None = None, lock_wait: float = 0.0, retries: int = 2,
            slurm: dict[str, Any] | None = None, split_tiles: int = 512, in_flight: int | None = None,
            stac=None, publish: bool = False) -> RunManifest:
    """Run every (scene, prompt); returns the manifest (also written to ``OUT/manifest.json``, or
    ``OUT/manifest-shard-I-of-N.json`` for a shard).

    In this process by default; on dask workers with ``cluster`` (``local``, ``local:N``, ``slurm``) or
    ``scheduler`` (an address), or automatically on a LocalCluster with one worker per GPU when several GPUs and
    several scenes are there. On dask, a scene of more than ``split_tiles`` tiles (0: never) runs as window tasks
    of about that many tiles each, on any worker, with the bytes of an in-process run; at most ``in_flight``
    tasks (default: 2 per worker thread) are submitted at a time. ``shard="I/N"`` (or a SLURM job array) processes one
    deterministic share of the scenes (see :mod:`rrsis_cli.distributed`).

    Before the model loads: every option is validated (UsageError), the model's configuration and weights hash
    are read (:func:`~rrsis_cli.models.describe_model`), every scene's header is checked against the options, and
    the (scene, prompt) pairs whose outputs are already finished are skipped; when that is all of them the model is
    never loaded. ``options.dry_run`` stops there: the manifest returned describes the plan
    (:func:`plan_dry_run`) and nothing is written, not even ``OUT``.

    ``inputs`` may hold URLs, object-store names and prefixes and STAC files (:func:`rrsis_cli.inputs.find_scenes`);
    ``stac`` (:class:`rrsis_cli.stac_inputs.StacOptions`) chooses the STAC assets and adds a STAC API search.

    ``out_dir`` may be an object store (``s3://bucket/prefix/``, :mod:`rrsis_cli.store`): the run stages locally
    and uploads each pair as it finishes, the mask last. ``publish`` writes the STAC Items, Catalog, mosaics and
    merged vectors at the end (:mod:`rrsis_cli.publish`; not for a shard: ``rrsis manifest merge --publish``)."""
    from rrsis_cli import distributed, preflight
    from rrsis_cli.models import describe_model, require_weights

    options = options or PredictOptions()
    prompts = unique_prompts(prompts)
    validate_options(options, prompts, cluster, scheduler, split_tiles)
    require_weights(model_spec, options.allow_random_weights)  # a card without weights: refused before any input
    part = distributed.parse_shard(shard) if shard else distributed.shard_from_environment()
    duplicates: list[dict[str, str]] = []
    if stac is not None:
        stac.check()
    scenes = find_scenes(inputs, glob, duplicates, stac)
    if part is not None:
        scenes = distributed.select_shard(scenes, *part)
        console.info(f"shard {part[0]}/{part[1]}: {len(scenes)} scene(s)")
    info = describe_model(model_spec)
    tile = None if info is None else tile_size_for(options, info.image_size, info.input_multiple, info.name)
    headers = preflight.scan_scenes(scenes, options.bands, options.gsd, options.stretch, nodata=options.dry_run,
                                    aoi=scene_aoi(options))
    remote = open_output(out_dir, cluster, scheduler)
    out = remote.staging if remote is not None else Path(out_dir)
    manifest = RunManifest(__version__, str(model_spec), None, list(prompts), asdict(options),
                           shard=None if part is None else f"{part[0]}/{part[1]}", duplicates=duplicates)
    if info is not None:
        manifest.model, manifest.model_sha256 = info.name, info.sha256
        manifest.options["tile_size"] = tile
        console.debug(f"model {info.name} ({info.arch}, sha256 {info.sha256}, input {info.image_size} px, "
                      f"{info.max_tokens} tokens); tile {tile} px")
    if options.dry_run:
        if info is None or tile is None:
            raise ModelError(f"{model_spec!r} is neither a model directory nor a zoo card or architecture")
        return plan_dry_run(manifest, headers, prompts, out, options, info, tile, remote)
    check_output_dir(out)
    if remote is not None:
        remote.check_writable()
    clock = RunClock()
    with distributed.output_lock(out, part, lock_wait):
        try:
            finished = set() if info is None or tile is None or options.overwrite else \
                finished_pairs(scenes, prompts, out, options, info.sha256, tile, remote)
            todo = [s for s in scenes if any((s.path, p) not in finished for p in prompts)]
            running = {s.path for s in todo}
            console.debug(f"{len(finished)} of {len(scenes) * len(prompts)} (scene, prompt) pair(s) already finished; "
                          f"{len(todo)} scene(s) to process")
            for header in headers:
                if header.scene.path not in running:
                    record_skipped(manifest, header, prompts)
            if not todo:
                console.info(f"every (scene, prompt) pair is finished in {out}; the model was not loaded "
                             "(--overwrite recomputes)")
            else:
                check_writers(options)
                if info is not None:
                    from rrsis_cli.models.io import tokenizer_for

                    warn_about_prompts(prompts, tokenizer_for(info.model_dir), info.max_tokens)
                if cluster is None and scheduler is None and len(todo) > 1 and options.device == "auto" and \
                        remote is None:
                    import torch

                    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
                        cluster = "local"  # one worker per GPU, each pinned to its device
                if cluster or scheduler:
                    _predict_with_dask(manifest, clock, todo, model_spec, prompts, out, options, cluster,
                                       scheduler, retries, slurm, split_tiles, tile, headers, in_flight)
                else:
                    _predict_here(manifest, clock, todo, model_spec, prompts, out, options, remote)
                order_by_scene(manifest, scenes)
        except (KeyboardInterrupt, Stopped) as exc:
            code = exc.exit_code if isinstance(exc, Stopped) else EXIT_INTERRUPTED
            mark_interrupted(manifest, scenes, prompts)
            order_by_scene(manifest, scenes)
            finish_manifest(manifest, out, clock.started, clock.km2, manifest_name(part), code)
            if remote is not None:
                try:
                    remote.upload_files(out, [manifest_name(part)], remove=False)
                except OutputError as upload_error:
                    console.warn(upload_error.one_line())
            done = sum(r.status == "done" for r in manifest.results)
            console.warn(f"{'interrupted' if code == EXIT_INTERRUPTED else exc} after {done} pair(s) done; "
                         f"{sum(r.status == 'interrupted' for r in manifest.results)} interrupted pair(s) resume "
                         f"on the next run; manifest in {out / manifest_name(part)}",
                         status="interrupted", exit_code=code)
            raise
        finish_manifest(manifest, out, clock.started, clock.km2, manifest_name(part))
        finish_output(manifest, out, remote, manifest_name(part), publish and part is None)
    if publish and part is not None:
        console.warn(f"--publish skipped for shard {part[0]}/{part[1]}: publish once every shard is done, with "
                     f"`rrsis manifest merge {out_dir} --publish`")
    return manifest


def open_output(out_dir: str | Path, cluster: str | None, scheduler: str | None) -> RemoteOutput | None:
    """The object-store output of ``--out s3://...`` (None for a local folder). Such a run stays in this process:
    dask workers on other hosts would stage in folders this process cannot upload from."""
    from rrsis_cli.store import RemoteOutput, is_remote_output

    if not is_remote_output(out_dir):
        return None
    if cluster or scheduler:
        raise UsageError(f"--out {out_dir}: object-store outputs run in this process; drop --cluster/--scheduler "
                         "(or write to a shared folder and copy)")
    return RemoteOutput.parse(str(out_dir))


def finish_output(manifest: RunManifest, out: Path, remote: RemoteOutput | None, name: str,
                  publish: bool) -> None:
    """After the manifest is written: publish when asked, then upload the manifest (object-store output). A
    failed publication loses no result (every mask is written): it is reported, the run exits 3 and
    ``rrsis publish OUT`` retries it."""
    if publish:
        from rrsis_cli.publish import publish_output

        try:
            publish_output(out, remote)
        except Exception as exc:  # noqa: BLE001 - the masks are written; publishing is derived from them
            reason = exc.one_line() if isinstance(exc, RrsisError) else describe_error(exc)
            console.error(f"publishing failed: {reason}; every mask is written, `rrsis publish "
                          f"{remote.url if remote else out}` retries")
            if manifest.exit_code == EXIT_OK:
                manifest.exit_code = EXIT_PARTIAL
                write_manifest(manifest, out / name)
    if remote is not None:
        remote.upload_files(out, [name], remove=False)  # kept: a later `rrsis publish` reads it


def pair_finished(out: Path, scene: Scene, prompt: str, options: PredictOptions, model_sha: str | None,
                  tile: int, remote: RemoteOutput | None = None) -> bool:
    """True when the pair's ``mask.tif`` proves it is finished with this model and configuration
    (:func:`is_finished`) and its vectors are there (unless ``--no-vectors``; missing vectors are rebuilt).
    With an object-store output (``remote``) both are looked up in the store."""
    target = output_dir(out, scene, prompt)
    vectors = target / f"mask.{VECTOR_DRIVERS[options.vector_format][1]}"
    chash = config_hash(model_sha, scene, prompt, options, tile)
    if remote is not None:
        rel = relative_output_dir(scene, prompt)
        return tags_prove_finished(remote.tags(f"{rel}/mask.tif"), scene, prompt, chash) and \
            (not options.vectors or remote.has(f"{rel}/{vectors.name}"))
    return is_finished(target / "mask.tif", scene, prompt, chash) and (vectors.is_file() or not options.vectors)


def finished_pairs(scenes: list[Scene], prompts: list[str], out: Path, options: PredictOptions, model_sha: str,
                   tile: int, remote: RemoteOutput | None = None) -> set[tuple[Path, str]]:
    """(scene path, prompt) of every finished pair (:func:`pair_finished`): the decision :class:`SceneRunner`
    takes, made from the model's hash alone, before the model is loaded."""
    return {(scene.path, prompt) for scene in scenes for prompt in prompts
            if pair_finished(out, scene, prompt, options, model_sha, tile, remote)}


def log_skipped(result: SceneResult, scene: Scene) -> None:
    console.info(f"{scene.path.name} / {result.prompt!r}: skipped-existing (finished with the same scene, prompt "
                 "and configuration)", **pair_fields(result))


def record_skipped(manifest: RunManifest, header: SceneHeader, prompts: list[str]) -> None:
    """A scene whose every prompt is finished: its header as the input record, ``skipped-existing`` results."""
    manifest.inputs.append(header.record())
    for prompt in prompts:
        result = SceneResult(str(header.scene.path), prompt, "skipped-existing",
                             relative_output_dir(header.scene, prompt))
        manifest.results.append(result)
        log_skipped(result, header.scene)


def order_by_scene(manifest: RunManifest, scenes: list[Scene]) -> None:
    """Inputs and results in input order (stable: prompt order kept within a scene)."""
    order = {str(s.path): i for i, s in enumerate(scenes)}
    manifest.inputs.sort(key=lambda i: order.get(i["path"], len(order)))
    manifest.results.sort(key=lambda r: order.get(r.scene, len(order)))


def plan_dry_run(manifest: RunManifest, headers: list[SceneHeader], prompts: list[str], out: Path,
                 options: PredictOptions, info: ModelInfo, tile: int, remote: RemoteOutput | None = None
                 ) -> RunManifest:
    """The manifest a run would start from, without loading the model or writing anything: per scene (in
    ``inputs``) its size, bands, dtype, CRS, tiles, batch, nodata fraction, finished prompts and a disk estimate
    (:func:`rrsis_cli.preflight.disk_estimate`); per pair (in ``results``) ``dry-run`` or ``skipped-existing``."""
    from rrsis_cli.models.io import tokenizer_for
    from rrsis_cli.preflight import disk_estimate

    finished = set() if options.overwrite else \
        finished_pairs([h.scene for h in headers], prompts, out, options, info.sha256, tile, remote)
    most_tiles = 0
    for header in headers:
        scene = header.scene
        record = header.record()
        if header.error:
            manifest.inputs.append(record)
            manifest.results += [SceneResult(str(scene.path), p, "failed", relative_output_dir(scene, p),
                                             error=f"{scene.path}: {header.error}") for p in prompts]
            continue
        if header.outside_aoi:
            manifest.inputs.append({**record, "aoi": "outside"})
            manifest.results += [SceneResult(str(scene.path), p, "skipped-aoi", relative_output_dir(scene, p))
                                 for p in prompts]
            continue
        width, height = header.processed
        tiles = len(TileGrid.for_scene(height, width, tile, options.overlap))
        most_tiles = max(most_tiles, tiles)
        skipped = [p for p in prompts if (scene.path, p) in finished]
        todo = len(prompts) - len(skipped)
        coarse = (options.coarse_size or info.image_size) if options.save_coarse else None
        record.update(tiles=tiles, batch_size=min(options.batch_size, tiles), nodata_fraction=header.nodata_fraction,
                      prompts_to_run=todo, prompts_finished=skipped,
                      disk_bytes=disk_estimate(width, height, tiles, tile, todo, options.save_prob, coarse))
        manifest.inputs.append(record)
        manifest.results += [SceneResult(str(scene.path), p, "skipped-existing" if p in skipped else "dry-run",
                                         relative_output_dir(scene, p), tiles=0 if p in skipped else tiles)
                             for p in prompts]
    if most_tiles and options.batch_size > most_tiles:
        console.info(f"--batch-size {options.batch_size} is larger than the {most_tiles} tile(s) of the largest "
                     f"scene: batches hold at most {most_tiles} tile(s)")
    if any(r.status == "dry-run" for r in manifest.results):
        check_writers(options)
        warn_about_prompts(prompts, tokenizer_for(info.model_dir), info.max_tokens)
    writable = next((p for p in (out, *out.parents) if p.exists()), None)
    if writable is not None and not (writable.is_dir() and os.access(writable, os.W_OK | os.X_OK)):
        console.warn(f"{out}: the output directory could not be created or written ({writable} is not a writable "
                     "directory)")
    manifest.exit_code = exit_code_for([r.status for r in manifest.results])
    return manifest


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
                  prompts: list[str], out: Path, options: PredictOptions, remote: RemoteOutput | None = None
                  ) -> None:
    """An in-process run, filling ``manifest`` as pairs start and finish (so an interrupted run can write what
    it has); ``clock`` starts once the model is loaded. :func:`finish_manifest` completes the timings. With an
    object-store output each scene's finished pairs are uploaded as the scene ends."""
    runner = SceneRunner(model_spec, prompts, out, options, remote)
    manifest.model, manifest.model_sha256 = str(runner.model.config.get("name")), runner.model.sha256
    manifest.options["tile_size"] = runner.tile
    clock.started = time.perf_counter()
    # one scene's outputs are written (COG, overviews, vectors) while the next scene's tiles run; with an
    # object-store output each scene is written inline, so that its finished pairs are uploaded as it ends
    writer = BackgroundWriter(depth=len(prompts) + 1) if remote is None else None
    if writer is not None:
        writer.submit(warm_up_writer)
    stopped = True
    try:
        with console.progress_bar(len(scenes), "scenes", unit="scene") as bar:
            for scene in scenes:
                record, _, km2 = runner.run(scene, manifest.results, writer)
                if remote is not None:  # written inline (no writer): the scene's pairs are final here
                    remote.upload_results(out, [r for r in manifest.results if r.scene == str(scene.path)])
                manifest.inputs.append(record)
                clock.km2 += km2
                bar.update(1)
        if writer is not None:
            writer.close()
        stopped = False
    finally:
        if writer is not None and stopped:  # interrupted or failed: the pair being written finishes, the queued
            writer.close(stop=True)         # ones are dropped
        clock.km2 += 0.0 if writer is None else writer.km2
        manifest.encoder_calls = runner.texts.calls


def warm_up_writer() -> None:
    """Import the COG writer (rio-cogeo and what it imports: 0.1–0.3 s) in the writer thread while the first
    scene's tiles run, rather than on the first write."""
    import rio_cogeo.cogeo  # noqa: F401


def _predict_with_dask(manifest: RunManifest, clock: RunClock, scenes: list[Scene], model_spec: str,
                       prompts: list[str], out: Path, options: PredictOptions, cluster: str | None,
                       scheduler: str | None, retries: int, slurm: dict[str, Any] | None, split_tiles: int = 0,
                       tile: int | None = None, headers: list[SceneHeader] | None = None,
                       in_flight: int | None = None) -> None:
    """A dask run (the clock includes cluster start-up): one task per scene (all its prompts), or for a scene of
    more than ``split_tiles`` tiles one window task per range of tile rows (:func:`window_plan`) and, once they
    are all done, one task that finishes the scene (assembles the journaled bands, writes the outputs). Tasks are
    submitted as results come back, at most ``in_flight`` at a time (default: 2 per worker thread), and ``manifest`` is
    filled as scenes finish and ordered by input at the end; :func:`finish_manifest` completes the timings."""
    from rrsis_cli import distributed

    manifest.options.update(cluster=cluster, scheduler=scheduler, retries=retries, split_tiles=split_tiles)
    common = (model_spec, list(prompts), str(out), asdict(options))
    sizes = {h.scene.path: h.processed for h in headers or [] if not h.error}
    plans = {i: window_plan(sizes.get(scene.path), tile, options, split_tiles) for i, scene in enumerate(scenes)}
    queue = scene_tasks(scenes, plans, common)
    windows: dict[int, list[dict[str, Any]]] = {i: [] for i, plan in plans.items() if plan}  # outcomes so far
    if windows:
        console.info(f"{len(windows)} scene(s) of more than {split_tiles} tiles split into "
                     f"{sum(len(p) for p in plans.values())} window task(s)")

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
        with console.progress_bar(len(scenes), "scenes", unit="scene") as bar:
            for task, result, error in distributed.stream_tasks(client, queue, retries, in_flight):
                kind, i = task.tag
                scene = scenes[i]
                if kind == "window":
                    windows[i].append(result if error is None else {"error": task_error(scene, task, error)})
                    if len(windows[i]) < len(plans[i]):
                        continue
                    failed = [w["error"] for w in windows[i] if w.get("error")]
                    if not failed:  # every band is journaled: the scene's finishing task runs next
                        queue.appendleft(distributed.Task(f"rrsis-finish-{i}-{scene.path.stem}", run_scene_task,
                                                          (scene, *common), ("finish", i)))
                        continue
                    console.error(failed[0])
                    outcome = failed_outcome(scene, prompts, failed[0])
                elif error is not None:
                    outcome = failed_outcome(scene, prompts, task_error(scene, task, error))
                    console.error(outcome["record"]["error"])
                else:
                    outcome = result
                if kind == "finish":
                    merge_windows(outcome, windows.pop(i), sizes.get(scene.path), tile, options)
                record(outcome)
                bar.update(1)
        if cluster is not None and client.cluster is not None:
            client.cluster.close()
    order_by_scene(manifest, scenes)


def scene_tasks(scenes: list[Scene], plans: dict[int, list[tuple[int, int]]], common: tuple) -> deque:
    """The dask tasks of the scenes in input order: one per scene, or one per window of its plan. ``common``:
    (model spec, prompts, output directory, options as a dict)."""
    from rrsis_cli.distributed import Task

    queue: deque = deque()
    for i, scene in enumerate(scenes):
        if plans[i]:
            queue += [Task(f"rrsis-window-{i}-{first}-{last}-{scene.path.stem}", run_window_task,
                           (scene, [first, last], *common), ("window", i)) for first, last in plans[i]]
        else:
            queue.append(Task(f"rrsis-scene-{i}-{scene.path.stem}", run_scene_task, (scene, *common),
                              ("scene", i)))
    return queue


def window_plan(size: tuple[int, int] | None, tile: int | None, options: PredictOptions,
                split_tiles: int) -> list[tuple[int, int]]:
    """Tile-row ranges of the window tasks of a scene of ``size`` (width, height): empty (one task for the scene)
    without a split rule, a size or a tile, with scene grounding (its coarse pass chooses tiles over the whole
    scene), and for scenes of at most ``split_tiles`` tiles (:func:`rrsis_cli.tiling.window_rows`)."""
    if not split_tiles or size is None or tile is None or options.grounding != "tiles":
        return []
    width, height = size
    return window_rows(TileGrid.for_scene(height, width, tile, options.overlap), split_tiles)


def task_error(scene: Scene, task, error: BaseException) -> str:
    """The one-line error of a task that could not finish (its worker died ``retries`` + 1 times, ...)."""
    where = "" if task.tag[0] != "window" else f" (window task, tile rows {task.args[1][0]}-{task.args[1][1]})"
    return f"{scene.path}{where}: {type(error).__name__}: {error}"


def failed_outcome(scene: Scene, prompts: list[str], message: str) -> dict[str, Any]:
    """The task outcome of a scene that could not be processed: every prompt failed with ``message``."""
    return {"record": {**scene.as_dict(), "error": message}, "km2": 0.0, "encoder_calls": 0,
            "results": [asdict(SceneResult(str(scene.path), p, "failed", relative_output_dir(scene, p),
                                           error=message)) for p in prompts]}


def window_counts(result: SceneResult, pair) -> dict[str, Any]:
    """What a window task did for one pair: tiles run (the overlap rows above its range included), resumed and
    nodata, tiles read, row bands written and found journaled, seconds per stage."""
    journal = pair.journal
    resumed = pair.tiles_resumed // len(journal.grid.cols)
    return {"tiles": result.tiles, "tiles_resumed": result.tiles_resumed,
            "tiles_skipped_nodata": result.tiles_skipped_nodata,
            "tiles_read": int(round((result.reads_per_tile or 0.0) * len(journal.grid))),
            "bands_resumed": resumed, "bands_written": journal.finished + 1 - journal.first - resumed,
            "seconds": dict(result.seconds)}


def merge_windows(outcome: dict[str, Any], windows: list[dict[str, Any]], size: tuple[int, int] | None,
                  tile: int | None, options: PredictOptions) -> None:
    """Fold the window tasks' counts into the finishing task's results (which ran no tile): tiles run, resumed
    and nodata summed over the windows, reads per tile of the grid, seconds per stage added, and
    ``windows = {tasks, bands_written, bands_resumed}``."""
    outcome["encoder_calls"] += sum(w.get("encoder_calls", 0) for w in windows)
    grid_tiles = len(TileGrid.for_scene(size[1], size[0], tile, options.overlap)) if size and tile else 0
    for result in outcome["results"]:
        counts = [w["pairs"][result["prompt"]] for w in windows if result["prompt"] in w.get("pairs", {})]
        if not counts:  # finished or re-thresholded: no window ran it
            continue
        for key in ("tiles", "tiles_resumed", "tiles_skipped_nodata"):
            result[key] = sum(c[key] for c in counts)
        result["reads_per_tile"] = sum(c["tiles_read"] for c in counts) / max(1, grid_tiles)
        seconds = dict(result["seconds"])
        for c in counts:
            for stage, value in c["seconds"].items():
                seconds[stage] = seconds.get(stage, 0.0) + value
        result["seconds"] = seconds
        result["windows"] = {"tasks": len(windows), "bands_written": sum(c["bands_written"] for c in counts),
                             "bands_resumed": sum(c["bands_resumed"] for c in counts)}


# ------------------------------------------------------------------------------------------------ dask tasks
def worker_runner(model_spec: str, prompts: list[str], out: str, options: dict) -> SceneRunner:
    """This worker's :class:`SceneRunner` for the run (model loaded once per worker process, on the worker's
    own GPU with ``--device auto``: :func:`rrsis_cli.distributed.worker_device`)."""
    import torch

    from rrsis_cli.distributed import worker_cached, worker_device

    torch.set_num_threads(max(1, int(os.environ.get("RRSIS_WORKER_THREADS", "1"))))

    def build() -> SceneRunner:
        return SceneRunner(model_spec, prompts, Path(out),
                           PredictOptions(**{**options, "device": worker_device(options["device"])}))

    return worker_cached(["predict", model_spec, prompts, out, options], build)


def task_scene(scene: Scene | dict) -> Scene:
    """The scene of a dask task: the client sends the :class:`Scene` itself (a remote scene's dict shows its URL
    redacted, which a worker could not open); a dict (:meth:`Scene.as_dict`) is accepted too."""
    return scene if isinstance(scene, Scene) else Scene.from_dict(scene)


def run_scene_task(scene: Scene | dict, model_spec: str, prompts: list[str], out: str, options: dict) -> dict[str, Any]:
    """The dask task of a whole scene, and of a scene whose window tasks are all done
    (its journals complete: the outputs are assembled and written, no tile runs)."""
    runner = worker_runner(model_spec, prompts, out, options)
    calls_before = runner.texts.calls
    record, results, km2 = runner.run(task_scene(scene))
    return {"record": record, "results": [asdict(r) for r in results], "km2": km2,
            "encoder_calls": runner.texts.calls - calls_before, "model": str(runner.model.config.get("name")),
            "model_sha256": runner.model.sha256, "tile_size": runner.tile}


def run_window_task(scene: Scene | dict, tile_rows: list[int], model_spec: str, prompts: list[str], out: str,
                    options: dict) -> dict[str, Any]:
    """The dask task of one window of a split scene (:meth:`SceneRunner.run_window`)."""
    runner = worker_runner(model_spec, prompts, out, options)
    return runner.run_window(task_scene(scene), (int(tile_rows[0]), int(tile_rows[1])))

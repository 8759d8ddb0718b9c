"""A pair's outputs: the mask and probability rasters assembled from its journal (or re-thresholded from an
existing ``prob.tif``), then ``prob.tif``, the vectors and ``mask.tif`` written under temporary names and moved
into place, ``mask.tif`` last."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli.inputs import Scene
from rrsis_cli.outputs import mask_profile, to_cog
from rrsis_cli.pipeline import assemble, mask_from_probability, start_beside
from rrsis_cli.predict.coarse import coarse_fusion, report_grounding
from rrsis_cli.predict.finished import output_tags
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import PairJob, SceneResult
from rrsis_cli.scene import SceneReader
from rrsis_cli.vectors import VECTOR_DRIVERS, vectorise


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


def work_profile(reader: SceneReader) -> dict[str, Any]:
    """The profile of the mask and probability rasters in the work directory: the output profile with DEFLATE's
    fastest level (they are read once or twice, by the COG and vector writers, and deleted: level 6 cost 3x the
    time for little less scratch disk). The COGs are compressed as before: their bytes do not depend on it."""
    return {**mask_profile(reader), "zlevel": 1}


def write_pair(reader: SceneReader, model, scene: Scene, job: PairJob, pair, options: PredictOptions,
               tile: int, threads: int = 1) -> None:
    """The mask and probability rasters of a pair from its journal, then its outputs (COGs, vectors; ``threads``:
    see :func:`write_outputs`)."""
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
                  output_tags(model, scene, job.prompt, options, tile), job.result, options.save_prob, extra,
                  threads)
    job.result.status = "done"


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


def _prob_hash_of(path: Path) -> str | None:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.tags().get("rrsis_prob_hash")
    except rasterio.errors.RasterioIOError:
        return None


def write_outputs(mask_raw: Path, prob_raw: Path, out_dir: Path, work: Path, prompt: str, options: PredictOptions,
                  tags: dict[str, str], result: SceneResult, save_prob: bool,
                  extra: dict[str, Path] | None = None, threads: int = 1) -> None:
    """Write a pair's outputs (``prob.tif`` when ``save_prob``, the vectors unless ``--no-vectors``,
    ``mask.tif``) into ``work/out``, then move them, and the ``extra`` files already written, into ``out_dir``.
    ``mask.tif`` moves last: its presence (with its configuration hash) marks the pair finished; just before it,
    vectors of an earlier mask (other formats, or all with ``--no-vectors``) and a ``prob.tif`` of another
    configuration are removed, so the directory only describes the new mask. Anything that fails leaves
    nothing at the final paths.

    ``threads`` > 1 (the finishing task of a split scene, whose other workers idle): the COGs are compressed in
    that many GDAL threads and written in a thread of their own while the vectors are made; the files are the
    same bytes as with ``threads=1`` (each is written alone, from the same rasters)."""
    stage = work / "out"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    prob_tags = {**tags, "values": "probability x 254, 255 nodata"}
    rasters = None
    try:
        moves = list((extra or {}).items())
        if save_prob:
            moves.append(("prob", stage / "prob.tif"))

        def write_rasters() -> None:  # prob.tif (when asked for) and mask.tif, into the stage
            started = time.perf_counter()
            if save_prob:
                to_cog(prob_raw, stage / "prob.tif", prob_tags, threads)
            to_cog(mask_raw, stage / "mask.tif", tags, threads)
            result.seconds["write"] = time.perf_counter() - started

        rasters = start_beside(write_rasters) if threads > 1 and options.vectors else None
        if rasters is None:
            write_rasters()
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
                    to_cog(prob_raw, stage / "prob.tif", prob_tags, threads)
                    moves.append(("prob", stage / "prob.tif"))
                    save_prob = True
            result.seconds["vectorise"] = time.perf_counter() - started
        if rasters is not None:
            rasters.result()  # the COGs written beside the vectors (their error, if any, raised here)
        started = time.perf_counter()
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
        if rasters is not None:
            rasters.exception()  # an error elsewhere: the stage is removed once the COG thread is done with it
        shutil.rmtree(stage, ignore_errors=True)

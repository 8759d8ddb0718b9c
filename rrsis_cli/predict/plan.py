"""``--dry-run``: the manifest a run would start from, from the scenes' headers and the model's description,
without loading the model or writing anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rrsis_cli import console
from rrsis_cli.inputs import relative_output_dir
from rrsis_cli.manifest import exit_code_for
from rrsis_cli.models.info import ModelInfo
from rrsis_cli.predict.finished import finished_pairs
from rrsis_cli.predict.options import PredictOptions, check_writers, warn_about_prompts
from rrsis_cli.predict.records import RunManifest, SceneResult
from rrsis_cli.tiling import TileGrid

if TYPE_CHECKING:
    from rrsis_cli.preflight import SceneHeader
    from rrsis_cli.store import RemoteOutput


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

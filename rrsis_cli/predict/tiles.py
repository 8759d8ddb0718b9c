"""The tiles of one or more (scene, prompt) pairs: text features once per prompt (:class:`TextCache`), the
device, and :func:`run_tiles`, which reads each batch once for every prompt, runs the model and journals the
blended row bands (:func:`rrsis_cli.pipeline.run_pairs`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rrsis_cli import console
from rrsis_cli.errors import UsageError
from rrsis_cli.inputs import Scene
from rrsis_cli.pipeline import new_pair, run_pairs
from rrsis_cli.predict.coarse import ground_scene
from rrsis_cli.predict.finished import config_hash
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import PairJob
from rrsis_cli.scene import SceneReader
from rrsis_cli.tiling import TileGrid

if TYPE_CHECKING:
    import torch


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

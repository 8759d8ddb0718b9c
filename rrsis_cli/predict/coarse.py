"""Scene grounding in a pair's run (:mod:`rrsis_cli.grounding` does the work): the coarse pass and the tiles it
leaves to refine, its record in the manifest, and the fusion of coarse and fine probabilities when the pair is
assembled."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rrsis_cli import console
from rrsis_cli.errors import UsageError
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import SceneResult
from rrsis_cli.scene import SceneReader
from rrsis_cli.tiling import TileGrid

if TYPE_CHECKING:
    import torch


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
        "tiles_refined_fraction": round(refined / max(len(grid), 1), 4), "context": coarse.context, "notes": notes,
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


def coarse_fusion(coarse, options: PredictOptions):
    """``fuse(fine, covered, row0, row1, col0, col1) -> (probability, keep)`` of a block with scene grounding: the
    fine probability fused with the coarse levels (:meth:`rrsis_cli.grounding.CoarseGrounding.fuse_block`)."""
    def fuse_block(fine, covered, row0, row1, col0, col1):
        return coarse.fuse_block(fine, covered, row0, row1, col0, col1, options.threshold, options.coarse_weight,
                                 options.coarse_support)

    return fuse_block

"""An in-process run: one :class:`~rrsis_cli.predict.runner.SceneRunner`, the scenes one after the other, each
scene's outputs written by a background thread while the next scene's tiles run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rrsis_cli import console
from rrsis_cli.inputs import Scene
from rrsis_cli.pipeline import BackgroundWriter
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import RunClock, RunManifest
from rrsis_cli.predict.runner import SceneRunner

if TYPE_CHECKING:
    from rrsis_cli.store import RemoteOutput


def predict_here(manifest: RunManifest, clock: RunClock, scenes: list[Scene], model_spec: str,
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

"""Processing scenes with one loaded model (:class:`SceneRunner`): per scene, settle each pair that needs no
tiles (dry run, finished, re-thresholded), run the tiles of the others together, then write each pair's outputs;
a window task runs a range of tile rows only. Used in-process and by dask workers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rrsis_cli import console
from rrsis_cli.errors import OutsideAoi, RrsisError
from rrsis_cli.inputs import Scene, output_dir, relative_output_dir, work_dir
from rrsis_cli.models.info import INPUT_MULTIPLE
from rrsis_cli.predict.finished import config_hash, pair_finished, reusable_prob
from rrsis_cli.predict.options import PredictOptions, scene_aoi, tile_size_for
from rrsis_cli.predict.records import PairJob, SceneResult, log_pair, log_skipped
from rrsis_cli.predict.tiles import TextCache, pick_device, run_tiles
from rrsis_cli.predict.write import rethreshold_pair, write_pair
from rrsis_cli.scene import SceneReader, describe_error
from rrsis_cli.tiling import TileGrid
from rrsis_cli.vsi_cache import forget_if_replaced

if TYPE_CHECKING:
    import torch

    from rrsis_cli.store import RemoteOutput


def run_now(step, cleanup: bool = False) -> None:
    """``submit`` for steps run at once, in the calling thread."""
    step()


def compute_pairs(reader: SceneReader, model, texts: TextCache, scene: Scene, jobs: list[PairJob],
                  options: PredictOptions, tile: int, device: torch.device, submit=run_now, threads: int = 1) -> None:
    """Run the tiles of one or more (scene, prompt) pairs together (:func:`run_tiles`), then hand each pair's
    output step to ``submit`` (at once by default; a :class:`~rrsis_cli.pipeline.BackgroundWriter`'s ``submit``
    writes them while the next scene's tiles run). A pair whose outputs fail is marked failed on its own; an error
    in the shared tile loop fails every pair of it. ``threads``: see
    :func:`~rrsis_cli.predict.write.write_outputs`."""
    pairs = run_tiles(reader, model, texts, scene, jobs, options, tile, device)
    for job, pair in zip(jobs, pairs, strict=True):
        submit(lambda job=job, pair=pair: run_for_pair(
            job, scene, lambda: write_pair(reader, model, scene, job, pair, options, tile, threads)))


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


def error_line(scene: Scene, exc: BaseException) -> str:
    """The one-line error of a scene: a project error's own line, else the path and the error described."""
    return exc.one_line() if isinstance(exc, RrsisError) else f"{scene.path}: {describe_error(exc)}"


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


class SceneRunner:
    """Everything needed to process scenes with one loaded model; used in-process and by dask workers (one per
    worker process, so the model is loaded once per worker)."""

    def __init__(self, model_spec: str, prompts: list[str], out: Path, options: PredictOptions,
                 remote: RemoteOutput | None = None):
        from rrsis_cli import pipeline
        from rrsis_cli.models import load_model, random_model, require_weights

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
        if pipeline.heap_bound_pays(self.device, self.model):
            pipeline.bound_heap()  # memory does not grow with the scene's width through heap fragmentation
        config = self.model.config
        self.tile = tile_size_for(options, int(config["image_size"]),
                                  int(config.get("input_multiple", INPUT_MULTIPLE)), str(config.get("name")))
        self.texts = TextCache(self.model)
        self.finish_threads = 1  # threads of a pair's output writing (write_outputs): > 1 in finish_pair only

    def run(self, scene: Scene, results: list[SceneResult] | None = None, writer=None,
            prompts: list[str] | None = None) -> tuple[dict[str, Any], list[SceneResult], float]:
        """(input record for the manifest, one result per prompt, km² processed) for one scene. Results are
        appended to ``results`` as each prompt starts, so an interrupted run still knows the pair in flight.
        ``prompts``: some of the runner's prompts only (default: all of them).

        With ``writer`` (a :class:`~rrsis_cli.pipeline.BackgroundWriter`) the pairs' outputs are written by its
        thread while the caller goes on with the next scene: the results' statuses are final once the writer is
        closed, the scene is closed by the writer after its pairs, and the km² is added to ``writer.km2``
        (0.0 is returned)."""
        options, prompts = self.options, list(self.prompts if prompts is None else prompts)
        results = [] if results is None else results
        forget_if_replaced(scene.path, scene.fingerprint)
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

    def finish_pair(self, scene: Scene, prompt: str, threads: int = 1
                    ) -> tuple[dict[str, Any], list[SceneResult], float]:
        """The finishing task of one (scene, prompt) of a split scene, once its window tasks are done (its journal
        complete: no tile runs): :meth:`run` for that prompt alone, its outputs written with ``threads``
        (:func:`~rrsis_cli.predict.write.write_outputs`), so the prompts of a scene finish on several workers at
        once."""
        self.finish_threads = max(1, int(threads))
        try:
            return self.run(scene, prompts=[prompt])
        finally:
            self.finish_threads = 1

    def run_window(self, scene: Scene, tile_rows: tuple[int, int]) -> dict[str, Any]:
        """A window task: the bands of tile rows ``tile_rows = (first, last)`` of every pair of the scene that
        needs tiles, journaled into the pair's work directory (shared by the scene's window tasks), nothing
        written at the final paths. Returns ``{"tile_rows", "pairs": {prompt: counts}, "encoder_calls",
        "error"}``; the task that finishes the scene (:meth:`run`, once every window is done) writes the outputs."""
        options = self.options
        outcome: dict[str, Any] = {"tile_rows": list(tile_rows), "pairs": {}, "encoder_calls": 0, "error": None}
        calls = self.texts.calls
        forget_if_replaced(scene.path, scene.fingerprint)
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
                              submit, self.finish_threads)
            except Exception as exc:  # noqa: BLE001 - one scene never stops the others
                error = exc.one_line() if isinstance(exc, RrsisError) else f"{scene.path}: {describe_error(exc)}"
                console.error(error)
                for job in group:
                    job.result.status, job.result.error = "failed", error
                    log_pair(job.result, scene)

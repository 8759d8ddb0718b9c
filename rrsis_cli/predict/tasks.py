"""A dask run: the task functions (a whole scene, a window of tile rows of a split scene, the tasks that
finish a split scene, one per prompt), the window plans, and the client side that submits them through
:mod:`rrsis_cli.distributed` (which knows nothing of predict) and folds their outcomes into the manifest.
dask pickles the task functions by reference: workers import them from this module."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrsis_cli import console
from rrsis_cli.inputs import Scene, relative_output_dir
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import RunClock, RunManifest, SceneResult, order_by_scene
from rrsis_cli.predict.runner import SceneRunner
from rrsis_cli.tiling import TileGrid, window_rows

if TYPE_CHECKING:
    from rrsis_cli.preflight import SceneHeader


def predict_with_dask(manifest: RunManifest, clock: RunClock, scenes: list[Scene], model_spec: str,
                       prompts: list[str], out: Path, options: PredictOptions, cluster: str | None,
                       scheduler: str | None, retries: int, slurm: dict[str, Any] | None, split_tiles: int = 0,
                       tile: int | None = None, headers: list[SceneHeader] | None = None,
                       in_flight: int | None = None) -> None:
    """A dask run (the clock includes cluster start-up): one task per scene (all its prompts), or for a scene of
    more than ``split_tiles`` tiles one window task per range of tile rows (:func:`window_plan`) and, once they
    are all done, one finishing task per prompt (assembles the pair's journaled bands, writes its outputs), so the
    prompts finish on several workers at once. Tasks are submitted as results come back, at most ``in_flight`` at
    a time (default: 2 per worker thread), and ``manifest`` is filled as scenes finish and ordered by input at the
    end; :func:`finish_manifest` completes the timings."""
    from rrsis_cli import distributed

    manifest.options.update(cluster=cluster, scheduler=scheduler, retries=retries, split_tiles=split_tiles)
    common = (model_spec, list(prompts), str(out), asdict(options))
    sizes = {h.scene.path: h.processed for h in headers or [] if not h.error}
    plans = {i: window_plan(sizes.get(scene.path), tile, options, split_tiles) for i, scene in enumerate(scenes)}
    queue = scene_tasks(scenes, plans, common)
    windows: dict[int, list[dict[str, Any]]] = {i: [] for i, plan in plans.items() if plan}  # outcomes so far
    finishing: dict[int, dict[int, dict[str, Any]]] = {}  # split scene -> prompt index -> its finishing outcome
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
                kind, i = task.tag[:2]
                scene = scenes[i]
                if kind == "window":
                    windows[i].append(result if error is None else {"error": task_error(scene, task, error)})
                    if len(windows[i]) < len(plans[i]):
                        continue
                    failed = [w["error"] for w in windows[i] if w.get("error")]
                    if not failed:  # every band is journaled: the scene's finishing tasks run next
                        queue.extendleft(reversed(finish_tasks(i, scene, common)))
                        finishing[i] = {}
                        continue
                    console.error(failed[0])
                    outcome = failed_outcome(scene, prompts, failed[0])
                elif kind == "finish":
                    k = task.tag[2]
                    if error is not None:
                        finishing[i][k] = failed_outcome(scene, [prompts[k]], task_error(scene, task, error))
                        console.error(finishing[i][k]["record"]["error"])
                    else:
                        finishing[i][k] = result
                    if len(finishing[i]) < len(prompts):
                        continue
                    done = finishing.pop(i)
                    outcome = scene_outcome([done[k] for k in range(len(prompts))])
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


def finish_tasks(i: int, scene: Scene, common: tuple) -> list:
    """The finishing tasks of split scene ``i`` (tag ``("finish", i, k)``), one per prompt k of ``common``
    (:func:`scene_tasks`)."""
    from rrsis_cli.distributed import Task

    return [Task(f"rrsis-finish-{i}-{k}-{scene.path.stem}", run_pair_finish_task, (scene, prompt, *common),
                 ("finish", i, k)) for k, prompt in enumerate(common[1])]


def scene_outcome(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The outcome of a split scene from its finishing tasks' (one per prompt, in prompt order): their results in
    order, km² and encoder calls added, the scene's record (one without an error when there is one), the model
    of any of them."""
    records = [o["record"] for o in outcomes]
    outcome = {"record": next((r for r in records if "error" not in r), records[0]),
               "results": [r for o in outcomes for r in o["results"]],
               "km2": sum(o["km2"] for o in outcomes), "encoder_calls": sum(o["encoder_calls"] for o in outcomes)}
    ran = next((o for o in outcomes if "model" in o), None)
    if ran is not None:
        outcome.update(model=ran["model"], model_sha256=ran["model_sha256"], tile_size=ran["tile_size"])
    return outcome


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


def task_outcome(runner: SceneRunner, calls_before: int, record: dict[str, Any], results: list[SceneResult],
                 km2: float) -> dict[str, Any]:
    """What a scene or finishing task hands back to the client: the scene's record, its pairs' results, km²,
    the encoder calls it made, and the model the worker runs."""
    return {"record": record, "results": [asdict(r) for r in results], "km2": km2,
            "encoder_calls": runner.texts.calls - calls_before, "model": str(runner.model.config.get("name")),
            "model_sha256": runner.model.sha256, "tile_size": runner.tile}


def run_scene_task(scene: Scene | dict, model_spec: str, prompts: list[str], out: str, options: dict) -> dict[str, Any]:
    """The dask task of a whole scene (all its prompts)."""
    runner = worker_runner(model_spec, prompts, out, options)
    calls_before = runner.texts.calls
    return task_outcome(runner, calls_before, *runner.run(task_scene(scene)))


def run_pair_finish_task(scene: Scene | dict, prompt: str, model_spec: str, prompts: list[str], out: str,
                         options: dict) -> dict[str, Any]:
    """The dask task that finishes one (scene, prompt) of a split scene once its window tasks are done
    (:meth:`SceneRunner.finish_pair`, writing with :func:`rrsis_cli.distributed.output_threads` threads)."""
    from rrsis_cli.distributed import output_threads

    runner = worker_runner(model_spec, prompts, out, options)
    calls_before = runner.texts.calls
    return task_outcome(runner, calls_before, *runner.finish_pair(task_scene(scene), prompt, output_threads()))


def run_window_task(scene: Scene | dict, tile_rows: list[int], model_spec: str, prompts: list[str], out: str,
                    options: dict) -> dict[str, Any]:
    """The dask task of one window of a split scene (:meth:`SceneRunner.run_window`)."""
    runner = worker_runner(model_spec, prompts, out, options)
    return runner.run_window(task_scene(scene), (int(tile_rows[0]), int(tile_rows[1])))

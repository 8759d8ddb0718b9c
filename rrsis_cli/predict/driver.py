""":func:`predict`, the entry point: validate, find the scenes, check their headers, skip finished pairs, then
run the rest in this process (:mod:`~rrsis_cli.predict.local`) or on dask (:mod:`~rrsis_cli.predict.tasks`),
write the manifest, publish and upload."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrsis_cli import __version__, console
from rrsis_cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    ModelError,
    OutputError,
    RrsisError,
    Stopped,
    UsageError,
)
from rrsis_cli.inputs import find_scenes
from rrsis_cli.manifest import manifest_name
from rrsis_cli.predict.finished import finished_pairs
from rrsis_cli.predict.local import predict_here
from rrsis_cli.predict.options import (
    PredictOptions,
    check_writers,
    scene_aoi,
    tile_size_for,
    unique_prompts,
    validate_options,
    warn_about_prompts,
)
from rrsis_cli.predict.plan import plan_dry_run
from rrsis_cli.predict.records import (
    RunClock,
    RunManifest,
    finish_manifest,
    mark_interrupted,
    order_by_scene,
    record_skipped,
    write_manifest,
)
from rrsis_cli.predict.tasks import predict_with_dask
from rrsis_cli.scene import describe_error

if TYPE_CHECKING:
    from rrsis_cli.store import RemoteOutput


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
                    predict_with_dask(manifest, clock, todo, model_spec, prompts, out, options, cluster,
                                       scheduler, retries, slurm, split_tiles, tile, headers, in_flight)
                else:
                    predict_here(manifest, clock, todo, model_spec, prompts, out, options, remote)
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


def check_output_dir(out: Path) -> None:
    """Create ``out`` and fail early (OutputError) when it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".rrsis-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror})", out) from exc

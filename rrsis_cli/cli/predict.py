"""``rrsis predict``: segment what each prompt refers to in every scene; the dry-run plan table.

The options' defaults come from :class:`~rrsis_cli.predict.PredictOptions` and :func:`~rrsis_cli.predict.predict`
themselves, so ``--help`` never drifts from what a run does. A value the user does not give is left to
``--config``, then to these defaults (:func:`~rrsis_cli.cli.base.given_by_user`).
"""

from __future__ import annotations

import inspect
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rrsis_cli import console
from rrsis_cli import predict as predict_module
from rrsis_cli.cli.base import EXIT_CODES_HELP, given_by_user, option_values
from rrsis_cli.cli.options import (
    ConfigOption,
    DeviceOption,
    PrecisionOption,
    batch_size_option,
    parse_bands,
    parse_stretch,
    random_weights_option,
)
from rrsis_cli.predict import PredictOptions, RunManifest

EPILOG = EXIT_CODES_HELP


class VectorFormat(str, Enum):
    geojson = "geojson"
    gpkg = "gpkg"
    parquet = "parquet"
    fgb = "fgb"


PREDICT_DEFAULTS = PredictOptions()
PREDICT_RUN_DEFAULTS = {name: p.default for name, p in inspect.signature(predict_module.predict).parameters.items()}
OPTION_FIELDS = ("tile_size", "overlap", "batch_size", "device", "precision", "threshold", "gsd", "save_prob",
                 "vectors", "vector_format", "min_area", "simplify", "overwrite", "dry_run", "grounding",
                 "coarse_size", "coarse_weight", "refine_margin", "save_coarse", "allow_random_weights",
                 "rpc_height", "read_workers", "compile_model", "min_object_size", "aoi")
STAC_PANEL = "Remote and STAC inputs"


def predict(
    ctx: typer.Context,
    inputs: Annotated[list[str] | None, typer.Argument(
        help="GeoTIFF/VRT files, folders (recursive), .txt lists, URLs (https://, s3://, gs://, az://, /vsi…/; a "
             "prefix ending in / is listed like a folder) or STAC .json files (Item, ItemCollection, Catalog).",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model directory, bundled model (demo) or zoo "
                                              "card with weights (see `rrsis models list`).")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output directory: OUT/<scene key>/<prompt key>/ per pair "
                                             "(the manifest maps each pair to its folder), or s3://bucket/prefix/ "
                                             "(staged locally, uploaded pair by pair, mask last).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Referring expression (repeatable; "
                                                     "quote it).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="File with one prompt per line (blank lines and # "
                                                      "comments ignored, repeats dropped).")] = None,
    tile_size: Annotated[int | None, typer.Option(help="Tile side in pixels, a multiple of 32.",
                                                  show_default="the model's input size",
                                                  rich_help_panel="Tiling")] = PREDICT_DEFAULTS.tile_size,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction, in [0, 1).",
                                           rich_help_panel="Tiling")] = PREDICT_DEFAULTS.overlap,
    batch_size: Annotated[int, batch_size_option("Tiles")] = PREDICT_DEFAULTS.batch_size,
    device: DeviceOption = PREDICT_DEFAULTS.device,
    precision: PrecisionOption = PREDICT_DEFAULTS.precision,
    read_workers: Annotated[int | None, typer.Option(help="Threads reading and decoding tiles.",
                                                     show_default="the core count, 2 to 4",
                                                     rich_help_panel="Compute")] = PREDICT_DEFAULTS.read_workers,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (CUDA; falls back to "
                                                "eager when compilation fails).",
                                                rich_help_panel="Compute")] = PREDICT_DEFAULTS.compile_model,
    threshold: Annotated[float, typer.Option(help="Probability threshold for the mask, in (0, 1).")
                         ] = PREDICT_DEFAULTS.threshold,
    bands: Annotated[str | None, typer.Option(help="Bands to use as RGB, e.g. 3,2,1 (or one band, grey).",
                                              show_default="the first three", rich_help_panel="Input")] = None,
    gsd: Annotated[float | None, typer.Option(help="Resample to this ground sample distance (m/pixel) before "
                                              "tiling; outputs are on the resampled grid.",
                                              show_default="no resampling", rich_help_panel="Input")] = None,
    rpc_height: Annotated[float | None, typer.Option(help="Scenes georeferenced by RPCs: constant terrain height "
                                                     "(m above the WGS 84 ellipsoid).",
                                                     show_default="the RPCs' HEIGHT_OFF",
                                                     rich_help_panel="Input")] = None,
    rpc_dem: Annotated[Path | None, typer.Option(help="Scenes georeferenced by RPCs: DEM with heights above the "
                                                 "ellipsoid (GDAL's RPC_DEM; the scene is warped once to a "
                                                 "temporary GeoTIFF).", show_default="none: a constant height",
                                                 rich_help_panel="Input")] = None,
    stretch: Annotated[str | None, typer.Option(help="Fixed value range per band: LOW,LOW,LOW:HIGH,HIGH,HIGH.",
                                                show_default="the scene's 2-98 % per band; uint8 /255",
                                                rich_help_panel="Input")] = None,
    glob: Annotated[str | None, typer.Option(help="Pattern for folder inputs.", show_default="*.tif *.tiff *.vrt",
                                             rich_help_panel="Input")] = None,
    aoi: Annotated[str | None, typer.Option(
        help="Area of interest: a GeoJSON file or minx,miny,maxx,maxy[,CRS] (lon/lat without CRS). Each scene is "
             "processed and written only in the AOI's window; scenes it misses are skipped.",
        show_default="whole scenes", rich_help_panel="Input")] = None,
    asset: Annotated[str | None, typer.Option(help="STAC inputs: the asset to read.", show_default="visual",
                                              rich_help_panel=STAC_PANEL)] = None,
    stac_bands: Annotated[str | None, typer.Option(
        help="STAC inputs: stack single-band assets by eo:bands common name, e.g. red,green,blue (in-memory VRT).",
        show_default="one asset (--asset)", rich_help_panel=STAC_PANEL)] = None,
    stac_search: Annotated[str | None, typer.Option(help="STAC API to search (its root URL); the items found are "
                                                    "scenes.", show_default="no search",
                                                    rich_help_panel=STAC_PANEL)] = None,
    collections: Annotated[str | None, typer.Option(help="--stac-search: collection ids, comma-separated.",
                                                    show_default="all", rich_help_panel=STAC_PANEL)] = None,
    bbox: Annotated[str | None, typer.Option(help="--stac-search: minx,miny,maxx,maxy in lon/lat.",
                                             show_default="the --aoi's box, else none",
                                             rich_help_panel=STAC_PANEL)] = None,
    datetime: Annotated[str | None, typer.Option(help="--stac-search: a date, time or interval (RFC 3339, "
                                                 "e.g. 2024-06-01/2024-06-30).", show_default="any",
                                                 rich_help_panel=STAC_PANEL)] = None,
    max_items: Annotated[int | None, typer.Option(help="--stac-search: at most this many items.",
                                                  show_default="all", rich_help_panel=STAC_PANEL)] = None,
    save_prob: Annotated[bool, typer.Option("--save-prob", help="Also write prob.tif (uint8 0-254).",
                                            rich_help_panel="Output")] = PREDICT_DEFAULTS.save_prob,
    vector_format: Annotated[VectorFormat, typer.Option(
        help="Vector output format: geojson (RFC 7946, EPSG:4326), gpkg, fgb or parquet (GeoParquet), the "
             "last three in the scene's CRS.", rich_help_panel="Output")] = VectorFormat(PREDICT_DEFAULTS.vector_format),
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors", help="Vectorise the mask; --no-vectors writes "
                                          "mask.tif (and prob.tif) only.", rich_help_panel="Output")
                       ] = PREDICT_DEFAULTS.vectors,
    min_area: Annotated[float, typer.Option(help="Drop polygons smaller than this (m²).",
                                            rich_help_panel="Output")] = PREDICT_DEFAULTS.min_area,
    simplify: Annotated[float, typer.Option(help="Simplify polygons with this tolerance (m).",
                                            rich_help_panel="Output")] = PREDICT_DEFAULTS.simplify,
    publish: Annotated[bool, typer.Option("--publish", help="At the end, write a STAC catalog (OUT/catalog.json, an "
                                          "item.json per pair), per-prompt VRT mosaics and merged vectors "
                                          "(OUT/mosaic/).", rich_help_panel="Output")
                         ] = PREDICT_RUN_DEFAULTS["publish"],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute outputs that exist.",
                                            rich_help_panel="Output")] = PREDICT_DEFAULTS.overwrite,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (scenes, sizes, tiles, nodata, outputs "
                                          "that would be skipped, disk needed); load no model, write nothing.")
                       ] = PREDICT_DEFAULTS.dry_run,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON (also with "
                                          "--log-format json).")] = False,
    grounding: Annotated[str, typer.Option(
        help="tiles: every tile judged alone (all instances); scene: coarse pass over the whole scene picks the "
             "referent, then only windows around it are refined.", rich_help_panel="Grounding")
        ] = PREDICT_DEFAULTS.grounding,
    coarse_size: Annotated[int | None, typer.Option(help="One coarse view of this side (a multiple of 32) over the "
                                                    "whole scene instead of the pyramid of coarse scales chosen "
                                                    "from the scene and the model.",
                                                    show_default="the pyramid",
                                                    rich_help_panel="Grounding")] = PREDICT_DEFAULTS.coarse_size,
    coarse_weight: Annotated[float, typer.Option(help="Weight of the coarse probability in refined windows.",
                                                 rich_help_panel="Grounding")] = PREDICT_DEFAULTS.coarse_weight,
    refine_margin: Annotated[float, typer.Option(help="Window margin around each candidate, as a fraction of its "
                                                 "size.", rich_help_panel="Grounding")] = PREDICT_DEFAULTS.refine_margin,
    save_coarse: Annotated[bool, typer.Option("--save-coarse", help="Also write coarse.tif (--grounding scene; one "
                                              "band per coarse level).",
                                              rich_help_panel="Grounding")] = PREDICT_DEFAULTS.save_coarse,
    min_object_size: Annotated[float | None, typer.Option(
        help="Smallest referent in pixels (scene grounding).",
        show_default="the model's limit",
        rich_help_panel="Grounding")] = PREDICT_DEFAULTS.min_object_size,
    allow_random_weights: Annotated[bool, random_weights_option()] = PREDICT_DEFAULTS.allow_random_weights,
    cluster: Annotated[str | None, typer.Option(help="Run scenes on dask workers: local (one per GPU, else half "
                                                "the cores), local:N, slurm.",
                                                show_default="in this process", rich_help_panel="Scale-out")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing dask scheduler (tcp://HOST:PORT); "
                                                  "excludes --cluster.", rich_help_panel="Scale-out")] = None,
    shard: Annotated[str | None, typer.Option(help="Process shard I of N (0-based I/N) of the scenes.",
                                              show_default="SLURM_ARRAY_TASK_ID/COUNT in a job array, else all",
                                              rich_help_panel="Scale-out")] = None,
    retries: Annotated[int, typer.Option(help="Times a scene is retried after its dask worker dies.",
                                         rich_help_panel="Scale-out")] = PREDICT_RUN_DEFAULTS["retries"],
    split_tiles: Annotated[int, typer.Option(help="On dask: split scenes of more than N tiles into window tasks of "
                                             "about N tiles (tile rows) that run on any worker; 0: never.",
                                             rich_help_panel="Scale-out")] = PREDICT_RUN_DEFAULTS["split_tiles"],
    lock_wait: Annotated[float, typer.Option(help="Seconds to wait for another run writing to OUT.",
                                             rich_help_panel="Scale-out")] = PREDICT_RUN_DEFAULTS["lock_wait"],
    slurm_queue: Annotated[str | None, typer.Option(help="SLURM partition.", show_default="dask-jobqueue config",
                                                    rich_help_panel="SLURM")] = None,
    slurm_account: Annotated[str | None, typer.Option(help="SLURM account.", show_default="dask-jobqueue config",
                                                      rich_help_panel="SLURM")] = None,
    slurm_walltime: Annotated[str | None, typer.Option(help="Walltime per job, HH:MM:SS.",
                                                       show_default="dask-jobqueue config",
                                                       rich_help_panel="SLURM")] = None,
    slurm_memory: Annotated[str | None, typer.Option(help="Memory per job, e.g. 32GB.",
                                                     show_default="dask-jobqueue config",
                                                     rich_help_panel="SLURM")] = None,
    slurm_gpus: Annotated[int | None, typer.Option(help="GPUs per job (one worker each).", show_default="none",
                                                   rich_help_panel="SLURM")] = None,
    slurm_jobs: Annotated[int | None, typer.Option(help="Number of SLURM jobs to start.", show_default="1",
                                                   rich_help_panel="SLURM")] = None,
    config: ConfigOption = None,
) -> None:
    """Segment the objects each prompt refers to in every scene: COG mask + vectors per (scene, prompt)."""
    values = option_values(locals(), "ctx", "config", "as_json")
    from rrsis_cli.errors import UsageError
    from rrsis_cli.inputs import read_prompts_file
    from rrsis_cli.predict import predict as run_predict
    from rrsis_cli.yaml_config import merge_options

    opts = merge_options(config, given_by_user(ctx, values))
    stac = stac_options(opts)
    missing = [name for name in ("inputs", "model", "out") if not opts.get(name)
               and not (name == "inputs" and stac.search)]
    if missing:
        raise UsageError("missing required: " + ", ".join("INPUT..." if m == "inputs" else "--" + m for m in missing))
    prompts = [opts.pop("prompt")] if isinstance(opts.get("prompt"), str) else list(opts.pop("prompt", None) or [])
    if opts.get("prompts_file"):
        prompts += read_prompts_file(opts.pop("prompts_file"))
    options = PredictOptions(**{k: opts[k] for k in OPTION_FIELDS if opts.get(k) is not None},
                             bands=parse_bands(opts.get("bands")), stretch=parse_stretch(opts.get("stretch")),
                             rpc_dem=str(opts["rpc_dem"]) if opts.get("rpc_dem") else None)
    slurm = {key: opts.get(f"slurm_{key}") for key in ("queue", "account", "walltime", "memory", "gpus", "jobs")}
    given_inputs = opts.get("inputs") or []
    inputs_list = [given_inputs] if isinstance(given_inputs, str | Path) else list(given_inputs)
    from rrsis_cli.signals import stop_on_signals

    with stop_on_signals():  # SIGTERM/SIGHUP: manifest written, lock released, exit 143/129 (see main)
        out_dir = str(opts["out"]) if str(opts["out"]).startswith(("s3://", "gs://", "az://")) else Path(opts["out"])
        manifest = run_predict(inputs_list, opts["model"], prompts, out_dir, options,
                               glob=opts.get("glob"), cluster=opts.get("cluster"), scheduler=opts.get("scheduler"),
                               shard=opts.get("shard"),
                               lock_wait=float(opts.get("lock_wait", PREDICT_RUN_DEFAULTS["lock_wait"])),
                               retries=int(opts.get("retries", PREDICT_RUN_DEFAULTS["retries"])), slurm=slurm,
                               split_tiles=int(opts.get("split_tiles", PREDICT_RUN_DEFAULTS["split_tiles"])),
                               stac=stac, publish=bool(opts.get("publish")))
    counts: dict[str, int] = {}
    for result in manifest.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if options.dry_run:
        print_plan(manifest, as_json or console.SETTINGS.log_format == "json")
        console.info(f"dry run: {len(manifest.inputs)} scene(s) x {len(prompts)} prompt(s): {summary}; no model "
                     f"loaded, nothing written", status="dry-run", exit_code=manifest.exit_code, pairs=counts,
                     scenes=len(manifest.inputs))
        raise typer.Exit(manifest.exit_code)
    console.info(f"{len(manifest.inputs)} scene(s) x {len(prompts)} prompt(s): {summary}"
                 f"; {manifest.tiles_per_second:.1f} tiles/s; manifest in {opts['out']}",
                 status="finished", exit_code=manifest.exit_code, pairs=counts, scenes=len(manifest.inputs),
                 seconds=round(manifest.seconds, 3), tiles_per_second=round(manifest.tiles_per_second, 3))
    raise typer.Exit(manifest.exit_code)


def stac_options(opts: dict[str, Any]):
    """The STAC choices of the command line (:class:`rrsis_cli.stac_inputs.StacOptions`); a search without
    ``--bbox`` takes the lon/lat bounding box of the ``--aoi``, when there is one."""
    from rrsis_cli.stac_inputs import StacOptions, aoi_bbox, parse_bbox, parse_list

    bbox = parse_bbox(opts.get("bbox"))
    if bbox is None and opts.get("stac_search") and opts.get("aoi"):
        bbox = aoi_bbox(str(opts["aoi"]))
    return StacOptions(asset=opts.get("asset"), bands=parse_list(opts.get("stac_bands")),
                       search=opts.get("stac_search"), collections=parse_list(opts.get("collections")), bbox=bbox,
                       datetime=opts.get("datetime"), max_items=opts.get("max_items"))


def crs_cell(row: dict[str, Any]) -> str:
    """The CRS column of the dry-run table; scenes placed by GCPs or RPCs are warped when read."""
    crs = row.get("crs") or "none"
    method = row.get("georeference", "transform")
    return crs if method in ("transform", "none") else f"{method}: {crs} (warped)"


def print_plan(manifest: RunManifest, as_json: bool) -> None:
    """The dry-run plan on stdout: a table, or JSON (``--json`` / ``--log-format json``)."""
    from rrsis_cli.preflight import human_bytes

    rows = manifest.inputs
    totals = {key: sum(r.get("disk_bytes", {}).get(key, 0) for r in rows) for key in ("outputs", "journal")}
    totals["journal"] = max((r.get("disk_bytes", {}).get("journal", 0) for r in rows), default=0)  # one at a time
    if as_json:
        plan = {"dry_run": True, "model": manifest.model, "model_sha256": manifest.model_sha256,
                "tile_size": manifest.options.get("tile_size"), "prompts": manifest.prompts,
                "scenes": rows, "results": [{"scene": r.scene, "prompt": r.prompt, "status": r.status,
                                             "output_dir": r.output_dir, "error": r.error} for r in manifest.results],
                "disk_bytes": {**totals, "total": totals["outputs"] + totals["journal"]}}
        print(json.dumps(plan, indent=2, default=str))
        return
    table = Table(title=f"rrsis predict --dry-run: {manifest.model} (tile {manifest.options.get('tile_size')} px)")
    for column in ("scene", "size", "bands", "dtype", "CRS", "tiles", "nodata", "finished", "disk"):
        table.add_column(column, justify="left" if column in ("scene", "CRS", "dtype") else "right",
                         overflow="fold", min_width=8 if column == "scene" else None)
    names = [r.get("stac_item_id") or str(r["path"]).rstrip("/").rsplit("/", 1)[-1]  # URLs: Path collapses //
             for r in rows]
    for r, name in zip(rows, names, strict=True):
        name = name if names.count(name) == 1 else r["key"]  # keys tell same-named scenes apart
        if "error" in r:
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", f"unreadable: {r['error']}")
            continue
        if r.get("aoi") == "outside":
            table.add_row(name, f"{r['width']}x{r['height']}", "-", r["dtype"], crs_cell(r), "0", "-", "-",
                          "outside --aoi: skipped")
            continue
        size = f"{r['width']}x{r['height']}"
        if (r["processed_width"], r["processed_height"]) != (r["width"], r["height"]):
            size += f" -> {r['processed_width']}x{r['processed_height']}"
        nodata = "-" if r.get("nodata_fraction") is None else f"{100 * r['nodata_fraction']:.1f} %"
        table.add_row(name, size, f"{','.join(map(str, r['bands']))} of {r['band_count']}", r["dtype"],
                      crs_cell(r), str(r["tiles"]), nodata,
                      f"{len(r['prompts_finished'])}/{len(manifest.prompts)}",
                      human_bytes(r["disk_bytes"]["total"]))
    out = console.table_console()
    out.print(table)
    out.print(f"disk: up to {human_bytes(totals['outputs'])} of rasters (before compression; vectors not "
                         f"counted) + {human_bytes(totals['journal'])} of tile journal while a pair runs",
                         markup=False)

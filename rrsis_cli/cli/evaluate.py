"""``rrsis evaluate``: a model (or saved masks) on a dataset split with the official protocol, or scene masks
against ground truth aligned by georeference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rrsis_cli import console
from rrsis_cli.cli.base import EXIT_CODES_HELP
from rrsis_cli.cli.options import DeviceOption, PrecisionOption, batch_size_option, random_weights_option

METRIC_KEYS = ("oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
EPILOG = EXIT_CODES_HELP


def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for metrics.json, CSV and plots.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset format: folder, refsegrs, rrsisd, risbench.",
                                                rich_help_panel="Dataset")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root.", rich_help_panel="Dataset")] = None,
    split: Annotated[str, typer.Option(help="Split to score.", rich_help_panel="Dataset")] = "test",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model directory, bundled model (demo) or zoo "
                                              "card with weights.", rich_help_panel="Dataset")] = None,
    allow_random_weights: Annotated[bool, random_weights_option(rich_help_panel="Dataset")] = False,
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
    batch_size: Annotated[int, batch_size_option("Samples")] = 8,
    device: DeviceOption = "cpu",
    precision: PrecisionOption = "fp32",
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
    choices = {"--protocol": (protocol, ("official", "native")),
               "--empty-union": (empty_union, ("zero", "one", "exclude"))}
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
    if model is not None:  # loaded on the CPU; evaluate_dataset moves it to --device
        loaded = random_model(model) if source.kind == "none" else load_model(model)
    summary = evaluate_dataset(loaded, data, out, protocol=protocol, empty_union=empty_union, strict=strict,
                               batch_size=batch_size, device=device, precision=precision, image_size=image_size,
                               predictions=predictions, save_masks=save_masks, plots=plots)
    print_summary(summary, f"{dataset}:{split} ({summary['n_samples']} samples, {protocol} protocol)")
    console.info(f"wrote {out / 'metrics.json'} and {out / 'per_sample.csv'}")


def print_summary(summary: dict, title: str) -> None:
    """The metrics in percentages: all samples, then per category and per attribute."""
    table = Table(title=title)
    table.add_column("group")
    table.add_column("N", justify="right")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_row("all", str(summary["n_samples"]), *(f"{100 * summary[k]:.2f}" for k in METRIC_KEYS))
    for kind in ("per_category", "per_attribute"):
        for group, values in summary[kind].items():
            table.add_row(group, str(values["n_samples"]), *(f"{100 * values[k]:.2f}" for k in METRIC_KEYS))
    console.stdout.print(table)

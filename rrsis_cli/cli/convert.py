"""``rrsis convert``: an official LAVT-family checkpoint -> an rrsis model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rrsis_cli import console


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



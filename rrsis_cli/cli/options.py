"""Options that several commands take, declared once: compute (--device, --precision, --batch-size), --config,
--allow-random-weights, and the parsers of --bands and --stretch. The global options (--quiet, --debug,
--verbose, --log-format) are in :mod:`rrsis_cli.cli.base`.

Nothing here imports torch: ``rrsis --help`` and ``rrsis models list`` stay fast (tests/test_startup.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rrsis_cli.errors import UsageError

COMPUTE_PANEL = "Compute"
# The values rrsis_cli.inference.resolve_precision takes (that module imports torch; tests/test_cli_options.py
# checks that the two agree).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(value: str | None) -> str | None:
    if value is not None and value not in PRECISIONS:
        raise UsageError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {value!r}")
    return value


DeviceOption = Annotated[str, typer.Option(
    "--device", help="auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N.", rich_help_panel=COMPUTE_PANEL)]
PrecisionOption = Annotated[str, typer.Option(
    "--precision", help="auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16 or fp16 (autocast on CUDA).",
    callback=check_precision, rich_help_panel=COMPUTE_PANEL)]


def batch_size_option(unit: str, **settings: Any) -> Any:
    """``--batch-size``: how many ``unit`` (tiles, samples) one forward pass takes."""
    return typer.Option("--batch-size", help=f"{unit} per forward pass.",
                        **{"rich_help_panel": COMPUTE_PANEL, **settings})


ConfigOption = Annotated[Path | None, typer.Option(help="YAML file with any of these options (flags win).")]


def random_weights_option(**settings: Any) -> Any:
    """``--allow-random-weights`` (predict, evaluate)."""
    return typer.Option("--allow-random-weights", help="Run a zoo card that has no weights with seeded random "
                        "weights (seed 0: the same, meaningless masks on every run), for tests and benchmarks. "
                        "Without it such a card is refused (exit 2).", **settings)


def parse_bands(bands: str | list | None) -> list[int] | None:
    """``--bands 3,2,1`` -> [3, 2, 1] (a list from a --config file passes through)."""
    if bands is None or isinstance(bands, list):
        return bands
    try:
        return [int(b) for b in str(bands).split(",")]
    except ValueError as exc:
        raise UsageError(f"--bands must be comma-separated integers, got {bands!r}") from exc


def parse_stretch(stretch: str | None) -> tuple[list[float], list[float]] | None:
    """``--stretch LOW,LOW,LOW:HIGH,HIGH,HIGH`` -> (lows, highs)."""
    if stretch is None:
        return None
    try:
        low, high = str(stretch).split(":")
        return [float(v) for v in low.split(",")], [float(v) for v in high.split(",")]
    except ValueError as exc:
        raise UsageError(f"--stretch must look like LOW,LOW,LOW:HIGH,HIGH,HIGH, got {stretch!r}") from exc

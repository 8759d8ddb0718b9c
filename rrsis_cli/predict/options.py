"""The options of ``rrsis predict`` (:class:`PredictOptions`) and every check that needs neither a scene's pixels
nor the loaded model: option ranges, prompts, the tile size, the vector writer, ``--aoi``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrsis_cli import console
from rrsis_cli.errors import UsageError
from rrsis_cli.models.info import INPUT_MULTIPLE
from rrsis_cli.vectors import VECTOR_DRIVERS, check_vector_format


@dataclass
class PredictOptions:
    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on the CPU
    threshold: float = 0.5
    bands: list[int] | None = None
    save_prob: bool = False
    vectors: bool = True  # False (--no-vectors): mask (and prob) only, no vectorisation
    vector_format: str = "geojson"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    dry_run: bool = False
    block_size: int = 1024
    gsd: float | None = None
    rpc_height: float | None = None  # RPC scenes: constant height (m above the ellipsoid) [the RPCs' HEIGHT_OFF]
    rpc_dem: str | None = None  # RPC scenes: DEM with heights above the ellipsoid
    stretch: tuple[list[float], list[float]] | None = None
    read_ahead: int = 2
    read_workers: int | None = None  # tile-reading threads; None: from the core count (2..4)
    compile_model: bool = False  # torch.compile the model's forward (falls back to eager)
    grounding: str = "tiles"
    coarse_size: int | None = None
    coarse_weight: float = 0.75
    coarse_support: float = 0.25
    refine_margin: float = 0.5
    save_coarse: bool = False
    allow_random_weights: bool = False  # run a card without weights (seeded random weights, with a warning)
    min_object_size: float | None = None  # scene grounding: smallest referent, px (None: the model's limit)
    aoi: str | None = None  # --aoi: GeoJSON file or minx,miny,maxx,maxy[,CRS] (rrsis_cli.aoi); None: whole scenes


def unique_prompts(prompts: list[str]) -> list[str]:
    """The prompts in order, each exact text once (a repeated prompt would write the same outputs twice)."""
    unique = list(dict.fromkeys(prompts))
    if len(unique) < len(prompts):
        console.warn(f"{len(prompts) - len(unique)} repeated prompt(s) dropped; each prompt runs once")
    return unique


def check_prompts(prompts: list[str]) -> None:
    """UsageError for a prompt that is empty or blank (``--prompt ""``, ``--prompt "$UNSET"``) or that is an
    option name (``--prompt $UNSET --out DIR`` reads ``--out`` as the prompt)."""
    if not prompts:
        raise UsageError("give at least one --prompt (or --prompts-file)")
    for number, prompt in enumerate(prompts, 1):
        where = f"--prompt #{number}" if len(prompts) > 1 else "--prompt"
        if not prompt.strip():
            raise UsageError(f"{where} is empty{' (only whitespace)' if prompt else ''}: an unset shell variable? "
                             "Quote it (--prompt \"$VAR\") and check that it is set")
        if prompt.startswith("--"):
            raise UsageError(f"{where} is {prompt!r}, an option name: the prompt text is missing (an unset shell "
                             "variable without quotes?)")


def _check_range(name: str, value: float | None, low: float, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """UsageError naming ``--name`` when ``value`` (unless None) is not a finite number in the range."""
    if value is None:
        return
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        if high is None:
            bounds = f"{'>' if low_open else '>='} {low:g}"
        else:
            bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UsageError(f"--{name.replace('_', '-')} must be {bounds}, got {value:g}")


def validate_options(options: PredictOptions, prompts: list[str], cluster: str | None = None,
                     scheduler: str | None = None, split_tiles: int = 0) -> None:
    """Every check that needs neither the model nor the scenes (UsageError, exit 2, naming the option). The
    checks that need the model's input size (:func:`tile_size_for`) or a scene's header
    (:mod:`rrsis_cli.preflight`) follow, still before the model loads."""
    check_prompts(prompts)
    if cluster and scheduler:
        raise UsageError("--cluster and --scheduler exclude each other: --cluster starts workers, --scheduler uses "
                         "the workers of a running scheduler")
    if split_tiles < 0:
        raise UsageError(f"--split-tiles must be 0 (never split) or a number of tiles, got {split_tiles}")
    _check_range("overlap", options.overlap, 0, 1, high_open=True)
    if options.vector_format not in VECTOR_DRIVERS:
        raise UsageError(f"--vector-format must be one of {', '.join(VECTOR_DRIVERS)}")
    if options.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, got {options.precision!r}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    _check_range("threshold", options.threshold, 0, 1, low_open=True, high_open=True)
    for name in ("tile_size", "coarse_size"):
        value = getattr(options, name)
        if value is not None and (value <= 0 or value % INPUT_MULTIPLE):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive multiple of {INPUT_MULTIPLE} (the "
                             f"models' stride), got {value}")
    _check_range("gsd", options.gsd, 0, low_open=True)
    _check_range("min_area", options.min_area, 0)
    _check_range("simplify", options.simplify, 0)
    if options.bands is not None:
        if len(options.bands) not in (1, 3) or min(options.bands) < 1:
            raise UsageError("--bands takes 1 band (grey) or 3 bands (red, green, blue), numbered from 1, got "
                             + ",".join(map(str, options.bands)))
    if options.stretch is not None:
        low, high = options.stretch
        if len(low) != len(high) or not low:
            raise UsageError(f"--stretch needs as many LOW as HIGH values, got {len(low)} and {len(high)}")
        if options.bands is not None and len(low) != len(options.bands):
            raise UsageError(f"--stretch gives {len(low)} value(s) per end for {len(options.bands)} --bands")
        if not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in zip(low, high, strict=True)):
            raise UsageError("--stretch needs LOW < HIGH for every band, got "
                             + ", ".join(f"{a:g}:{b:g}" for a, b in zip(low, high, strict=True)))
    if options.grounding not in ("tiles", "scene"):
        raise UsageError(f"--grounding must be tiles or scene, got {options.grounding!r}")
    if options.save_coarse and options.grounding != "scene":
        raise UsageError("--save-coarse writes the coarse map of --grounding scene; it has no effect with "
                         f"--grounding {options.grounding}")
    _check_range("coarse_weight", options.coarse_weight, 0, 1)
    _check_range("coarse_support", options.coarse_support, 0, 1)
    _check_range("refine_margin", options.refine_margin, 0)
    _check_range("min_object_size", options.min_object_size, 0)
    if options.block_size < 1 or options.read_ahead < 1:
        raise UsageError("block_size and read_ahead must be at least 1")
    if options.rpc_dem is not None and not Path(options.rpc_dem).is_file():
        raise UsageError("--rpc-dem: file not found", options.rpc_dem)
    scene_aoi(options)  # UsageError for an --aoi that cannot be read


def check_writers(options: PredictOptions) -> None:
    """UsageError when the writer of ``--vector-format`` is missing: checked once work is known to remain (a run
    whose every pair is finished does not import the vector stack), before the model loads or a tile runs."""
    if options.vectors:
        check_vector_format(options.vector_format)


def tile_size_for(options: PredictOptions, image_size: int, multiple: int = INPUT_MULTIPLE,
                  model: str = "the model") -> int:
    """``--tile-size``, or the model's input size; UsageError unless a multiple of the model's stride."""
    tile = image_size if options.tile_size is None else int(options.tile_size)
    if tile % multiple:
        if options.tile_size is None:
            raise UsageError(f"the input size {image_size} of {model} is not a multiple of {multiple}; give "
                             f"--tile-size")
        raise UsageError(f"--tile-size must be a multiple of {multiple} for {model}, got {tile}")
    return tile


def warn_about_prompts(prompts: list[str], tokenizer, max_tokens: int) -> list[dict[str, Any]]:
    """Warn about prompts the model cannot read whole: longer than ``max_tokens`` (the model reads the first
    ``max_tokens`` tokens, ``[CLS]`` included, and the rest is cut) or without a single token the tokenizer knows
    (every token ``[UNK]``). Tokens are counted without truncation. Returns one record per prompt."""
    records = []
    for prompt in prompts:
        ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        known = [i for i in ids if i != tokenizer.unk_token_id]
        total = len(ids) + 2  # [CLS] ... [SEP]
        records.append({"prompt": prompt, "tokens": total, "unknown": len(ids) - len(known)})
        words = max(0, max_tokens - 1)  # the model reads [CLS] and the first max_tokens - 1 tokens
        if len(ids) > words:
            console.warn(f"prompt {prompt!r} is {total} tokens but the model reads {max_tokens}: "
                         f"{tokenizer.decode(ids[words:])!r} is cut off")
        if not known:
            console.warn(f"prompt {prompt!r} has no word the model's tokenizer knows (every token is [UNK]); "
                         "the model reads it as an empty sentence")
    return records


def scene_aoi(options: PredictOptions):
    """The parsed ``--aoi`` (:func:`rrsis_cli.aoi.parse_aoi`), or None."""
    if options.aoi is None:
        return None
    from rrsis_cli.aoi import parse_aoi

    return parse_aoi(options.aoi)

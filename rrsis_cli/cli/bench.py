"""``rrsis bench``: measure predict on a scene (per-stage times, throughput, memory, ratio to the forward alone),
or the host pipeline alone (``--pipeline``: the null model against the scene's raw read rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rrsis_cli import console
from rrsis_cli.cli.options import DeviceOption, PrecisionOption, batch_size_option

# The real imagery a scene is built from when neither --scene nor --source is given (a source checkout).
BUNDLED_SOURCE = Path(__file__).resolve().parents[2] / "examples" / "data" / "rgbn_5m.tif"


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
    batch_size: Annotated[int, batch_size_option("Tiles")] = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "fp32",
    repeats: Annotated[int, typer.Option(help="Runs; medians are reported.")] = 3,
    forward_tiles: Annotated[int, typer.Option(help="Tiles for the forward-only measurement.")] = 64,
) -> None:
    """Measure predict on a scene: per-stage times, tiles/s, km²/h, peak RSS, ratio to the forward alone."""
    from rrsis_cli.bench import bench as run_bench
    from rrsis_cli.bench import build_scene, pipeline_bench, pipeline_rows, summary_rows
    from rrsis_cli.errors import UsageError

    if scene is None and source is None:
        source = BUNDLED_SOURCE if BUNDLED_SOURCE.exists() else None
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

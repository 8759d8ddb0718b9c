"""``rrsis overlay``: a PNG preview of a scene with its predicted mask (and ground-truth outlines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rrsis_cli import console
from rrsis_cli.cli.options import parse_bands


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
    png = render_overlay(scene, mask, out, gt=gt, max_side=max_side, title=title, bands=parse_bands(bands))
    console.info(f"wrote {png}")



"""``rrsis publish``: STAC Items and Catalog, per-prompt mosaics and merged vectors of a predict output."""

from __future__ import annotations

from typing import Annotated

import typer


def publish(
    out: Annotated[str, typer.Argument(help="Output folder of rrsis predict (with its manifest.json), or "
                                       "s3://bucket/prefix/.", show_default=False)],
) -> None:
    """Write OUT/catalog.json, an item.json per (scene, prompt), OUT/mosaic/<prompt key>/mask-<CRS>.vrt and
    vectors.gpkg from OUT/manifest.json (after `rrsis manifest merge` for the shards of a job array)."""
    from rrsis_cli.publish import publish_folder

    publish_folder(out)

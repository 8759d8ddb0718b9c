"""``rrsis manifest``: run manifests of predict (merging the shards of a job array)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rrsis_cli import console
from rrsis_cli.cli.base import RrsisTyper

app = RrsisTyper(help="Run manifests of predict.", no_args_is_help=True)


@app.command("merge")
def manifest_merge(
    out: Annotated[Path, typer.Argument(help="Output directory holding manifest-shard-I-of-N.json files.")],
    publish: Annotated[bool, typer.Option("--publish", help="Then write the STAC catalog, mosaics and merged "
                                          "vectors of the whole run (as `rrsis publish OUT`).")] = False,
) -> None:
    """Combine the per-shard manifests of a job array into OUT/manifest.json (exit code of the whole run)."""
    from rrsis_cli.manifest import merge_manifests

    merged = merge_manifests(out)
    console.info(f"merged {merged['shards_merged']} shard manifest(s): {len(merged['results'])} result(s), "
                 f"exit code {merged['exit_code']}")
    if publish:
        from rrsis_cli.publish import publish_output

        publish_output(out)
    raise typer.Exit(merged["exit_code"])



"""Writing the raster outputs of ``predict``: Cloud-Optimised GeoTIFF masks (via rio-cogeo). Every file is written
under a temporary name that keeps its extension (GDAL picks drivers and layer names from it) and renamed into
place. Vector polygons of the mask: :mod:`rrsis_cli.vectors`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def temporary_path(path: Path) -> Path:
    """``.mask.tmp.gpkg`` for ``mask.gpkg``: hidden, beside ``path`` (so a rename is atomic), same extension."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def mask_profile(reader, block: int = 512) -> dict[str, Any]:
    ds = reader.ds
    return {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
            "crs": reader.crs, "transform": ds.transform, "nodata": 255, "tiled": True, "blockxsize": block,
            "blockysize": block, "compress": "deflate"}


def to_cog(src: Path, dst: Path, tags: dict[str, str], threads: int = 1) -> None:
    """Translate a tiled GTiff into a COG (DEFLATE, 512 tiles, nearest overviews) at ``dst`` atomically.
    ``threads`` > 1: GDAL compresses the tiles in that many threads (its ``NUM_THREADS`` creation option); the
    file's bytes are the same (each tile is compressed on its own and written in order)."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=512, blockysize=512)
    if threads > 1:
        profile["num_threads"] = int(threads)
    tmp = temporary_path(dst)
    try:
        cog_translate(str(src), str(tmp), profile, overview_resampling="nearest", quiet=True,
                      additional_cog_metadata=tags, use_cog_driver=False, in_memory=False)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)

"""``rrsis overlay``: a PNG preview of a scene with a predicted mask (and optionally ground-truth outlines).

Reads decimated views (``out_shape``; overviews when the files have them), so memory depends on the preview
size, not on the scene size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rrsis_cli.errors import InputError

MASK_RGB = np.array([255, 0, 255], dtype=np.float32)


def _preview_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _stretch(bands: np.ndarray) -> np.ndarray:
    data = bands.astype(np.float32)
    if bands.dtype == np.uint8:
        return data
    valid = data[data > 0] if (data > 0).any() else data.ravel()
    lo, hi = np.percentile(valid, (2, 98))
    return np.clip((data - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255)


def render_overlay(scene: str | Path, mask: str | Path, out_png: str | Path, gt: str | Path | None = None,
                   max_side: int = 1024, alpha: float = 0.6) -> Path:
    """Scene (first three bands) with mask == 1 tinted magenta and ground-truth polygons outlined in yellow."""
    import rasterio
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling

    try:
        with rasterio.open(scene) as src:
            shape = _preview_shape(src.width, src.height, max_side)
            bands = src.read(indexes=list(range(1, min(3, src.count) + 1)), out_shape=(min(3, src.count), *shape),
                             resampling=Resampling.average)
            transform = src.transform * src.transform.scale(src.width / shape[1], src.height / shape[0])
            crs = src.crs
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read scene: {exc}", scene) from exc
    try:
        with rasterio.open(mask) as msrc:
            labels = msrc.read(1, out_shape=shape, resampling=Resampling.nearest)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read mask: {exc}", mask) from exc
    rgb = _stretch(np.repeat(bands[:1], 3, axis=0) if bands.shape[0] < 3 else bands).transpose(1, 2, 0)
    hit = labels == 1
    rgb[hit] = (1 - alpha) * rgb[hit] + alpha * MASK_RGB
    image = Image.fromarray(rgb.astype(np.uint8))
    if gt is not None:
        import geopandas as gpd

        frame = gpd.read_file(gt)
        if crs is not None and frame.crs is not None:
            frame = frame.to_crs(crs)
        draw = ImageDraw.Draw(image)
        inverse = ~transform
        for geom in frame.geometry:
            for poly in getattr(geom, "geoms", [geom]):
                ring = [inverse * xy for xy in poly.exterior.coords]
                draw.line(ring, fill=(255, 230, 0), width=2)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, out_png)
    return out_png

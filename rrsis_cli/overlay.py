"""``rrsis overlay``: a PNG preview of a scene with a predicted mask (and optionally ground-truth outlines).

Reads decimated views (``out_shape``; overviews when the files have them), so memory depends on the preview
size, not on the scene size. The picture is titled with the prompt (the mask's ``prompt`` tag, written by
``rrsis predict``), shows the IoU when ground truth is given (scored at full resolution, as ``rrsis evaluate``
does) and has a legend: prediction (magenta fill) and ground truth (yellow outline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rrsis_cli.errors import InputError, UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MASK_RGB = np.array([255, 0, 255], dtype=np.float32)
MASK_COLOUR = "#ff00ff"
GT_COLOUR = "#ffe600"
PREDICTION_LABEL = "prediction"
GT_LABEL = "ground truth"
DPI = 100


@dataclass
class Preview:
    """The tinted preview image (H, W, 3 uint8) and what the figure needs around it."""

    rgb: np.ndarray
    prompt: str | None
    outlines: list[np.ndarray] | None  # ground-truth rings in preview pixel coordinates (x, y), or None
    iou: float | None


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


def _gt_outlines(gt: str | Path, crs: Any, transform: Any) -> list[np.ndarray]:
    """Exterior and interior rings of the ground-truth polygons, in preview pixel coordinates."""
    import geopandas as gpd

    try:
        frame = gpd.read_file(gt)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types
        raise InputError(f"cannot read ground-truth vectors: {exc}", gt) from exc
    if crs is not None and frame.crs is not None:
        frame = frame.to_crs(crs)
    a, b, c, d, e, f = (~transform)[:6]  # world -> preview pixel (column, row)
    rings = []
    for geom in frame.geometry:
        if geom is None or geom.is_empty:
            continue
        for poly in getattr(geom, "geoms", [geom]):
            for ring in (poly.exterior, *poly.interiors):
                x, y = np.asarray(ring.coords, dtype=np.float64)[:, :2].T
                rings.append(np.stack([a * x + b * y + c, d * x + e * y + f], axis=1))
    return rings


def _mask_on_preview(msrc, crs: Any, transform: Any, scene_bounds: Any, shape: tuple[int, int],
                     mask: str | Path, scene: str | Path) -> np.ndarray:
    """The labels of a mask that is not on the scene's grid (e.g. written with ``--gsd``), warped onto the
    preview grid (nearest, 255 outside the mask). InputError when it does not overlap the scene at all."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    mask_crs = msrc.crs or crs
    if mask_crs is None:
        raise InputError(f"the mask is not on the grid of {scene} and neither has a CRS to align them by", mask)
    bounds = tuple(msrc.bounds)
    if crs is not None and mask_crs != crs:
        bounds = transform_bounds(mask_crs, crs, *bounds)
    left, bottom, right, top = bounds
    if left >= scene_bounds.right or right <= scene_bounds.left or bottom >= scene_bounds.top \
            or top <= scene_bounds.bottom:
        where = f" in {crs}" if crs else ""
        raise InputError(f"the mask does not overlap the scene {scene} (mask bounds "
                         f"{', '.join(f'{v:.6g}' for v in bounds)}; scene bounds "
                         f"{', '.join(f'{v:.6g}' for v in scene_bounds)}{where})", mask)
    with WarpedVRT(msrc, src_crs=mask_crs, crs=crs or mask_crs, transform=transform, width=shape[1],
                   height=shape[0], resampling=Resampling.nearest, nodata=255) as vrt:
        return vrt.read(1)


def read_preview(scene: str | Path, mask: str | Path, gt: str | Path | None = None, max_side: int = 1024,
                 alpha: float = 0.6, bands: list[int] | None = None) -> Preview:
    """Scene (``bands`` as RGB, by default the first three) at most ``max_side`` pixels wide or high, with
    mask == 1 tinted magenta; the mask's prompt tag; with ``gt``, its outlines on the preview grid and the IoU of
    the full-resolution mask. UsageError for bands the scene lacks; InputError for a mask off the scene."""
    import rasterio
    from rasterio.enums import Resampling

    from rrsis_cli import console
    from rrsis_cli.inputs import Scene
    from rrsis_cli.preflight import SceneHeader, band_order_note
    from rrsis_cli.scene import default_bands

    try:
        with rasterio.open(scene) as src:
            indexes = list(bands) if bands else default_bands(src.count)
            if max(indexes) > src.count or min(indexes) < 1:
                raise UsageError(f"--bands {','.join(map(str, indexes))}: the scene has {src.count} band(s)", scene)
            if not bands:
                note = band_order_note(SceneHeader(Scene(Path(scene), "", ""), count=src.count, bands=indexes,
                                                   colorinterp=[c.name for c in src.colorinterp]))
                if note:
                    console.warn(f"{scene}: {note}")
            shape = _preview_shape(src.width, src.height, max_side)
            pixels = src.read(indexes=indexes, out_shape=(len(indexes), *shape), resampling=Resampling.average)
            transform = src.transform * src.transform.scale(src.width / shape[1], src.height / shape[0])
            crs, scene_transform, scene_bounds = src.crs, src.transform, src.bounds
            size = (src.width, src.height)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read scene: {exc}", scene) from exc
    try:
        with rasterio.open(mask) as msrc:
            if msrc.transform == scene_transform and (msrc.width, msrc.height) == size \
                    and (msrc.crs == crs or msrc.crs is None or crs is None):
                labels = msrc.read(1, out_shape=shape, resampling=Resampling.nearest)  # the scene's grid
            else:
                labels = _mask_on_preview(msrc, crs, transform, scene_bounds, shape, mask, scene)
            prompt = msrc.tags().get("prompt") or None
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read mask: {exc}", mask) from exc
    rgb = _stretch(np.repeat(pixels[:1], 3, axis=0) if pixels.shape[0] < 3 else pixels[:3]).transpose(1, 2, 0)
    hit = labels == 1
    rgb[hit] = (1 - alpha) * rgb[hit] + alpha * MASK_RGB
    outlines = iou = None
    if gt is not None:
        from rrsis_cli.evaluate import score_scene

        outlines = _gt_outlines(gt, crs, transform)
        iou = float(score_scene(mask, gt)["IoU"])
    return Preview(rgb=rgb.astype(np.uint8), prompt=prompt, outlines=outlines, iou=iou)


def overlay_figure(scene: str | Path, mask: str | Path, gt: str | Path | None = None, max_side: int = 1024,
                   alpha: float = 0.6, title: str | None = None, bands: list[int] | None = None) -> Figure:
    """The overlay as a matplotlib figure (not attached to pyplot): the preview at its own pixel size, titled
    with ``title`` (default: the mask's prompt, else its file name) and the IoU when ``gt`` is given, and a
    legend below it."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    preview = read_preview(scene, mask, gt=gt, max_side=max_side, alpha=alpha, bands=bands)
    height, width = preview.rgb.shape[:2]
    heading = title or (f"“{preview.prompt}”" if preview.prompt else Path(mask).name)
    if preview.iou is not None:
        heading += f"\nIoU {preview.iou:.4f}"
    # the preview at about its own pixel size, plus room for the padding, the title lines above and the legend
    # below; at least 4 inches wide so the text fits
    fig = Figure(figsize=(max(width / DPI + 0.1, 4.0), height / DPI + 0.6 + 0.2 * heading.count("\n")), dpi=DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(preview.rgb, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(heading, fontsize=11)
    handles: list[Any] = [Patch(facecolor=MASK_COLOUR, alpha=alpha, label=PREDICTION_LABEL)]
    if preview.outlines is not None:
        outlines = LineCollection(preview.outlines, colors=GT_COLOUR, linewidths=1.5, label=GT_LABEL)
        ax.add_collection(outlines, autolim=False)
        handles.append(outlines)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return fig


def render_overlay(scene: str | Path, mask: str | Path, out_png: str | Path, gt: str | Path | None = None,
                   max_side: int = 1024, alpha: float = 0.6, title: str | None = None,
                   bands: list[int] | None = None) -> Path:
    """Write :func:`overlay_figure` as a PNG (temporary name, then rename). Returns the PNG's path."""
    fig = overlay_figure(scene, mask, gt=gt, max_side=max_side, alpha=alpha, title=title, bands=bands)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, out_png)
    return out_png

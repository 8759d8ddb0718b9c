"""Writing the outputs of ``predict``: Cloud-Optimised GeoTIFF masks (via rio-cogeo) and vector polygons of the
mask, vectorised window by window and merged across window borders. Every file is written under a temporary
name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

VECTOR_DRIVERS = {"geojson": ("GeoJSON", "geojson"), "gpkg": ("GPKG", "gpkg"), "fgb": ("FlatGeobuf", "fgb"),
                  "parquet": (None, "parquet")}


def mask_profile(reader, block: int = 512) -> dict[str, Any]:
    ds = reader.ds
    return {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
            "crs": ds.crs, "transform": ds.transform, "nodata": 255, "tiled": True, "blockxsize": block,
            "blockysize": block, "compress": "deflate"}


def to_cog(src: Path, dst: Path, tags: dict[str, str]) -> None:
    """Translate a tiled GTiff into a COG (DEFLATE, 512 tiles, nearest overviews) at ``dst`` atomically."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=512, blockysize=512)
    tmp = dst.with_name(f".{dst.name}.tmp")
    cog_translate(str(src), str(tmp), profile, overview_resampling="nearest", quiet=True,
                  additional_cog_metadata=tags, use_cog_driver=False, in_memory=False)
    os.replace(tmp, dst)


def vectorise(mask_path: Path, prob_path: Path, out_path: Path, prompt: str, vector_format: str,
              min_area: float, simplify: float, block: int) -> int:
    """Polygons of mask == 1, window by window, merged across window borders; ``score`` is the mean probability
    (from the uint8 probability raster, value / 254) of each polygon's pixels. Returns the feature count."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window
    from scipy.ndimage import label
    from shapely.geometry import shape
    from shapely.ops import unary_union
    from shapely.strtree import STRtree

    parts = []
    with rasterio.open(mask_path) as ds, rasterio.open(prob_path) as prob_ds:
        crs = ds.crs
        pixel_area = abs(ds.transform.a * ds.transform.e)
        for row in range(0, ds.height, block):
            for col in range(0, ds.width, block):
                window = Window(col, row, min(block, ds.width - col), min(block, ds.height - row))
                data = ds.read(1, window=window)
                hit = data == 1
                if not hit.any():
                    continue
                prob = prob_ds.read(1, window=window).astype(np.float64) / 254.0
                # 4-connected components, as rasterio's shapes(): one polygon per label, counted in one pass
                labels, count = label(hit)
                pixels = np.bincount(labels.ravel(), minlength=count + 1)
                prob_sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count + 1)
                for geom, value in shapes(labels.astype(np.int32), mask=hit, transform=ds.window_transform(window)):
                    parts.append((shape(geom), int(pixels[int(value)]), float(prob_sums[int(value)])))
    merged = unary_union([p for p, _, _ in parts]) if parts else None
    components = list(getattr(merged, "geoms", [merged])) if merged is not None and not merged.is_empty else []
    # each window part lies in exactly one merged component: assign it by an interior point
    tree = STRtree(components) if components else None
    pixels = [0] * len(components)
    prob_sums = [0.0] * len(components)
    for poly, count, prob_sum in parts:
        hit = tree.query(poly.representative_point(), predicate="within") if tree is not None else []
        if len(hit):
            pixels[int(hit[0])] += count
            prob_sums[int(hit[0])] += prob_sum
    records = [{"prompt": prompt, "score": prob_sums[i] / max(pixels[i], 1), "pixels": pixels[i], "geometry": comp}
               for i, comp in enumerate(components)]
    frame = gpd.GeoDataFrame(records, geometry="geometry", crs=crs) if records else gpd.GeoDataFrame(
        {"prompt": [], "score": [], "pixels": []}, geometry=[], crs=crs)
    if crs is not None and len(frame):
        utm = frame.estimate_utm_crs() if crs.is_geographic else crs
        frame["area_m2"] = frame.to_crs(utm).area if crs.is_geographic else frame["pixels"] * pixel_area
        if min_area > 0:
            frame = frame[frame["area_m2"] >= min_area]
        if simplify > 0:
            frame["geometry"] = frame.to_crs(utm).simplify(simplify).to_crs(crs)
        frame = frame.to_crs("EPSG:4326")
    else:
        frame["area_m2"] = None
    driver, _ = VECTOR_DRIVERS[vector_format]
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    if vector_format == "parquet":
        frame.to_parquet(tmp)
    else:
        frame.to_file(tmp, driver=driver)
    os.replace(tmp, out_path)
    return len(frame)

"""``rrsis predict``: stream GeoTIFF scenes through a model tile by tile, blend overlapping tiles on disk, write
a Cloud-Optimised GeoTIFF mask and vector polygons per (scene, prompt).

Data path: tile grid → windowed boundless reads (first three bands or ``bands``) + nodata mask → scene-level
normalisation (uint8 /255; other types a 2–98 % stretch estimated on a decimated read) → batched model with the
prompt's text features computed once per run → separable sine² weights accumulated in a zarr store in the work
directory → finalised block by block (probability ≥ threshold → 1, nodata → 255) → COG (DEFLATE, internal
tiles, nearest overviews, tags) → windowed vectorisation merged across windows → GeoJSON/GPKG/Parquet/FGB.
Memory depends on the tile and block sizes, not on the scene size. Every output is written under a temporary
name and renamed. A CRS-less raster is processed in pixel space with a warning (vectors without CRS, area null).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rrsis_cli import __version__, console
from rrsis_cli.errors import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PARTIAL,
    InputError,
    OutputError,
    RrsisError,
    UsageError,
)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
VECTOR_DRIVERS = {"geojson": ("GeoJSON", "geojson"), "gpkg": ("GPKG", "gpkg"), "fgb": ("FlatGeobuf", "fgb"),
                  "parquet": (None, "parquet")}


@dataclass
class PredictOptions:
    tile_size: int | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    precision: str = "fp32"
    threshold: float = 0.5
    bands: list[int] | None = None
    save_prob: bool = False
    vector_format: str = "geojson"
    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False
    dry_run: bool = False
    block_size: int = 1024


@dataclass
class SceneResult:
    scene: str
    prompt: str
    status: str = "pending"
    outputs: dict[str, str] = field(default_factory=dict)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunManifest:
    rrsis_version: str
    model: str
    model_sha256: str | None
    prompts: list[str]
    options: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    results: list[SceneResult] = field(default_factory=list)
    encoder_calls: int = 0
    seconds: float = 0.0
    tiles_per_second: float = 0.0
    km2_per_hour: float | None = None
    exit_code: int = 0


# ------------------------------------------------------------------------------------------- inputs / grid
def find_inputs(inputs: list[str | Path], glob: str | None = None) -> list[Path]:
    """Files, folders (recursive ``*.tif|*.tiff|*.vrt`` or ``glob``), or ``.txt`` lists of paths."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob(glob or "*") if p.suffix.lower() in RASTER_SUFFIXES or glob)
        elif item.suffix.lower() == ".txt" and item.is_file():
            found += [Path(line.strip()) for line in item.read_text().splitlines() if line.strip()]
        else:
            found.append(item)
    if not found:
        raise UsageError("no input scenes found")
    return found


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``: ``0, stride, ...`` with the last tile ending at ``length``
    (a scene shorter than a tile gets one tile, padded)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_weights(tile: int, floor: float = 0.05) -> np.ndarray:
    """Separable sine² window (Hann-like) with a floor, so the scene's outer edges still count: (tile, tile)."""
    ramp = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    ramp = np.maximum(ramp, floor).astype(np.float32)
    return np.outer(ramp, ramp)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "prompt"


# ------------------------------------------------------------------------------------------------ reading
class SceneReader:
    """Owns one open raster: band selection, nodata mask, scene-level normalisation, windowed reads."""

    def __init__(self, path: Path, bands: list[int] | None):
        import rasterio

        self.path = path
        if not path.exists():
            raise InputError("file not found", path)
        if path.stat().st_size == 0:
            raise InputError("empty file (0 bytes)", path)
        try:
            self.ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"not a readable raster ({str(exc).splitlines()[0]})", path) from exc
        ds = self.ds
        if ds.width == 0 or ds.height == 0:
            raise InputError("raster has zero size", path)
        self.bands = bands or list(range(1, min(3, ds.count) + 1))
        if max(self.bands) > ds.count or min(self.bands) < 1:
            raise InputError(f"band selection {self.bands} outside 1..{ds.count}", path)
        dtype = np.dtype(ds.dtypes[self.bands[0] - 1])
        if dtype.kind not in "uif":
            raise InputError(f"unsupported data type {dtype}", path)
        if ds.crs is None:
            console.warn(f"{path}: no CRS; outputs are in pixel coordinates and areas are not computed")
        self.dtype = dtype
        self.lo, self.hi = self.statistics()

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band value range mapped to [0, 1]: uint8 → 0..255; else the 2–98 % percentiles of a decimated
        read (overviews when present) over valid pixels."""
        n = len(self.bands)
        if self.dtype == np.uint8:
            return np.zeros(n, np.float32), np.full(n, 255.0, np.float32)
        scale = min(1.0, 1024 / max(self.ds.width, self.ds.height))
        shape = (n, max(1, int(self.ds.height * scale)), max(1, int(self.ds.width * scale)))
        data = self.ds.read(self.bands, out_shape=shape, masked=True).astype(np.float64)
        lo, hi = [], []
        for band in data:
            values = band.compressed() if np.ma.isMaskedArray(band) else band.ravel()
            values = values[np.isfinite(values)]
            a, b = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
            lo.append(a)
            hi.append(b if b > a else a + 1)
        return np.array(lo, np.float32), np.array(hi, np.float32)

    def read(self, row: int, col: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, tile, tile) float in [0, 1] and a (tile, tile) valid mask; outside the scene is invalid."""
        from rasterio.windows import Window

        window = Window(col, row, tile, tile)
        data = self.ds.read(self.bands, window=window, boundless=True, fill_value=0).astype(np.float32)
        valid = self.ds.read_masks(self.bands, window=window, boundless=True).min(axis=0) > 0
        data = np.clip((data - self.lo[:, None, None]) / (self.hi - self.lo)[:, None, None], 0, 1)
        if data.shape[0] < 3:
            data = np.repeat(data[:1], 3, axis=0)
        return data[:3], valid

    def close(self) -> None:
        self.ds.close()


# ------------------------------------------------------------------------------------------------ engine
def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)


class TextCache:
    """Text features once per prompt per run; ``calls`` counts encoder invocations."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[str, Any] = {}
        self.calls = 0

    def get(self, prompt: str):
        if prompt not in self.cache:
            ids, mask = self.model.tokenize([prompt])
            with torch.inference_mode():
                self.cache[prompt] = self.model.encode_text(ids, mask)
            self.calls += 1
        return self.cache[prompt]


def infer(model, text, tiles: list[np.ndarray], device: torch.device, precision: str) -> np.ndarray:
    """Foreground probability (B, tile, tile) for normalised tiles."""
    cfg = model.config
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = ((torch.from_numpy(np.stack(tiles)) - mean) / std).to(device)
    ctx = (torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
           if precision != "fp32" and device.type == "cuda" else torch.inference_mode())
    with torch.inference_mode(), ctx:
        logits = model.forward_with_text(x, text)
    return logits.float().softmax(1)[:, 1].cpu().numpy()


# ------------------------------------------------------------------------------------------------ writing
def mask_profile(reader: SceneReader, block: int = 512) -> dict[str, Any]:
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


def vectorise(mask_path: Path, prob_store, out_path: Path, prompt: str, vector_format: str,
              min_area: float, simplify: float, block: int) -> int:
    """Polygons of mask == 1, window by window, merged across window borders; returns the feature count."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window
    from shapely.geometry import shape
    from shapely.ops import unary_union
    from shapely.strtree import STRtree

    parts = []
    with rasterio.open(mask_path) as ds:
        crs = ds.crs
        pixel_area = abs(ds.transform.a * ds.transform.e)
        for row in range(0, ds.height, block):
            for col in range(0, ds.width, block):
                window = Window(col, row, min(block, ds.width - col), min(block, ds.height - row))
                data = ds.read(1, window=window)
                hit = data == 1
                if not hit.any():
                    continue
                prob = prob_store[row:row + window.height, col:col + window.width]
                transform = ds.window_transform(window)
                for geom, _ in shapes(hit.astype(np.uint8), mask=hit, transform=transform):
                    poly = shape(geom)
                    inside = rasterio.features.geometry_mask([geom], hit.shape, transform, invert=True)
                    parts.append((poly, int(inside.sum()), float(prob[inside].sum())))
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


# ------------------------------------------------------------------------------------------------ scenes
def config_hash(model_sha: str | None, prompt: str, options: PredictOptions, tile: int) -> str:
    payload = {"model": model_sha, "prompt": prompt, "tile": tile, "overlap": options.overlap,
               "threshold": options.threshold, "bands": options.bands, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def existing_hash(mask_path: Path) -> str | None:
    import rasterio

    try:
        with rasterio.open(mask_path) as ds:
            return ds.tags().get("rrsis_config_hash")
    except rasterio.errors.RasterioIOError:
        return None


def predict_scene(reader: SceneReader, model, text, prompt: str, out_dir: Path, work: Path,
                  options: PredictOptions, tile: int, device: torch.device, result: SceneResult) -> None:
    import rasterio
    import zarr
    from rasterio.windows import Window

    ds = reader.ds
    stride = max(1, int(round(tile * (1 - options.overlap))))
    rows, cols = tile_origins(ds.height, tile, stride), tile_origins(ds.width, tile, stride)
    weights = blend_weights(tile)
    work.mkdir(parents=True, exist_ok=True)
    chunks = (min(tile, ds.height), min(tile, ds.width))
    acc = zarr.open_group(str(work / "acc.zarr"), mode="w")
    psum = acc.create_array("prob", shape=(ds.height, ds.width), chunks=chunks, dtype="float32", fill_value=0)
    wsum = acc.create_array("weight", shape=(ds.height, ds.width), chunks=chunks, dtype="float32", fill_value=0)
    started = time.perf_counter()
    origins = [(r, c) for r in rows for c in cols]
    for start in range(0, len(origins), options.batch_size):
        batch, tiles = [], []
        for r, c in origins[start:start + options.batch_size]:
            data, valid = reader.read(r, c, tile)
            if not valid.any():
                result.tiles_skipped_nodata += 1
                continue
            batch.append((r, c))
            tiles.append(data)
        if not tiles:
            continue
        probs = infer(model, text, tiles, device, options.precision)
        for (r, c), prob in zip(batch, probs, strict=True):
            h, w = min(tile, ds.height - r), min(tile, ds.width - c)
            psum[r:r + h, c:c + w] = psum[r:r + h, c:c + w] + (prob * weights)[:h, :w]
            wsum[r:r + h, c:c + w] = wsum[r:r + h, c:c + w] + weights[:h, :w]
        result.tiles += len(tiles)
    result.seconds["infer_and_blend"] = time.perf_counter() - started

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = work / "mask_raw.tif"
    prob_raw = work / "prob_raw.tif"
    block = options.block_size
    profile = mask_profile(reader)
    prob_ds = rasterio.open(prob_raw, "w", **profile) if options.save_prob else None
    with rasterio.open(raw, "w", **profile) as dst:
        for r in range(0, ds.height, block):
            for c in range(0, ds.width, block):
                window = Window(c, r, min(block, ds.width - c), min(block, ds.height - r))
                sl = (slice(r, r + window.height), slice(c, c + window.width))
                wsum_b = wsum[sl]
                prob = np.where(wsum_b > 0, psum[sl] / np.maximum(wsum_b, 1e-12), 0.0)
                valid = ds.read_masks(reader.bands, window=window).min(axis=0) > 0
                out = np.where(prob >= options.threshold, 1, 0).astype(np.uint8)
                out[~valid] = 255
                dst.write(out, 1, window=window)
                if prob_ds is not None:
                    p8 = np.round(prob * 254).astype(np.uint8)
                    p8[~valid] = 255
                    prob_ds.write(p8, 1, window=window)
    if prob_ds is not None:
        prob_ds.close()
    tags = {"prompt": prompt, "model": str(model.config.get("name")), "model_sha256": str(model.sha256),
            "rrsis_version": __version__, "tile_size": str(tile), "overlap": str(options.overlap),
            "threshold": str(options.threshold),
            "rrsis_config_hash": config_hash(model.sha256, prompt, options, tile)}
    mask_path = out_dir / "mask.tif"
    to_cog(raw, mask_path, tags)
    result.outputs["mask"] = str(mask_path)
    if options.save_prob:
        to_cog(prob_raw, out_dir / "prob.tif", {**tags, "values": "probability x 254, 255 nodata"})
        result.outputs["prob"] = str(out_dir / "prob.tif")
    result.seconds["write"] = time.perf_counter() - started

    started = time.perf_counter()
    _, suffix = VECTOR_DRIVERS[options.vector_format]
    vec_path = out_dir / f"mask.{suffix}"
    prob_full = _ProbView(psum, wsum)
    count = vectorise(mask_path, prob_full, vec_path, prompt, options.vector_format, options.min_area,
                      options.simplify, block)
    result.outputs["vectors"] = str(vec_path)
    result.outputs["features"] = str(count)
    result.seconds["vectorise"] = time.perf_counter() - started


class _ProbView:
    """Lazy probability = prob_sum / weight_sum over a window of the zarr accumulator."""

    def __init__(self, psum, wsum):
        self.psum, self.wsum = psum, wsum

    def __getitem__(self, key):
        w = self.wsum[key]
        return np.where(w > 0, self.psum[key] / np.maximum(w, 1e-12), 0.0)


def predict(inputs: list[str | Path], model_spec: str, prompts: list[str], out_dir: str | Path,
            options: PredictOptions | None = None, glob: str | None = None) -> RunManifest:
    """Run every (scene, prompt); returns the manifest (also written to ``OUT/manifest.json``)."""
    from rrsis_cli.models import load_model

    options = options or PredictOptions()
    if not prompts:
        raise UsageError("give at least one --prompt (or --prompts-file)")
    if not 0 <= options.overlap < 1:
        raise UsageError(f"--overlap must be in [0, 1), got {options.overlap}")
    if options.vector_format not in VECTOR_DRIVERS:
        raise UsageError(f"--vector-format must be one of {', '.join(VECTOR_DRIVERS)}")
    scenes = find_inputs(inputs, glob)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".rrsis-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror})", out) from exc
    device = pick_device(options.device)
    model = load_model(model_spec, device=device)
    tile = int(options.tile_size or model.config["image_size"])
    if tile % 32:
        raise UsageError(f"--tile-size must be a multiple of 32, got {tile}")
    manifest = RunManifest(__version__, str(model.config.get("name")), model.sha256, list(prompts),
                           {**asdict(options), "tile_size": tile})
    texts = TextCache(model)
    started = time.perf_counter()
    area_km2 = 0.0
    for scene in scenes:
        try:
            reader = SceneReader(scene, options.bands)
        except RrsisError as exc:
            console.error(exc.one_line())
            manifest.inputs.append({"path": str(scene), "error": exc.one_line()})
            manifest.results += [SceneResult(str(scene), p, "failed", error=exc.one_line()) for p in prompts]
            continue
        ds = reader.ds
        manifest.inputs.append({"path": str(scene), "width": ds.width, "height": ds.height, "bands": reader.bands,
                                "dtype": str(reader.dtype), "crs": str(ds.crs) if ds.crs else None,
                                "normalisation": {"low": reader.lo.tolist(), "high": reader.hi.tolist()}})
        for prompt in prompts:
            result = SceneResult(str(scene), prompt)
            manifest.results.append(result)
            target = out / scene.stem / slugify(prompt)
            if options.dry_run:
                stride = max(1, int(round(tile * (1 - options.overlap))))
                result.tiles = len(tile_origins(ds.height, tile, stride)) * len(tile_origins(ds.width, tile, stride))
                result.status = "dry-run"
                continue
            if (target / "mask.tif").exists() and not options.overwrite and \
                    existing_hash(target / "mask.tif") == config_hash(model.sha256, prompt, options, tile):
                result.status = "skipped-existing"
                continue
            work = out / ".rrsis-work" / scene.stem / slugify(prompt)
            try:
                predict_scene(reader, model, texts.get(prompt), prompt, target, work, options, tile, device,
                              result)
                result.status = "done"
                if ds.crs is not None and not ds.crs.is_geographic:
                    area_km2 += abs(ds.transform.a * ds.transform.e) * ds.width * ds.height / 1e6
            except RrsisError as exc:
                result.status, result.error = "failed", exc.one_line()
                console.error(exc.one_line())
            except Exception as exc:  # noqa: BLE001 - one scene never stops the others
                result.status, result.error = "failed", f"{scene}: {type(exc).__name__}: {exc}"
                console.error(result.error)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            console.info(f"{scene.name} / {prompt!r}: {result.status} ({result.tiles} tiles, "
                         f"{result.tiles_skipped_nodata} nodata tiles skipped)")
        reader.close()
    shutil.rmtree(out / ".rrsis-work", ignore_errors=True)
    manifest.seconds = time.perf_counter() - started
    manifest.encoder_calls = texts.calls
    tiles = sum(r.tiles for r in manifest.results if r.status == "done")
    manifest.tiles_per_second = tiles / manifest.seconds if manifest.seconds else 0.0
    manifest.km2_per_hour = area_km2 / manifest.seconds * 3600 if area_km2 and manifest.seconds else None
    failed = sum(r.status == "failed" for r in manifest.results)
    manifest.exit_code = EXIT_OK if not failed else (EXIT_FATAL if failed == len(manifest.results) else EXIT_PARTIAL)
    text = json.dumps(asdict(manifest), indent=2, default=str) + "\n"
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "manifest.json")
    return manifest


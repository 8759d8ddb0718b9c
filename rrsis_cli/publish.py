"""Publishing a finished ``rrsis predict`` output: a STAC Item per (scene, prompt) and a STAC Catalog at the
output root, a VRT mosaic of each prompt's masks (one per CRS) and each prompt's vectors of every scene merged
into one GeoPackage. Everything is derived from ``OUT/manifest.json`` and the files it names, so the same step
runs at the end of a run (``rrsis predict --publish``), after ``rrsis manifest merge --publish`` for the shards of
a job array, or alone (``rrsis publish OUT``).

Layout (``OUT`` is ``--out``; see :mod:`rrsis_cli.inputs` for the pair directories)::

    OUT/catalog.json                                   STAC Catalog: one ``item`` link per finished pair
    OUT/<scene key>/<prompt key>/item.json             STAC Item: assets mask, prob, vectors (relative hrefs)
    OUT/mosaic/<prompt key>/mask-<CRS>.vrt             VRT over the prompt's masks in that CRS (EPSG-32618, ...)
    OUT/mosaic/<prompt key>/vectors.gpkg               the prompt's polygons of every scene, EPSG:4326, + scene

Decisions:

* **What is read.** The pair directories of the manifest's results whose ``mask.tif`` is there (done, skipped,
  re-thresholded or partial). The Item's properties come from the mask's own tags (prompt, model, sha256,
  version, threshold, tile, overlap), which hold for the mask whatever run wrote it.
* **datetime.** The source STAC item's ``datetime`` (or ``start_datetime``) when the scene came from one (input
  record field ``stac_item``: its href), else the time the mask was written (its modification time, UTC);
  ``rrsis:datetime_source`` says which (``source-item`` / ``processing``).
* **Relative hrefs** everywhere except ``derived_from`` (the source item is elsewhere): the output folder can
  move or be uploaded as it is.
* **Mosaic**: GDAL VRT XML written here (gdalbuildvrt is no Python dependency), on the finest resolution of its
  masks, each mask a ComplexSource with nodata 255 so scenes do not blank each other out; where scenes overlap
  the later one in the manifest wins. Masks with a rotated grid or no CRS are left out, with a note.
* **Merged vectors**: GeoPackage, because pyogrio appends to it one scene at a time (memory holds one scene's
  polygons, never the run's) and every GIS opens it as one layer; in EPSG:4326, the one CRS that every scene's
  polygons can share (areas stay those computed per scene in a metric CRS, column ``area_m2``).
* Every file is written under a temporary name and renamed; a rerun rewrites them all from the manifest.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from rrsis_cli import console
from rrsis_cli.errors import OutputError, UsageError
from rrsis_cli.vectors import VECTOR_DRIVERS, VECTOR_LAYER

CATALOG = "catalog.json"
ITEM = "item.json"
MOSAIC_DIR = "mosaic"
MERGED_VECTORS = "vectors.gpkg"
WITH_MASK = ("done", "skipped-existing", "rethresholded", "partial")
MEDIA_TYPES = {
    "tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    "geojson": "application/geo+json",
    "gpkg": "application/geopackage+sqlite3",
    "fgb": "application/vnd.flatgeobuf",
    "parquet": "application/vnd.apache.parquet",
    "vrt": "application/xml",
}
SOURCE_ITEM_FIELD = "stac_item"  # input record field (Scene.as_dict): href of the STAC item a scene was read from


@dataclass
class Pair:
    """One finished (scene, prompt) of the manifest, as publishing needs it."""

    scene: str  # the input path
    scene_key: str
    prompt: str
    output_dir: str  # relative to OUT, posix
    source_item: str | None = None


@dataclass
class MaskInfo:
    """What the Item and the mosaic need of a ``mask.tif``: grid, CRS, tags, modification time."""

    width: int
    height: int
    transform: tuple[float, ...]
    crs: Any  # rasterio CRS or None
    bounds: tuple[float, float, float, float]
    tags: dict[str, str]
    block: tuple[int, int]
    written: datetime | None


@dataclass
class PublishReport:
    items: int = 0
    mosaics: list[str] = field(default_factory=list)
    merged_vectors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # relative to OUT, in writing order (the catalog last)


class LocalFiles:
    """File tests of publishing on local paths (:class:`rrsis_cli.store.RemoteOutput` has the same two methods
    on ``/vsis3/`` names)."""

    @staticmethod
    def exists(path: str) -> bool:
        return Path(path).is_file()

    @staticmethod
    def modified(path: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(os.stat(path).st_mtime, tz=timezone.utc)
        except OSError:
            return None


# ------------------------------------------------------------------------------------------------ reading
def join(root: str, relative: str) -> str:
    """``root/relative`` for a local folder or a GDAL virtual path (``/vsis3/bucket/prefix``)."""
    return posixpath.join(root.rstrip("/"), relative) if root.startswith("/vsi") else str(Path(root) / relative)


def read_manifest(out: str | Path) -> dict[str, Any]:
    """``OUT/manifest.json`` as a dict; UsageError naming the file when it is missing or not JSON."""
    path = Path(out) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError("no manifest.json: publish an output folder of rrsis predict (after `rrsis manifest "
                         "merge` for shards)", path) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the manifest: {exc}", path) from exc


def pairs_of(manifest: dict[str, Any]) -> list[Pair]:
    """The pairs of the manifest that have a mask, in manifest order (input order, then prompt order)."""
    records = {i.get("path"): i for i in manifest.get("inputs", [])}
    pairs = []
    for result in manifest.get("results", []):
        if result.get("status") not in WITH_MASK or not result.get("output_dir"):
            continue
        record = records.get(result["scene"], {})
        scene_key = record.get("key") or result["output_dir"].rsplit("/", 1)[0]
        pairs.append(Pair(result["scene"], scene_key, result["prompt"], result["output_dir"],
                          record.get(SOURCE_ITEM_FIELD)))
    return pairs


def mask_info(path: str, files) -> MaskInfo | None:
    """Grid, CRS, tags and modification time of a mask; None when it cannot be opened (not written)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            info = MaskInfo(ds.width, ds.height, tuple(ds.transform)[:6], ds.crs, tuple(ds.bounds), ds.tags(),
                            tuple(ds.block_shapes[0]), None)
    except rasterio.errors.RasterioIOError:
        return None
    info.written = files.modified(path)
    return info


def vector_file(root: str, output_dir: str, exists) -> str | None:
    """The pair's vector file (whichever ``--vector-format`` wrote it), or None."""
    for _, suffix in VECTOR_DRIVERS.values():
        candidate = join(root, f"{output_dir}/mask.{suffix}")
        if exists(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ STAC
def item_id(output_dir: str) -> str:
    """``<scene key>/<prompt key>`` with ``/`` as ``__``: unique in the catalog, safe in a URL path."""
    return output_dir.replace("/", "__")


def footprint(info: MaskInfo) -> dict[str, Any] | None:
    """The mask's extent as a GeoJSON polygon in EPSG:4326 (edges densified, 7 decimals); None without CRS."""
    if info.crs is None:
        return None
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    left, bottom, right, top = info.bounds
    outline = box(left, bottom, right, top).segmentize(max(right - left, top - bottom) / 8)
    return transform_geom(info.crs, "EPSG:4326", mapping(outline), precision=7)


def bbox_of(geometry: dict[str, Any]) -> list[float]:
    from shapely.geometry import shape

    return [round(v, 7) for v in shape(geometry).bounds]


def source_datetime(href: str) -> datetime | None:
    """``datetime`` (or ``start_datetime``) of the STAC item at ``href``; None (with a warning) when unreadable."""
    import pystac

    try:
        item = pystac.Item.from_file(href)
    except Exception as exc:  # noqa: BLE001 - any reader error: fall back to the processing time
        console.warn(f"{href}: source STAC item unreadable ({type(exc).__name__}); the Item's datetime is the "
                     "processing time")
        return None
    return item.datetime or item.common_metadata.start_datetime


def raster_band(info: MaskInfo, scale: float | None = None):
    from pystac.extensions.raster import DataType, RasterBand, Sampling

    resolution = abs(info.transform[0]) if info.crs is not None else None
    return RasterBand.create(nodata=255, data_type=DataType.UINT8, sampling=Sampling.AREA,
                             spatial_resolution=resolution, scale=scale,
                             offset=0.0 if scale is not None else None)


def build_item(pair: Pair, info: MaskInfo, files: dict[str, str], catalog_href: str):
    """The pystac Item of one pair: projection and raster extensions, assets with relative hrefs (``files``:
    asset key -> file name in the pair directory), the mask's tags as properties, links to the catalog and to the
    source item."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    geometry = footprint(info)
    when = source_datetime(pair.source_item) if pair.source_item else None
    properties = {"rrsis:datetime_source": "source-item" if when else "processing"}
    when = when or info.written or datetime.now(timezone.utc)
    tags = info.tags
    properties.update({
        "title": f"{pair.prompt} in {Path(pair.scene).name}",
        "rrsis:prompt": tags.get("prompt", pair.prompt), "rrsis:scene": pair.scene,
        "rrsis:model": tags.get("model"), "rrsis:model_sha256": tags.get("model_sha256"),
        "rrsis:version": tags.get("rrsis_version"),
        "rrsis:threshold": _number(tags.get("threshold")), "rrsis:tile_size": _number(tags.get("tile_size")),
        "rrsis:overlap": _number(tags.get("overlap")),
    })
    item = pystac.Item(item_id(pair.output_dir), geometry, bbox_of(geometry) if geometry else None, when,
                       properties)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = info.crs.to_epsg() if info.crs is not None else None
    proj.apply(code=f"EPSG:{epsg}" if epsg else None,
               wkt2=info.crs.to_wkt() if info.crs is not None and not epsg else None,
               shape=[info.height, info.width], transform=[float(v) for v in info.transform],
               bbox=[float(v) for v in info.bounds] if info.crs is not None else None)
    RasterExtension.add_to(item)
    assets = {
        "mask": ("mask", "Mask: 1 target, 0 background, 255 nodata", ["data"], None),
        "prob": ("probability", "Probability x 254 (scale 1/254), 255 nodata", ["data"], 1 / 254),
        "vectors": ("polygons", "Polygons of the mask (one layer 'mask')", ["data"], None),
        "coarse": ("coarse probability", "Coarse probability x 254 of scene grounding, one band per level",
                   ["data"], None),
    }
    for key, name in files.items():
        title, description, roles, scale = assets[key]
        suffix = name.rsplit(".", 1)[1]
        asset = pystac.Asset(f"./{name}", title=title, description=description, media_type=MEDIA_TYPES[suffix],
                             roles=roles)
        item.add_asset(key, asset)
        if key in ("mask", "prob"):
            RasterExtension.ext(asset).apply([raster_band(info, scale)])
    item.add_link(pystac.Link("root", catalog_href, media_type="application/json"))
    item.add_link(pystac.Link("parent", catalog_href, media_type="application/json"))
    if pair.source_item:
        item.add_link(pystac.Link("derived_from", pair.source_item, media_type="application/geo+json"))
    return item


def _number(text: str | None) -> float | int | None:
    if text is None:
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def build_catalog(manifest: dict[str, Any], item_hrefs: list[str]):
    """The root Catalog: one ``item`` link per Item (relative href)."""
    import pystac

    prompts = ", ".join(repr(p) for p in manifest.get("prompts", []))
    catalog = pystac.Catalog("rrsis-predictions", f"rrsis predict: model {manifest.get('model')} "
                             f"(sha256 {manifest.get('model_sha256')}), prompts {prompts}",
                             title="rrsis predictions")
    catalog.add_link(pystac.Link("root", f"./{CATALOG}", media_type="application/json"))
    for href in item_hrefs:
        catalog.add_link(pystac.Link("item", f"./{href}", media_type="application/geo+json"))
    return catalog


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, atomically (temporary name beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ mosaic
def crs_label(crs) -> str:
    """``EPSG-32618``, or ``crs-<8 hex>`` of the WKT for a CRS without an EPSG code."""
    import hashlib

    epsg = crs.to_epsg()
    return f"EPSG-{epsg}" if epsg else f"crs-{hashlib.sha256(crs.to_wkt().encode()).hexdigest()[:8]}"


def vrt_xml(sources: list[tuple[str, MaskInfo]], relative: bool = True) -> str:
    """A GDAL VRT (one Byte band, nodata 255) over ``sources`` (path relative to the VRT, or an absolute GDAL name
    when not ``relative``; mask) of one CRS, on the finest pixel size among them; each mask is a ComplexSource
    placed by its georeference (north-up grids only)."""
    infos = [info for _, info in sources]
    res_x = min(abs(i.transform[0]) for i in infos)
    res_y = min(abs(i.transform[4]) for i in infos)
    left = min(i.bounds[0] for i in infos)
    top = max(i.bounds[3] for i in infos)
    right = max(i.bounds[2] for i in infos)
    bottom = min(i.bounds[1] for i in infos)
    width = max(1, math.ceil((right - left) / res_x - 1e-6))
    height = max(1, math.ceil((top - bottom) / res_y - 1e-6))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(infos[0].crs.to_wkt())}</SRS>',
             f"  <GeoTransform>{left!r}, {res_x!r}, 0.0, {top!r}, 0.0, {-res_y!r}</GeoTransform>",
             '  <VRTRasterBand dataType="Byte" band="1">',
             "    <NoDataValue>255</NoDataValue>",
             "    <ColorInterp>Gray</ColorInterp>"]
    for href, info in sources:
        x_off = (info.bounds[0] - left) / res_x
        y_off = (top - info.bounds[3]) / res_y
        x_size = info.width * abs(info.transform[0]) / res_x
        y_size = info.height * abs(info.transform[4]) / res_y
        lines += ["    <ComplexSource>",
                  f'      <SourceFilename relativeToVRT="{int(relative)}">{escape(href)}</SourceFilename>',
                  "      <SourceBand>1</SourceBand>",
                  f'      <SourceProperties RasterXSize="{info.width}" RasterYSize="{info.height}" '
                  f'DataType="Byte" BlockXSize="{info.block[1]}" BlockYSize="{info.block[0]}" />',
                  f'      <SrcRect xOff="0" yOff="0" xSize="{info.width}" ySize="{info.height}" />',
                  f'      <DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}" />',
                  "      <NODATA>255</NODATA>",
                  "    </ComplexSource>"]
    lines += ["  </VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(lines) + "\n"


def write_mosaics(out: Path, prompt_dir: str, masks: list[tuple[Pair, MaskInfo]], report: PublishReport,
                  store: str | None = None) -> None:
    """``OUT/mosaic/<prompt key>/mask-<CRS>.vrt`` per CRS of the prompt's masks; stale VRTs of CRSs no longer
    present are removed. Sources are relative to the VRT (``../../<scene>/<prompt>/mask.tif``: the folder can be
    moved), except for an output in an object store (``store``: its ``/vsis3/``, ``/vsigs/`` or ``/vsiaz/``
    prefix), where they are the masks' GDAL names in the store: GDAL would join a relative source into
    ``…/mosaic/<prompt>/../../…``, and a store whose requests are signed refuses such a name (Azure answers 403:
    the signature covers the name with its ``..``, the HTTP client sends it resolved)."""
    folder = out / MOSAIC_DIR / prompt_dir
    groups: dict[str, list[tuple[str, MaskInfo]]] = {}
    for pair, info in masks:
        if info.crs is None or info.transform[1] or info.transform[3]:
            report.notes.append(f"{pair.output_dir}/mask.tif: no CRS or a rotated grid; left out of the mosaic")
            continue
        href = (posixpath.relpath(f"{pair.output_dir}/mask.tif", f"{MOSAIC_DIR}/{prompt_dir}") if store is None
                else f"{store.rstrip('/')}/{pair.output_dir}/mask.tif")
        groups.setdefault(crs_label(info.crs), []).append((href, info))
    folder.mkdir(parents=True, exist_ok=True)
    for label, sources in groups.items():
        path = folder / f"mask-{label}.vrt"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(vrt_xml(sources, relative=store is None))
        os.replace(tmp, path)
        report.mosaics.append(path.relative_to(out).as_posix())
    for stale in folder.glob("mask-*.vrt"):
        if stale.name not in {f"mask-{label}.vrt" for label in groups}:
            stale.unlink()


# ------------------------------------------------------------------------------------------------ vectors
def merge_vectors(sources: list[tuple[Pair, str]], path: Path, notes: list[str] | None = None) -> int:
    """The polygons of ``sources`` (pair, vector file) appended scene by scene to one GeoPackage layer
    :data:`~rrsis_cli.vectors.VECTOR_LAYER` in EPSG:4326, with columns ``scene`` (scene key) and ``scene_path``;
    written under a temporary name and renamed. Vectors without a CRS (pixel space) are left out, with a note.
    Returns the number of features."""
    import geopandas as gpd
    import pyogrio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    total = 0
    columns = ["scene", "scene_path", "prompt", "score", "pixels", "area_m2"]
    try:
        for pair, source in sources:
            frame = pyogrio.read_dataframe(source)
            if frame.crs is None:
                if notes is not None and len(frame):
                    notes.append(f"{source}: polygons without CRS (pixel space); left out of the merged vectors")
                continue
            frame = frame.to_crs("EPSG:4326")
            frame.insert(0, "scene_path", pair.scene)
            frame.insert(0, "scene", pair.scene_key)
            frame = frame[[c for c in columns if c in frame.columns] + ["geometry"]]
            if not len(frame):
                continue
            pyogrio.write_dataframe(frame, tmp, layer=VECTOR_LAYER, driver="GPKG", append=tmp.exists(),
                                    promote_to_multi=True)
            total += len(frame)
        if not tmp.exists():  # no polygon anywhere: an empty layer with the same columns
            empty = gpd.GeoDataFrame({"scene": [], "scene_path": [], "prompt": [], "score": [], "pixels": [],
                                      "area_m2": []}, geometry=[], crs="EPSG:4326")
            empty = empty.astype({"score": "float64", "pixels": "int64", "area_m2": "float64"})
            pyogrio.write_dataframe(empty, tmp, layer=VECTOR_LAYER, driver="GPKG", geometry_type="MultiPolygon")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return total


# ------------------------------------------------------------------------------------------------ publish
def publish(out: str | Path, source: str | None = None, files=None) -> PublishReport:
    """Write the STAC Items, the Catalog, the mosaics and the merged vectors of the output folder ``out``
    (module docstring). ``source`` is where the pair files are read (default: ``out``; a ``/vsis3/...`` prefix
    when they were uploaded to an object store, ``files`` then tests and dates files there)."""
    out = Path(out)
    manifest = read_manifest(out)
    root = str(out) if source is None else source
    files = files or LocalFiles()
    exists = files.exists
    report = PublishReport()
    item_hrefs: list[str] = []
    by_prompt: dict[str, list[tuple[Pair, MaskInfo, str | None]]] = {}
    for pair in pairs_of(manifest):
        info = mask_info(join(root, f"{pair.output_dir}/mask.tif"), files)
        if info is None:
            report.notes.append(f"{pair.output_dir}/mask.tif is missing; no Item")
            continue
        assets = {"mask": "mask.tif"}
        for key, name in (("prob", "prob.tif"), ("coarse", "coarse.tif")):
            if exists(join(root, f"{pair.output_dir}/{name}")):
                assets[key] = name
        vectors = vector_file(root, pair.output_dir, exists)
        if vectors is not None:
            assets["vectors"] = posixpath.basename(vectors)
        href = f"{pair.output_dir}/{ITEM}"
        catalog_href = posixpath.relpath(CATALOG, pair.output_dir)
        item = build_item(pair, info, assets, catalog_href)
        write_json(out / href, item.to_dict(include_self_link=False, transform_hrefs=False))
        item_hrefs.append(href)
        report.written.append(href)
        by_prompt.setdefault(pair.output_dir.rsplit("/", 1)[1], []).append((pair, info, vectors))
    for prompt_dir, entries in by_prompt.items():
        write_mosaics(out, prompt_dir, [(pair, info) for pair, info, _ in entries], report, source)
        merged = out / MOSAIC_DIR / prompt_dir / MERGED_VECTORS
        with_vectors = [(pair, vectors) for pair, _, vectors in entries if vectors is not None]
        if with_vectors:
            merge_vectors(with_vectors, merged, report.notes)
            report.merged_vectors.append(merged.relative_to(out).as_posix())
    report.written += report.mosaics + report.merged_vectors + [CATALOG]
    catalog = build_catalog(manifest, item_hrefs)
    try:
        write_json(out / CATALOG, catalog.to_dict(include_self_link=False, transform_hrefs=False))
    except OSError as exc:
        raise OutputError(f"cannot write the catalog ({exc.strerror})", out / CATALOG) from exc
    report.items = len(item_hrefs)
    for note in report.notes:
        console.warn(note)
    console.info(f"published {report.items} STAC item(s) in {out / CATALOG}; {len(report.mosaics)} mosaic(s), "
                 f"{len(report.merged_vectors)} merged vector file(s) under {out / MOSAIC_DIR}")
    return report


def publish_output(out: Path, remote=None) -> PublishReport:
    """:func:`publish` of a local output folder, or of an object-store output (``remote``, a
    :class:`rrsis_cli.store.RemoteOutput`): read from the store, written in the staging folder ``out``, then
    uploaded in writing order (the catalog last) and removed from the staging folder."""
    if remote is None:
        return publish(out)
    with remote.gdal_env():
        report = publish(out, source=remote.vsi(), files=remote)
    remote.upload_files(out, report.written)
    return report


def publish_folder(out: str) -> PublishReport:
    """``rrsis publish OUT``: a local output folder, or an object-store output whose ``manifest.json`` is first
    downloaded into its staging folder (:mod:`rrsis_cli.store`)."""
    from rrsis_cli.store import RemoteOutput, is_remote_output

    if not is_remote_output(out):
        if not Path(out).is_dir():
            raise UsageError("no such output folder", out)
        return publish_output(Path(out))
    remote = RemoteOutput.parse(out)
    remote.download("manifest.json", remote.staging / "manifest.json")
    return publish_output(remote.staging, remote)

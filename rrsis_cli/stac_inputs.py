"""STAC inputs: scenes from STAC Items, ItemCollections, Catalogs / Collections and STAC API searches.

* An INPUT whose name ends in ``.json`` (a local file, an ``http(s)://`` URL, an ``s3://`` or ``gs://`` object, given on the
  command line or listed in a ``.txt`` file) is read with pystac: a ``Feature`` is one Item, a
  ``FeatureCollection`` an ItemCollection, a ``Catalog`` or ``Collection`` is walked for all its items (recursive,
  through child catalogs). ``--stac-search URL`` (with ``--collections``, ``--bbox``, ``--datetime``,
  ``--max-items``) adds the items a STAC API search returns (pystac-client).
* Reading the JSON (:func:`stac_reader`): local files and ``http(s)`` as pystac reads them; S3 through boto3 with
  the one client configuration of the S3 metadata reads and uploads (:func:`rrsis_cli.remote.s3_client`, from the
  variables GDAL's ``/vsis3/`` reads), so a catalog's relative links and assets on S3 resolve to ``s3://`` objects.
  GCS (``gs://``) through google-cloud-storage with the configuration :mod:`rrsis_cli.gcs` shares with GDAL's
  ``/vsigs/`` (the ``rrsis[gcs]`` extra), Azure (``az://``) through azure-storage-blob (:mod:`rrsis_cli.azure`, the
  ``rrsis[azure]`` extra). STAC JSON on another ``/vsi`` file system is refused
  with one line: pystac needs the file's text, which GDAL could read but rasterio and pyogrio do not expose (no
  ``osgeo`` bindings). Give such a file's ``https://`` URL (public or signed) or a local copy; rasters on those
  stores are read as usual.
* Each Item is one scene. Its raster is the asset ``--asset KEY`` (default ``visual``), or, with
  ``--stac-bands red,green,blue``, single-band assets chosen by their ``eo:bands`` common names (STAC 1.0
  ``eo:bands``, or STAC 1.1 ``bands`` with ``eo:common_name``) and stacked, in that order, into an in-memory VRT
  (no file written; GDAL reads each COG's byte ranges as for one file). The assets of a stack must share one grid
  (size, transform, CRS).
* The scene key (:func:`rrsis_cli.inputs.find_scenes`) is the item id (characters outside ``A-Za-z0-9._-``
  replaced by ``-``) then ``-<8 hex>`` of a fingerprint of the item id, the asset keys and each asset's own
  fingerprint (for a remote asset its content fingerprint: :mod:`rrsis_cli.remote`).
* The scene keeps the source Item's absolute self href, id, collection id and asset keys
  (:class:`~rrsis_cli.inputs.Scene`), for outputs that link back to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from rrsis_cli.azure import azure_location, service_client
from rrsis_cli.errors import InputError, UsageError
from rrsis_cli.gcs import gcs_client, gcs_location
from rrsis_cli.remote import RemotePath, dataset_path, is_remote, redact, s3_client, s3_location

DEFAULT_ASSET = "visual"
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}
COLOUR_NAMES = {"red": "Red", "green": "Green", "blue": "Blue"}
STAC_READ_TIMEOUT = 60.0  # seconds to connect to, and to read from, S3 for one STAC file


@dataclass
class StacOptions:
    """How STAC inputs become scenes: the asset (``asset``) or the common names of single-band assets to stack
    (``bands``), and an optional STAC API search (``search`` URL with its filters)."""

    asset: str | None = None
    bands: list[str] | None = None
    search: str | None = None
    collections: list[str] | None = None
    bbox: list[float] | None = None
    datetime: str | None = None
    max_items: int | None = None

    def check(self) -> None:
        """UsageError for options that contradict each other or are malformed."""
        if self.asset and self.bands:
            raise UsageError("--asset and --stac-bands exclude each other: one asset, or single-band assets "
                             "stacked by common name")
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise UsageError(f"--stac-bands takes 1 or 3 common names (e.g. red,green,blue), got "
                             f"{','.join(self.bands)}")
        if self.bbox is not None and (len(self.bbox) != 4 or self.bbox[0] > self.bbox[2]
                                      or self.bbox[1] > self.bbox[3]):
            raise UsageError("--bbox must be minx,miny,maxx,maxy (lon/lat, min <= max)")
        filters = self.collections or self.bbox or self.datetime or self.max_items
        if filters and not self.search:
            raise UsageError("--collections, --bbox, --datetime and --max-items filter a --stac-search")


def parse_list(text: str | list | None) -> list[str] | None:
    """``a,b,c`` -> ["a", "b", "c"] (a list from a --config file passes through)."""
    if text is None or isinstance(text, list):
        return text
    return [part.strip() for part in str(text).split(",") if part.strip()]


def parse_bbox(text: str | list | None) -> list[float] | None:
    """``minx,miny,maxx,maxy`` -> four floats (UsageError otherwise)."""
    if text is None or isinstance(text, list):
        return text
    try:
        return [float(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise UsageError(f"--bbox must be four numbers minx,miny,maxx,maxy, got {text!r}") from exc


def aoi_bbox(text: str) -> list[float]:
    """The lon/lat bounding box of an ``--aoi`` (:mod:`rrsis_cli.aoi`), the default ``--bbox`` of a search."""
    from rrsis_cli.aoi import parse_aoi

    return list(parse_aoi(text).bounds_in("EPSG:4326"))


def is_stac_input(item: str | Path | RemotePath) -> bool:
    """An INPUT read as STAC: a name whose path part ends in ``.json``."""
    text = item.given if isinstance(item, RemotePath) else str(item)
    return re.split(r"[?#]", text, maxsplit=1)[0].lower().endswith(".json")


def read_stac_text(href: str, read_default) -> str:
    """The text of a STAC file: an S3 object (``s3://``, ``/vsis3/``) through boto3
    (:func:`rrsis_cli.remote.s3_client`); a GCS object (``gs://``, ``/vsigs/``) through google-cloud-storage
    (:func:`rrsis_cli.gcs.gcs_client`, the ``rrsis[gcs]`` extra); an Azure blob (``az://``, ``/vsiaz/``) through
    azure-storage-blob (:func:`rrsis_cli.azure.service_client`, ``rrsis[azure]``); a local file or an ``http(s)`` URL (also as ``/vsicurl/…``) by
    ``read_default`` (pystac's own reader). InputError for another object store (see the module's notes)."""
    location = s3_location(href)
    if location is not None:
        bucket, key = location
        body = s3_client(STAC_READ_TIMEOUT).get_object(Bucket=bucket, Key=key)["Body"]
        return body.read().decode("utf-8")
    location = gcs_location(href)
    if location is not None:
        bucket, key = location
        return gcs_client().bucket(bucket).blob(key).download_as_bytes(timeout=STAC_READ_TIMEOUT).decode("utf-8")
    location = azure_location(href)
    if location is not None:
        blob = service_client().get_blob_client(*location)
        return blob.download_blob(timeout=STAC_READ_TIMEOUT).readall().decode("utf-8")
    if href.startswith("/vsicurl/"):
        href = href[len("/vsicurl/"):]
    if is_remote(href) and not href.startswith(("http://", "https://")):
        raise InputError("STAC JSON is read from local files, http(s)://, s3://, gs:// and az:// only (pystac needs its "
                         "text, which GDAL's other file systems do not give Python here): give its https:// URL or "
                         "a local copy", RemotePath(href))
    return read_default(href)


def stac_reader():
    """pystac's reader (a ``StacIO``) for the STAC files given and every link a catalog walk follows:
    :func:`read_stac_text`. pystac is imported here, when STAC is read, not with the command line."""
    from pystac.stac_io import DefaultStacIO

    class RemoteStacIO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            return read_stac_text(href, super().read_text_from_href)

    return RemoteStacIO()


def read_stac_items(href: str) -> list:
    """The pystac Items of a STAC file, URL or S3 object: an Item, an ItemCollection, or every item of a Catalog
    or Collection (recursive; links read with :func:`stac_reader`). InputError naming the file when it cannot be
    read or is not STAC."""
    import pystac

    shown = redact(href)
    stac_io = stac_reader()
    try:
        data = stac_io.read_json(href)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - not found, not JSON, HTTP or S3 error: one line
        raise InputError(f"cannot read STAC JSON ({one_line(exc)})",
                         RemotePath(href) if is_remote(href) else href) from exc
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(data, href=href)]
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data)
            return [_with_self_href(item, href) for item in collection.items]
        if kind in ("Catalog", "Collection"):
            root = pystac.read_dict(data, href=href, stac_io=stac_io)
            return list(root.get_items(recursive=True))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed STAC, or a link that cannot be read: one line
        raise InputError(f"not valid STAC {kind} ({one_line(exc)})", shown) from exc
    raise InputError(f"not a STAC Item, ItemCollection, Catalog or Collection (type {kind!r})", shown)


def _with_self_href(item, collection_href: str):
    """An item of an ItemCollection without a self link: its relative asset hrefs resolve against the
    collection's file."""
    if item.get_self_href() is None:
        item.set_self_href(collection_href)
    return item


def search_items(options: StacOptions) -> list:
    """The Items of a STAC API search (pystac-client), at most ``max_items``. InputError naming the API on
    failure."""
    from pystac_client import Client

    try:
        client = Client.open(options.search)
        search = client.search(collections=options.collections, bbox=options.bbox, datetime=options.datetime,
                               max_items=options.max_items)
        return list(search.items())
    except Exception as exc:  # noqa: BLE001 - the API's or the network's message, one line
        raise InputError(f"STAC API search failed ({one_line(exc)})", RemotePath(options.search)) from exc


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without HTML markup (an error page's text), secrets redacted, at
    most 300 characters."""
    text = re.sub(r"<[^>]+>", " ", str(exc)) or type(exc).__name__
    return redact(" ".join(text.split()))[:300]


@dataclass(frozen=True)
class StacSource:
    """One Item as a scene-to-be: ``path`` what GDAL opens (the asset, or the VRT stacking the band assets),
    ``asset_paths`` the assets read, ``asset_keys`` their keys, and the Item's self href, id and collection id.
    :func:`rrsis_cli.inputs.find_scenes` turns it into a keyed :class:`~rrsis_cli.inputs.Scene`."""

    path: Path | RemotePath
    asset_paths: tuple[Path | RemotePath, ...]
    asset_keys: tuple[str, ...]
    item_href: str | None
    item_id: str
    collection: str | None

    @property
    def stem(self) -> str:
        """The item id as a folder name: characters outside ``A-Za-z0-9._-`` replaced by ``-``."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.item_id).strip("-") or "item"


def find_stac_sources(inputs: list, options: StacOptions | None) -> list[StacSource]:
    """The Items of the STAC inputs among ``inputs`` and of ``options.search``, in that order."""
    options = options or StacOptions()
    items = []
    for given in inputs:
        if is_stac_input(given):
            href = given.given if isinstance(given, RemotePath) else str(given)
            items += read_stac_items(href if is_remote(href) else str(Path(href).resolve()))
    if options.search:
        items += search_items(options)
    return [item_source(item, options) for item in items]


def asset_href(item, key: str) -> str:
    asset = item.assets[key]
    href = asset.get_absolute_href() or asset.href
    return href


def common_names(asset) -> list[str]:
    """The common names of an asset's bands: STAC 1.0 ``eo:bands`` or STAC 1.1 ``bands`` (``eo:common_name``)."""
    fields = asset.extra_fields
    if "eo:bands" in fields:
        return [b.get("common_name", "") for b in fields["eo:bands"]]
    if "bands" in fields:
        return [b.get("eo:common_name", "") for b in fields["bands"]]
    return []


def band_assets(item, names: list[str]) -> list[str]:
    """The keys of the single-band assets whose common names are ``names``, in that order; UsageError naming
    the item and what it has otherwise."""
    keys = []
    available = {key: common_names(asset) for key, asset in item.assets.items()}
    for name in names:
        matches = [key for key, found in available.items() if found == [name]]
        if not matches:
            have = ", ".join(f"{k} ({'/'.join(v)})" for k, v in available.items() if v) or "no eo:bands"
            raise UsageError(f"STAC item {item.id}: no single-band asset with common name {name!r} (assets: "
                             f"{have})")
        keys.append(matches[0])
    return keys


def item_source(item, options: StacOptions) -> StacSource:
    """What one Item is read from: its asset, or the VRT stacking its band assets."""
    if options.bands:
        keys = band_assets(item, options.bands)
        paths = [dataset_path(asset_href(item, key)) for key in keys]
        label = f"{item.id}[{','.join(options.bands)}]"
        path = RemotePath(stack_vrt(paths, options.bands, label), label=label)
    else:
        key = options.asset or DEFAULT_ASSET
        if key not in item.assets:
            raise UsageError(f"STAC item {item.id}: no asset {key!r} (assets: {', '.join(item.assets) or 'none'}); "
                             "choose one with --asset, or stack single-band assets with --stac-bands")
        keys = [key]
        paths = [dataset_path(asset_href(item, key))]
        path = paths[0]
    return StacSource(path, tuple(paths), tuple(keys), item.get_self_href(), item.id, item.collection_id)


def stack_vrt(paths: list, names: list[str], label: str) -> str:
    """VRT XML stacking band 1 of each of ``paths`` (one grid: size, transform, CRS) in order; band descriptions
    are the common names. Only headers are read (GDAL opens the sources lazily from ``SourceProperties``)."""
    import rasterio

    from rrsis_cli.scene import open_raster

    headers: list[dict[str, Any]] = []
    for path in paths:
        try:
            with open_raster(path) as ds:
                headers.append({"width": ds.width, "height": ds.height, "transform": ds.transform,
                                "crs": ds.crs, "dtype": ds.dtypes[0], "nodata": ds.nodata,
                                "block": ds.block_shapes[0], "count": ds.count})
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"band asset cannot be opened ({redact(str(exc).splitlines()[0])})", path) from exc
    first = headers[0]
    for path, header in zip(paths, headers, strict=True):
        if header["count"] != 1:
            raise InputError(f"{label}: band asset has {header['count']} bands, not 1", path)
        if (header["width"], header["height"], header["transform"], header["crs"]) != \
                (first["width"], first["height"], first["transform"], first["crs"]):
            raise InputError(f"{label}: band assets are on different grids (size, transform or CRS differ); "
                             "resample them to one grid first", path)
    gt = ", ".join(repr(float(v)) for v in first["transform"].to_gdal())
    srs = f"<SRS>{escape(first['crs'].to_wkt())}</SRS>" if first["crs"] else ""
    bands = []
    for number, (path, header, name) in enumerate(zip(paths, headers, names, strict=True), start=1):
        gdal_type = GDAL_TYPES[header["dtype"]]
        nodata = "" if header["nodata"] is None else f"<NoDataValue>{header['nodata']!r}</NoDataValue>"
        colour = f"<ColorInterp>{COLOUR_NAMES[name]}</ColorInterp>" if name in COLOUR_NAMES else ""
        by, bx = header["block"]
        bands.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{number}">{nodata}{colour}'
            f"<Description>{escape(name)}</Description><SimpleSource>"
            f'<SourceFilename relativeToVRT="0">{escape(str(path.gdal if isinstance(path, RemotePath) else path))}'
            f"</SourceFilename><SourceBand>1</SourceBand>"
            f'<SourceProperties RasterXSize="{first["width"]}" RasterYSize="{first["height"]}" '
            f'DataType="{gdal_type}" BlockXSize="{bx}" BlockYSize="{by}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{first["width"]}" ySize="{first["height"]}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{first["width"]}" ySize="{first["height"]}"/>'
            "</SimpleSource></VRTRasterBand>")
    return (f'<VRTDataset rasterXSize="{first["width"]}" rasterYSize="{first["height"]}">{srs}'
            f"<GeoTransform>{gt}</GeoTransform>{''.join(bands)}</VRTDataset>")

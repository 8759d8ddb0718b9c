"""Remote scenes, STAC inputs and --aoi (issue 19, inputs): real servers on loopback only (tests/loopback.py),
started and stopped here; the null model (a per-pixel function, no weights) keeps every run fast, and its masks
can be compared pixel for pixel between a local file, its URL, its STAC item and its AOI window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from front_helpers import run_cli
from rasterio.transform import from_origin

from loopback import RangeServer, folder_server, moto_s3
from rrsis_cli.errors import UsageError
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.remote import RemotePath, gdal_name, redact

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 1024  # pixels: 3 MiB of noise, tiles of 256 px
ORIGIN = (500000.0, 4001024.0)  # EPSG:32618, 1 m pixels
PROMPT = "the red roofs"
OPTIONS = {"vectors": False, "read_workers": 1}


def write_cog(path: Path, data: np.ndarray) -> Path:
    """A Cloud-Optimised GeoTIFF (tiles of 256, overviews) of ``data`` (C, H, W) uint8."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "uint8",
               "crs": "EPSG:32618", "transform": from_origin(*ORIGIN, 1, 1)}
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
        with memory.open() as src:
            copy(src, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with a 3-band COG (noise: compression cannot hide what is read), its three bands as single-band
    COGs, served by a Range-capable loopback server."""
    root = tmp_path_factory.mktemp("site")
    data = np.random.default_rng(7).integers(0, 256, size=(3, SIZE, SIZE), dtype=np.uint8)
    write_cog(root / "scene.tif", data)
    for name in ("corner.tif", "whole.tif"):  # read by one byte-counting test each: GDAL's /vsicurl/ cache
        # lives as long as the process, so a URL read before would be counted short
        (root / name).write_bytes((root / "scene.tif").read_bytes())
    for index, name in enumerate(("B04", "B03", "B02")):  # red, green, blue
        write_cog(root / f"{name}.tif", data[index:index + 1])
    server = RangeServer(root).start()
    yield server, root
    server.stop()


def run(inputs, out: Path, **options):
    stac = options.pop("stac", None)
    return predict([str(i) for i in inputs], "null", [PROMPT], out, PredictOptions(**{**OPTIONS, **options}),
                   stac=stac)


def requests_of(server: RangeServer, path: str) -> int:
    """How many requests the server had for ``path`` (side-car probes are for other paths)."""
    return sum(1 for _, requested, *_ in server.requests if requested == path)


def only_mask(out: Path) -> Path:
    masks = sorted(out.rglob("mask.tif"))
    assert len(masks) == 1, masks
    return masks[0]


def pixels(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs, ds.profile["blockxsize"], ds.profile["compress"]


@pytest.fixture(scope="module")
def local_mask(site, tmp_path_factory):
    """The mask of the COG read from the local disk: what every remote read must reproduce."""
    _, root = site
    out = tmp_path_factory.mktemp("local")
    assert run([root / "scene.tif"], out).exit_code == 0
    return pixels(only_mask(out))


def same_pixels(got, want) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]


# ------------------------------------------------------------------------------------------------- names
def test_urls_map_to_gdal_file_systems_and_never_collapse():
    assert gdal_name("https://host/a//b.tif") == "/vsicurl/https://host/a//b.tif"
    assert gdal_name("s3://bucket/key/x.tif") == "/vsis3/bucket/key/x.tif"
    assert gdal_name("gs://bucket/x.tif") == "/vsigs/bucket/x.tif"
    assert gdal_name("az://container/x.tif") == "/vsiaz/container/x.tif"
    assert gdal_name("/vsizip//data/a.zip/x.tif") == "/vsizip//data/a.zip/x.tif"
    path = RemotePath("https://host/dir/x.tif?X-Amz-Signature=abc&X-Amz-Credential=key")
    assert (path.name, path.stem, path.suffix) == ("x.tif", "x", ".tif")
    assert "abc" not in str(path) and "key" not in str(path) and str(path).startswith("https://host/dir/x.tif?")
    with pytest.raises(UsageError, match="ftp"):
        gdal_name("ftp://host/x.tif")


def test_redact_hides_credentials_and_query_values():
    text = redact("HTTP 403 on https://user:pw@h/x.tif?sig=SECRET&se=2024 and s3://b/k")
    assert "pw" not in text and "SECRET" not in text and "2024" not in text
    assert "https://***@h/x.tif?sig=***&se=***" in text and "s3://b/k" in text


# ------------------------------------------------------------------------------------------------- http
def test_url_gives_the_mask_of_the_local_file(site, local_mask, tmp_path, capsys):
    server, _ = site
    code, _, err = run_cli(capsys, "predict", f"{server.url}/scene.tif", "--model", "null", "--prompt", PROMPT,
                           "--out", tmp_path, "--no-vectors", "--read-workers", "1")
    assert code == 0, err
    same_pixels(pixels(only_mask(tmp_path)), local_mask)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["inputs"][0]["path"] == f"{server.url}/scene.tif"
    assert manifest["inputs"][0]["size"] == (Path(site[1]) / "scene.tif").stat().st_size  # from the server


def mask_and_tags(out: Path) -> tuple[str, dict[str, str]]:
    """(the mask's path relative to ``out``: scene key and prompt key, its tags)."""
    mask = only_mask(out)
    with rasterio.open(mask) as ds:
        return mask.relative_to(out).as_posix(), ds.tags()


def test_url_run_writes_what_the_local_run_writes(site, tmp_path):
    """Same scene key (output directory), same fingerprint, and ``mask.tif`` byte for byte the local run's: no tag
    says where the scene was read from (``rrsis_scene`` is its file name; the manifest has the URL)."""
    server, root = site
    local = run([root / "scene.tif"], tmp_path / "local")
    remote = run([f"{server.url}/scene.tif"], tmp_path / "url")
    assert local.exit_code == remote.exit_code == 0
    assert remote.inputs[0]["key"] == local.inputs[0]["key"]
    assert remote.inputs[0]["fingerprint"] == local.inputs[0]["fingerprint"]
    assert remote.inputs[0]["path"] == f"{server.url}/scene.tif"
    local_mask, local_tags = mask_and_tags(tmp_path / "local")
    remote_mask, remote_tags = mask_and_tags(tmp_path / "url")
    assert remote_mask == local_mask and remote_tags == local_tags and local_tags["rrsis_scene"] == "scene.tif"
    assert (tmp_path / "url" / remote_mask).read_bytes() == (tmp_path / "local" / local_mask).read_bytes()


def test_url_fingerprint_two_ranged_gets_then_one_byte(site, cache_dir):
    """Cold: the first and the last MiB (two ranged GETs, nothing else), the local file's fingerprint; the cache
    file then holds it, and a rerun asks the server one byte."""
    from rrsis_cli.inputs import SAMPLE_BYTES, content_fingerprint, find_scenes

    server, root = site
    size = (root / "scene.tif").stat().st_size
    assert size > 2 * SAMPLE_BYTES  # the tail is the last MiB
    local = find_scenes([root / "scene.tif"])[0]
    server.reset_counts()
    cold = find_scenes([f"{server.url}/scene.tif"])[0]
    assert server.ranges == [("/scene.tif", 0, SAMPLE_BYTES - 1), ("/scene.tif", size - SAMPLE_BYTES, size - 1)]
    assert (cold.key, cold.fingerprint, cold.size) == (local.key, local.fingerprint, size)
    assert (cold.fingerprint, cold.size) == content_fingerprint(root / "scene.tif")
    assert (cache_dir / "remote-fingerprints.json").is_file()
    server.reset_counts()
    warm = find_scenes([f"{server.url}/scene.tif?X-Amz-Signature=other"])[0]  # re-signed: same object
    assert server.ranges == [("/scene.tif", 0, 0)] and len(server.requests) == 1
    assert (warm.key, warm.fingerprint, warm.size) == (local.key, local.fingerprint, size)


def test_replaced_objects_small_objects_and_a_broken_cache(tmp_path, cache_dir, monkeypatch):
    """A replaced object (new ETag) is sampled again and gets its new content's fingerprint; an object of at most
    1 MiB costs one GET; a cache file that is garbage is ignored (and replaced), one that cannot be written is
    no error."""
    from rrsis_cli.inputs import SAMPLE_BYTES, content_fingerprint, find_scenes

    root = tmp_path / "site"
    root.mkdir()
    rng = np.random.default_rng(3)
    mid, small = root / "mid.tif", root / "small.tif"
    mid.write_bytes(rng.bytes(SAMPLE_BYTES + 5000))  # the tail starts right after the head
    small.write_bytes(rng.bytes(1000))
    server = RangeServer(root).start()
    try:
        first = find_scenes([f"{server.url}/mid.tif"])[0]
        assert first.fingerprint == content_fingerprint(mid)[0]
        assert server.ranges == [("/mid.tif", 0, SAMPLE_BYTES - 1), ("/mid.tif", SAMPLE_BYTES, SAMPLE_BYTES + 4999)]
        mid.write_bytes(rng.bytes(SAMPLE_BYTES + 5000))  # same name and size, new content
        os.utime(mid, ns=(mid.stat().st_mtime_ns + 10**9,) * 2)  # the loopback ETag follows the mtime
        server.reset_counts()
        replaced = find_scenes([f"{server.url}/mid.tif"])[0]
        assert replaced.fingerprint == content_fingerprint(mid)[0] != first.fingerprint
        assert [r[1:] for r in server.ranges] == [(0, 0), (0, SAMPLE_BYTES - 1), (SAMPLE_BYTES, SAMPLE_BYTES + 4999)]
        server.reset_counts()
        assert find_scenes([f"{server.url}/small.tif"])[0].fingerprint == content_fingerprint(small)[0]
        assert server.ranges == [("/small.tif", 0, 999)] and requests_of(server, "/small.tif") == 1
        (cache_dir / "remote-fingerprints.json").write_bytes(b"\x00{not json")
        server.reset_counts()
        assert find_scenes([f"{server.url}/small.tif"])[0].fingerprint == content_fingerprint(small)[0]
        assert requests_of(server, "/small.tif") == 1  # sampled again: the garbage was no cache
        assert "small.tif" in (cache_dir / "remote-fingerprints.json").read_text()  # and it was replaced
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        monkeypatch.setenv("RRSIS_CACHE_DIR", str(blocked))
        assert find_scenes([f"{server.url}/small.tif"])[0].fingerprint == content_fingerprint(small)[0]
    finally:
        server.stop()


def test_cache_merges_writers_and_keeps_the_newest(tmp_path, monkeypatch):
    from rrsis_cli import remote
    from rrsis_cli.remote import FingerprintCache, ObjectInfo

    path = tmp_path / "cache.json"
    one, two = FingerprintCache(path), FingerprintCache(path)
    assert not one.knows("/vsicurl/http://h/a.tif")  # reads the (missing) file: empty
    assert not two.knows("/vsicurl/http://h/a.tif")
    one.remember("/vsicurl/http://h/a.tif", ObjectInfo(10, '"e1"', None), "fa")
    two.remember("/vsicurl/http://h/b.tif", ObjectInfo(20, None, "Tue, 01 Dec 2026 10:00:00 GMT"), "fb")
    two.remember("/vsicurl/http://h/c.tif", ObjectInfo(30, None, None), "fc")  # size alone: not kept
    one.save()
    two.save()  # another process: merged, not overwritten
    merged = FingerprintCache(path)
    assert merged.lookup("/vsicurl/http://h/a.tif", ObjectInfo(10, '"e1"', None)) == "fa"
    assert merged.lookup("/vsicurl/http://h/a.tif", ObjectInfo(10, '"e2"', None)) is None  # replaced object
    assert merged.lookup("/vsicurl/http://h/b.tif", ObjectInfo(20, None, "Tue, 01 Dec 2026 10:00:00 GMT")) == "fb"
    assert not merged.knows("/vsicurl/http://h/c.tif")
    monkeypatch.setattr(remote, "CACHE_ENTRIES", 2)
    merged.remember("/vsicurl/http://h/d.tif", ObjectInfo(40, '"e4"', None), "fd")
    merged.save()
    kept = FingerprintCache(path)
    assert kept.knows("/vsicurl/http://h/d.tif") and len(kept.entries) == 2  # the newest two
    assert not list(tmp_path.glob("*.tmp"))


def test_other_file_systems_keep_the_name_fingerprint(monkeypatch):
    """Other ``/vsi`` names, and ``/vsigs/`` and ``/vsiaz/`` without their store's client: no bytes can be read
    here without ``osgeo``, so their fingerprint is a hash of the name (documented; ``--overwrite`` for an object
    replaced under its name). With the clients: tests/test_gcs.py, tests/test_azure.py."""
    import hashlib

    from rrsis_cli.inputs import content_fingerprint

    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # the rrsis[gcs] extra not installed
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)  # nor rrsis[azure]
    for given, gdal in (("gs://b/x.tif", "/vsigs/b/x.tif"), ("az://c/x.tif?sig=1", "/vsiaz/c/x.tif"),
                        ("/vsizip//data/a.zip/x.tif", "/vsizip//data/a.zip/x.tif")):
        assert content_fingerprint(RemotePath(given)) == (hashlib.sha256(f"remote:{gdal}".encode()).hexdigest(), None)


def test_transient_errors_are_retried(site, local_mask, tmp_path, monkeypatch):
    from rrsis_cli.inputs import content_fingerprint, find_scenes

    server, root = site
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    server.failures["/scene.tif"] = 2  # both answers to the fingerprint's first ranged GET (cold)
    cold = find_scenes([f"{server.url}/scene.tif"])[0]
    assert server.failures["/scene.tif"] == 0
    assert (cold.fingerprint, cold.size) == content_fingerprint(root / "scene.tif")  # the key did not change
    server.failures["/scene.tif"] = 2  # the fingerprint's one-byte request (warm), then GDAL's first one
    manifest = run([f"{server.url}/scene.tif"], tmp_path)
    assert manifest.exit_code == 0 and server.failures["/scene.tif"] == 0
    assert manifest.inputs[0]["fingerprint"] == cold.fingerprint
    same_pixels(pixels(only_mask(tmp_path)), local_mask)


def warm_fingerprint(server: RangeServer, name: str) -> None:
    """Fingerprint ``name`` once (the cache then holds it) and forget the bytes it cost: a fixed cost per scene
    (two ranged GETs of at most 1 MiB, :func:`test_url_and_local_file_share_key_tags_and_pixels` counts them),
    which the fixtures of a few MiB would otherwise hide GDAL's reads behind."""
    from rrsis_cli.inputs import find_scenes

    server.reset_counts()
    find_scenes([f"{server.url}/{name}"])
    assert {path for path, *_ in server.ranges} == {f"/{name}"}
    server.reset_counts()


def test_aoi_on_a_corner_fetches_a_small_part_and_is_georeferenced(site, local_mask, tmp_path):
    server, root = site
    warm_fingerprint(server, "corner.tif")
    aoi = f"{ORIGIN[0]},{ORIGIN[1] - 200},{ORIGIN[0] + 200},{ORIGIN[1]},EPSG:32618"  # top-left 200 x 200 m
    manifest = run([f"{server.url}/corner.tif"], tmp_path, aoi=aoi)
    assert manifest.exit_code == 0
    file_size = (root / "corner.tif").stat().st_size
    assert server.bytes_sent < file_size / 8, (server.bytes_sent, file_size)  # GDAL's reads + 1 byte (warm key)
    data, transform, crs, *_ = pixels(only_mask(tmp_path))
    assert data.shape == (1, 200, 200) and transform == from_origin(*ORIGIN, 1, 1) and crs == "EPSG:32618"
    np.testing.assert_array_equal(data, local_mask[0][:, :200, :200])  # per-pixel model: the crop of the scene
    assert manifest.inputs[0]["aoi_window"]["width"] == 200


def test_a_whole_remote_scene_is_fetched_once(site, local_mask, tmp_path):
    """The read threads cut their tiles from tile rows fetched once, whole, on one shared handle: no byte is
    fetched twice (a handle per thread fetched this scene 1.25 times: their caches are separate and overlapping
    tiles share blocks), the overviews are not fetched, and the mask is the local file's."""
    server, root = site
    warm_fingerprint(server, "whole.tif")  # the fingerprint's samples are read apart from GDAL, not counted here
    manifest = run([f"{server.url}/whole.tif"], tmp_path, read_workers=2)
    assert manifest.exit_code == 0
    sent, distinct = server.bytes_sent, server.distinct_bytes()
    assert sent <= 1.01 * distinct, (sent, distinct)
    assert distinct < (root / "whole.tif").stat().st_size, distinct  # the overviews are not needed
    same_pixels(pixels(only_mask(tmp_path)), local_mask)


def write_scene(path: Path, data: np.ndarray, nodata=None, mask: np.ndarray | None = None) -> Path:
    """A tiled GeoTIFF (128-px blocks) of ``data`` (C, H, W), with a nodata value or an internal mask."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
               "crs": "EPSG:32618", "transform": from_origin(*ORIGIN, 1, 1), "nodata": nodata, "tiled": True,
               "blockxsize": 128, "blockysize": 128}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
    return path


@pytest.mark.parametrize("kind", ["uint8-nodata", "uint16-mask", "float-nan"])
def test_whole_row_reads_equal_tile_reads(tmp_path, kind):
    """:class:`WholeRowReader` (tiles cut from whole tile rows, threads sharing it) gives each tile's values and
    whether it holds data exactly as the reader's own window reads, edge and empty tiles included."""
    from concurrent.futures import ThreadPoolExecutor

    from rrsis_cli.scene import SceneReader, WholeRowReader
    from rrsis_cli.tiling import TileGrid

    rng = np.random.default_rng(3)
    height, width, tile = 300, 410, 128
    dtype = {"uint8-nodata": np.uint8, "uint16-mask": np.uint16, "float-nan": np.float32}[kind]
    data = rng.integers(1, 200, size=(3, height, width)).astype(dtype)
    data[:, :150, 250:] = 0  # tiles without data (nodata value, masked, NaN)
    mask = None
    if kind == "float-nan":
        data[:, :150, 250:] = np.nan
    if kind == "uint16-mask":
        mask = np.full((height, width), 255, np.uint8)
        mask[:150, 250:] = 0
    path = write_scene(tmp_path / "scene.tif", data, nodata=0 if kind == "uint8-nodata" else None, mask=mask)
    reader = SceneReader(path, None)
    grid = TileGrid.for_scene(height, width, tile, 0.25)
    origins = [grid.origin(i) for i in range(len(grid))] + [(-20, -30), (height - 40, width - 50), (height, 0)]
    want = []
    for row, col in origins:
        out = np.empty((3, tile, tile), reader.raw_dtype)
        want.append((out, reader.read_raw(row, col, tile, out)))
    rows = WholeRowReader(reader.clone())

    def read(origin):
        out = np.empty((3, tile, tile), reader.raw_dtype)
        return out, rows.read_raw(*origin, tile, out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(read, origins))
    rows.close()
    reader.close()
    assert [has for _, has in want].count(False) >= 2  # empty tiles and the one outside the scene
    for (want_values, want_has), (values, has) in zip(want, got, strict=True):
        np.testing.assert_array_equal(values, want_values)
        assert has == want_has


def test_remote_scene_threads_share_one_reader_and_fail_as_one(site, tmp_path):
    """A remote scene's clones for whole rows are one :class:`WholeRowReader`; a fetch that fails (here the
    server starts refusing the file) raises the reader's one-line InputError in every thread that needed that
    row, and is not kept: the next read asks again."""
    from rrsis_cli.errors import InputError
    from rrsis_cli.scene import SceneReader, WholeRowReader

    server, root = site
    (root / "refused.tif").write_bytes((root / "scene.tif").read_bytes())
    reader = SceneReader(RemotePath(f"{server.url}/refused.tif"), None)
    try:
        rows = reader.clone(whole_rows=True)
        assert isinstance(rows, WholeRowReader) and reader.clone(whole_rows=True) is rows
        assert isinstance(reader.clone(), SceneReader)  # one handle per thread when not asked for whole rows
        server.forbidden.add("/refused.tif")
        out = np.empty((3, 256, 256), np.uint8)
        for _ in range(2):
            with pytest.raises(InputError, match=r"refused\.tif: read failed in rows 0-255, cols 0-1023"):
                rows.read_raw(0, 0, 256, out)
        server.forbidden.discard("/refused.tif")
        assert rows.read_raw(0, 0, 256, out)
        rows.close()
        assert reader.clone(whole_rows=True) is not rows  # a closed one is replaced
    finally:
        server.forbidden.discard("/refused.tif")
        reader.close()


def test_aoi_in_lon_lat_from_a_geojson_file_and_scenes_it_misses(site, tmp_path):
    from rasterio.warp import transform as move

    _, root = site
    (lon0, lon1), (lat0, lat1) = move("EPSG:32618", "EPSG:4326", [ORIGIN[0] + 500, ORIGIN[0] + 600],
                                      [ORIGIN[1] - 600, ORIGIN[1] - 500])
    box = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [box]}}]}))
    far = tmp_path / "far.tif"
    with rasterio.open(root / "scene.tif") as src:
        profile = {**src.profile, "driver": "GTiff", "transform": from_origin(600000, 4001024, 1, 1)}
        profile.pop("blockxsize"), profile.pop("blockysize"), profile.pop("tiled")
        with rasterio.open(far, "w", **profile) as dst:
            dst.write(src.read())
    manifest = run([root / "scene.tif", far], tmp_path / "out", aoi=str(aoi))
    status = {Path(r.scene).name: r.status for r in manifest.results}
    assert status == {"scene.tif": "done", "far.tif": "skipped-aoi"} and manifest.exit_code == 0
    window = manifest.inputs[0]["aoi_window"]
    assert 95 <= window["width"] <= 110 and 495 <= window["col_off"] <= 500, window  # the box, bent by UTM
    plan = run([root / "scene.tif", far], tmp_path / "plan", aoi=str(aoi), dry_run=True)
    assert [r.status for r in plan.results] == ["dry-run", "skipped-aoi"]
    assert plan.inputs[0]["processed_width"] == window["width"] and plan.inputs[0]["tiles"] == 1


def test_missing_and_forbidden_urls_fail_those_scenes_only_and_hide_secrets(site, tmp_path):
    server, root = site
    listing = tmp_path / "scenes.txt"
    secret = f"http://user:hunter2@127.0.0.1:{server.url.rsplit(':', 1)[1]}/missing.tif?sig=TOPSECRET"
    server.forbidden.add("/private.tif")
    listing.write_text(f"# one good, one missing, one forbidden\n{server.url}/scene.tif\n{secret}\n"
                       f"{server.url}/private.tif\n")
    manifest = run([listing], tmp_path / "out")
    assert manifest.exit_code == 3
    failed = {Path(r.scene.split("?")[0]).name: r.error for r in manifest.results if r.status == "failed"}
    assert sorted(failed) == ["missing.tif", "private.tif"]
    assert "404" in failed["missing.tif"] and "403" in failed["private.tif"]
    assert all("\n" not in error for error in failed.values())
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "hunter2" not in text and "TOPSECRET" not in text
    assert sum(r.status == "done" for r in manifest.results) == 1


def test_http_folder_is_listed_like_a_folder(tmp_path):
    from rrsis_cli.inputs import find_scenes

    for name in ("d/a.tif", "d/sub/b.vrt", "d/notes.txt", "d/sub/c.TIFF"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    with folder_server(tmp_path) as url:
        found = find_scenes([f"{url}/d/"])
    assert [str(s.path) for s in found] == [f"{url}/d/a.tif", f"{url}/d/sub/b.vrt", f"{url}/d/sub/c.TIFF"]
    assert [s.key.rsplit("-", 1)[0] for s in found] == ["a", "sub/b", "sub/c"]
    assert [s.size for s in found] == [len(b"d/a.tif"), len(b"d/sub/b.vrt"), len(b"d/sub/c.TIFF")]


# --------------------------------------------------------------------------------------------------- s3
def test_s3_prefix_listing_and_a_missing_key(site, local_mask, tmp_path, monkeypatch):
    _, root = site
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="scenes")
        client.upload_file(str(root / "scene.tif"), "scenes", "in/a.tif")
        client.upload_file(str(root / "scene.tif"), "scenes", "in/sub/b.TIF")
        client.put_object(Bucket="scenes", Key="in/readme.txt", Body=b"not a raster")
        manifest = run(["s3://scenes/in/"], tmp_path / "prefix")
        assert manifest.exit_code == 0
        keys = sorted(i["key"].rsplit("-", 1)[0] for i in manifest.inputs)
        assert keys == ["a", "sub/b"]
        for mask in (tmp_path / "prefix").rglob("mask.tif"):
            same_pixels(pixels(mask), local_mask)
        again = run(["s3://scenes/in/"], tmp_path / "prefix")
        assert [r.status for r in again.results] == ["skipped-existing"] * 2
        listing = tmp_path / "list.txt"
        listing.write_text("s3://scenes/in/a.tif\ns3://scenes/in/nope.tif\n")
        manifest = run([listing], tmp_path / "missing")
        assert manifest.exit_code == 3
        status = {r.scene: r.status for r in manifest.results}
        assert status == {"s3://scenes/in/a.tif": "done", "s3://scenes/in/nope.tif": "failed"}
        # an object replaced under the same key (HeadObject: another ETag and size) is computed again, not skipped
        with rasterio.open(root / "scene.tif") as src:
            profile, data = src.profile, src.read()
        with rasterio.open(tmp_path / "flipped.tif", "w", **profile) as dst:
            dst.write(data[:, ::-1, :])
        client.upload_file(str(tmp_path / "flipped.tif"), "scenes", "in/a.tif")
        # the next run is a new process, as from cron (GDAL's /vsis3/ cache in this process still holds the old
        # object's size and blocks, and rasterio does not expose VSICurlClearCache)
        rerun = subprocess.run([sys.executable, "-m", "rrsis_cli", "--quiet", "predict", "s3://scenes/in/", "--model",
                                "null", "--prompt", PROMPT, "--out", str(tmp_path / "prefix"), "--no-vectors",
                                "--read-workers", "1"],
                               capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        assert rerun.returncode == 0, rerun.stderr
        replaced = json.loads((tmp_path / "prefix" / "manifest.json").read_text())
        status = {r["scene"]: r["status"] for r in replaced["results"]}
        assert status == {"s3://scenes/in/a.tif": "done", "s3://scenes/in/sub/b.TIF": "skipped-existing"}, status


def test_s3_object_is_keyed_as_the_local_file_and_cached(site, tmp_path, monkeypatch):
    """An S3 object: the local file's key, fingerprint and output bytes, from two ranged
    GetObject calls; a rerun asks HeadObject only; a replaced object gets its new content's fingerprint."""
    from rrsis_cli import remote
    from rrsis_cli.inputs import content_fingerprint, find_scenes

    _, root = site
    sampled = []
    real_samples = remote.s3_samples
    monkeypatch.setattr(remote, "s3_samples", lambda *args: sampled.append(args[0]) or real_samples(*args))
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="fingerprints")
        client.upload_file(str(root / "scene.tif"), "fingerprints", "in/scene.tif")
        local = run([root / "scene.tif"], tmp_path / "local")
        on_s3 = run(["s3://fingerprints/in/scene.tif"], tmp_path / "s3")
        assert local.exit_code == on_s3.exit_code == 0 and sampled == ["/vsis3/fingerprints/in/scene.tif"]
        assert (on_s3.inputs[0]["key"], on_s3.inputs[0]["fingerprint"]) == (local.inputs[0]["key"],
                                                                              local.inputs[0]["fingerprint"])
        local_mask, local_tags = mask_and_tags(tmp_path / "local")
        s3_mask, s3_tags = mask_and_tags(tmp_path / "s3")
        assert s3_mask == local_mask and s3_tags == local_tags
        assert (tmp_path / "s3" / s3_mask).read_bytes() == (tmp_path / "local" / local_mask).read_bytes()
        again = find_scenes(["s3://fingerprints/in/scene.tif"])[0]
        assert again.fingerprint == local.inputs[0]["fingerprint"] and len(sampled) == 1  # the cache answered
        other = tmp_path / "other.tif"
        other.write_bytes(np.random.default_rng(5).bytes(5000))
        client.upload_file(str(other), "fingerprints", "in/scene.tif")
        replaced = find_scenes(["s3://fingerprints/in/scene.tif"])[0]
        assert replaced.fingerprint == content_fingerprint(other)[0] and len(sampled) == 2


def test_s3_prefix_with_glob_and_an_empty_prefix(site, tmp_path, monkeypatch):
    from rrsis_cli.errors import InputError
    from rrsis_cli.inputs import find_scenes

    _, root = site
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="more")
        for key in ("x/one.tif", "x/two.tif", "x/deep/three.vrt"):
            client.upload_file(str(root / "B02.tif"), "more", key)
        found = find_scenes(["s3://more/x/"], glob="t*")
        assert [str(s.path) for s in found] == ["s3://more/x/deep/three.vrt", "s3://more/x/two.tif"]
        assert [s.key.rsplit("-", 1)[0] for s in found] == ["deep/three", "two"]
        with pytest.raises(InputError, match="s3://more/empty/"):
            find_scenes(["s3://more/empty/"])


# ------------------------------------------------------------------------------------------------- STAC
def stac_item(server: RangeServer, item_id: str, collection: str | None = None):
    """A STAC Item with a visual asset and three single-band assets (listed blue, green, red) on the server."""
    import datetime

    import pystac
    from pystac.extensions.eo import Band, EOExtension

    item = pystac.Item(item_id, {"type": "Point", "coordinates": [-75.0, 36.1]}, [-75.0, 36.1, -74.9, 36.2],
                       datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc), {}, collection=collection)
    item.add_asset("visual", pystac.Asset(f"{server.url}/scene.tif", media_type=pystac.MediaType.COG))
    for key, name in (("B02", "blue"), ("B03", "green"), ("B04", "red")):
        asset = pystac.Asset(f"{server.url}/{key}.tif", media_type=pystac.MediaType.COG)
        item.add_asset(key, asset)
        EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=key, common_name=name)]
    return item


def test_stac_item_asset_and_bands_stacked_by_common_name(site, local_mask, tmp_path):
    from rrsis_cli.stac_inputs import StacOptions

    server, _ = site
    item = stac_item(server, "S2-tile/2024 06 01")
    path = tmp_path / "item.json"
    item.set_self_href(str(path))
    item.save_object(include_self_link=True)
    visual = run([path], tmp_path / "visual")
    assert visual.exit_code == 0 and visual.inputs[0]["key"].startswith("S2-tile-2024-06-01-")
    assert visual.inputs[0]["stac_item"] == str(path) and visual.inputs[0]["stac_assets"] == ["visual"]
    same_pixels(pixels(only_mask(tmp_path / "visual")), local_mask)
    stacked = run([path], tmp_path / "bands", stac=StacOptions(bands=["red", "green", "blue"]))
    assert stacked.exit_code == 0 and stacked.inputs[0]["stac_assets"] == ["B04", "B03", "B02"]
    assert stacked.inputs[0]["path"] == "S2-tile/2024 06 01[red,green,blue]"
    same_pixels(pixels(only_mask(tmp_path / "bands")), local_mask)  # same pixels, bands in red, green, blue order
    with pytest.raises(UsageError, match="no asset 'thumbnail'"):
        run([path], tmp_path / "x", stac=StacOptions(asset="thumbnail"))
    with pytest.raises(UsageError, match="common name 'nir'"):
        run([path], tmp_path / "x", stac=StacOptions(bands=["nir"]))


def test_stac_catalog_item_collection_and_item_url(site, tmp_path):
    import pystac

    server, root = site
    catalog = pystac.Catalog("cat", "two scenes")
    sub = pystac.Catalog("sub", "one level down")
    catalog.add_child(sub)
    catalog.add_item(stac_item(server, "first"))
    sub.add_item(stac_item(server, "second"))
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    options = PredictOptions(**OPTIONS, dry_run=True)
    manifest = predict([str(tmp_path / "catalog" / "catalog.json")], "null", [PROMPT], tmp_path / "o", options)
    assert sorted(i["stac_item_id"] for i in manifest.inputs) == ["first", "second"]
    collection = pystac.ItemCollection([stac_item(server, "third"), stac_item(server, "fourth")])
    collection.save_object(str(tmp_path / "items.json"))
    manifest = predict([str(tmp_path / "items.json")], "null", [PROMPT], tmp_path / "o", options)
    assert [i["stac_item_id"] for i in manifest.inputs] == ["third", "fourth"]
    assert all(r.status == "dry-run" for r in manifest.results)
    served = stac_item(server, "served")
    served.set_self_href(f"{server.url}/served.json")
    (root / "served.json").write_text(json.dumps(served.to_dict()))
    manifest = predict([f"{server.url}/served.json"], "null", [PROMPT], tmp_path / "o", options)
    assert manifest.inputs[0]["stac_item"] == f"{server.url}/served.json"
    assert manifest.inputs[0]["width"] == SIZE


def test_stac_on_s3_and_stac_entries_of_list_files(site, local_mask, tmp_path, monkeypatch):
    """STAC JSON on S3 is read with boto3 (the S3 configuration of the reads): a catalog whose child catalog,
    items and assets are relative links on S3 gives /vsis3/ scenes; a .txt list may name STAC files, URLs and S3
    objects among rasters; STAC JSON on another object store, or an S3 key that is not there, is one line."""
    import datetime

    import pystac

    from rrsis_cli.errors import InputError
    from rrsis_cli.inputs import find_scenes

    server, root = site
    catalog = pystac.Catalog("cat", "on s3")
    sub = pystac.Catalog("sub", "one level down")
    catalog.add_child(sub)
    when = datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc)
    for parent, item_id in ((catalog, "first"), (sub, "second")):
        parent.add_item(pystac.Item(item_id, {"type": "Point", "coordinates": [-75.0, 36.1]},
                                    [-75.0, 36.1, -74.9, 36.2], when, {}))
    local = tmp_path / "cat"
    catalog.normalize_hrefs(str(local))
    for item in catalog.get_items(recursive=True):
        scene = Path(item.get_self_href()).parent / "scene.tif"
        item.add_asset("visual", pystac.Asset(str(scene), media_type=pystac.MediaType.COG))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    assert json.loads((local / "first" / "first.json").read_text())["assets"]["visual"]["href"] == "./scene.tif"
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="stac")
        for path in sorted(local.rglob("*.json")):
            client.upload_file(str(path), "stac", f"cat/{path.relative_to(local).as_posix()}")
            if path.name not in ("catalog.json",):
                client.upload_file(str(root / "scene.tif"), "stac", f"cat/{path.parent.relative_to(local).as_posix()}"
                                   "/scene.tif")
        manifest = run(["s3://stac/cat/catalog.json"], tmp_path / "out")
        assert manifest.exit_code == 0
        assert sorted((i["stac_item_id"], i["path"]) for i in manifest.inputs) == [
            ("first", "s3://stac/cat/first/scene.tif"), ("second", "s3://stac/cat/sub/second/scene.tif")]
        assert manifest.inputs[0]["stac_item"].startswith("s3://stac/cat/")
        for mask in (tmp_path / "out").rglob("mask.tif"):
            same_pixels(pixels(mask), local_mask)

        served = stac_item(server, "served")
        served.set_self_href(f"{server.url}/listed.json")
        (root / "listed.json").write_text(json.dumps(served.to_dict()))
        stac_item(server, "nearby").save_object(include_self_link=False, dest_href=str(tmp_path / "items" / "i.json"))
        listing = tmp_path / "list.txt"
        listing.write_text(f"s3://stac/cat/first/first.json\n{server.url}/scene.tif\n{server.url}/listed.json\n"
                           "items/i.json\n")
        found = find_scenes([listing])
        assert [(s.stac_item_id, str(s.path)) for s in found] == [
            ("first", "s3://stac/cat/first/scene.tif"), ("served", f"{server.url}/scene.tif"),
            ("nearby", f"{server.url}/scene.tif"), (None, f"{server.url}/scene.tif")]
        assert [s.stac_item_id for s in find_scenes(["/vsis3/stac/cat/first/first.json"])] == ["first"]
        with pytest.raises(InputError, match=r"s3://stac/none\.json: cannot read STAC JSON \(.*NoSuchKey"):
            find_scenes(["s3://stac/none.json"])
    for name in ("/vsiadls/container/item.json",):
        with pytest.raises(InputError, match=r"^/vsiadls/container/item\.json: STAC JSON is read from local files, "
                                             r"http\(s\)://, s3://, gs:// and az:// only .*: give its https:// URL "
                                             r"or a local copy$"):
            find_scenes([name])


def test_stac_api_search_sends_the_filters(site, tmp_path, capsys):
    from rrsis_cli.stac_inputs import StacOptions

    server, _ = site
    api = f"{server.url}/api"
    found = stac_item(server, "found", collection="s2")
    landing = {"type": "Catalog", "id": "api", "description": "loopback", "stac_version": "1.0.0",
               "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
               "links": [{"rel": "self", "href": api}, {"rel": "root", "href": api},
                         {"rel": "search", "href": f"{api}/search", "type": "application/geo+json",
                          "method": "GET"},
                         {"rel": "search", "href": f"{api}/search", "type": "application/geo+json",
                          "method": "POST"}]}
    server.routes["/api"] = landing
    server.routes["/api/search"] = {"type": "FeatureCollection", "features": [found.to_dict()], "links": []}
    server.reset_counts()
    code, _, err = run_cli(capsys, "predict", "--stac-search", api, "--collections", "s2", "--bbox",
                           "-75.1,36,-74.8,36.3", "--datetime", "2024-06-01/2024-06-30", "--model", "null",
                           "--prompt", PROMPT, "--out", tmp_path, "--no-vectors", "--dry-run")
    assert code == 0, err
    searches = [(query, body) for method, path, query, body in server.requests if path == "/api/search"]
    assert len(searches) == 1
    query, body = searches[0]
    sent = body or {k: v[0] for k, v in query.items()}
    assert "s2" in str(sent["collections"]) and "2024-06-01" in str(sent["datetime"])
    assert [float(v) for v in (sent["bbox"] if isinstance(sent["bbox"], list) else sent["bbox"].split(","))] \
        == [-75.1, 36.0, -74.8, 36.3]
    with pytest.raises(UsageError, match="INPUT not found"):
        run([tmp_path / "no-such-item.json"], tmp_path)
    with pytest.raises(UsageError, match="filter a --stac-search"):
        run([], tmp_path, stac=StacOptions(collections=["s2"]))


# -------------------------------------------------------------------------------------------------- aoi
def test_aoi_parsing():
    from rrsis_cli.aoi import parse_aoi

    box = parse_aoi("10,20,11,21")
    assert box.crs == "EPSG:4326" and json.loads(box.geometry)["type"] == "Polygon"
    assert parse_aoi("500000,4000000,500100,4000100,EPSG:32618").crs == "EPSG:32618"
    for bad in ("1,2,3", "3,2,1,4", "a,b,c,d", "0,0,1,1,EPSG:999999"):
        with pytest.raises(UsageError):
            parse_aoi(bad)


def test_a_search_without_bbox_takes_the_aoi_box():
    from rrsis_cli.cli.predict import stac_options

    utm = f"{ORIGIN[0]},{ORIGIN[1] - 1000},{ORIGIN[0] + 1000},{ORIGIN[1]},EPSG:32618"
    bbox = stac_options({"stac_search": "http://127.0.0.1:9/api", "aoi": utm}).bbox
    assert bbox[0] == pytest.approx(-75.0, abs=1e-3) and bbox[2] - bbox[0] == pytest.approx(0.0111, abs=1e-3)
    assert stac_options({"stac_search": "http://127.0.0.1:9/api", "aoi": utm, "bbox": "1,2,3,4"}).bbox == [1, 2, 3, 4]
    assert stac_options({"aoi": utm}).bbox is None


@pytest.mark.parametrize("mask", ["nodata", "internal"])
def test_aoi_window_keeps_values_and_valid_mask(tmp_path, mask):
    """The AOI's window of a scene holds the scene's own pixels and validity (nodata value, or an internal
    mask carried through the crop as alpha)."""
    from rrsis_cli.aoi import parse_aoi
    from rrsis_cli.scene import SceneReader

    path = tmp_path / "scene.tif"
    data = np.random.default_rng(1).integers(1, 255, size=(3, 96, 96), dtype=np.uint8)
    data[:, 20:40, 30:70] = 0
    profile = {"driver": "GTiff", "width": 96, "height": 96, "count": 3, "dtype": "uint8", "crs": "EPSG:32618",
               "transform": from_origin(*ORIGIN, 1, 1), "nodata": 0 if mask == "nodata" else None}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask == "internal":
            dst.write_mask(np.where(data[0] == 0, 0, 255).astype(np.uint8))
    whole = SceneReader(path, None)
    expected_values, expected_valid = whole.read(10, 25, 32)
    whole.close()
    aoi = parse_aoi(f"{ORIGIN[0] + 25},{ORIGIN[1] - 42},{ORIGIN[0] + 57},{ORIGIN[1] - 10},EPSG:32618")
    reader = SceneReader(path, None, aoi=aoi)
    assert (reader.ds.width, reader.ds.height) == (32, 32)
    assert reader.ds.transform == from_origin(ORIGIN[0] + 25, ORIGIN[1] - 10, 1, 1)
    values, valid = reader.read(0, 0, 32)
    reader.close()
    assert not expected_valid.all() and expected_valid.any()
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(values, expected_values)


def test_raw_vsi_paths_pass_unchanged(site, local_mask, tmp_path):
    import zipfile

    _, root = site
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(root / "scene.tif", "inner/scene.tif")
    manifest = run([f"/vsizip/{archive}/inner/scene.tif"], tmp_path / "out")
    assert manifest.exit_code == 0 and manifest.inputs[0]["key"].startswith("scene-")
    same_pixels(pixels(only_mask(tmp_path / "out")), local_mask)


def test_loopback_servers_stop_with_their_tests(tmp_path):
    """The servers run under ``timeout`` in a process group of their own: leaving the context ends the server
    itself (killing only the wrapper once left moto running after the suite)."""
    import socket

    with moto_s3() as (_, env):
        moto_port = int(env["AWS_S3_ENDPOINT"].rsplit(":", 1)[1])
    with folder_server(tmp_path) as url:
        folder_port = int(url.rsplit(":", 1)[1])
    for port in (moto_port, folder_port):
        with socket.socket() as probe:  # binding succeeds only once no server listens there (TIME_WAIT is fine)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


def test_one_s3_client_per_configuration(monkeypatch):
    """The client is made once per configuration (a run asks for one or two per scene) and not shared across
    endpoints or credentials."""
    from rrsis_cli.remote import s3_client

    monkeypatch.setenv("AWS_S3_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "one")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    first = s3_client(5)
    assert s3_client(5) is first and s3_client() is not first  # another timeout, another client
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "two")
    assert s3_client(5) is not first
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "one")
    monkeypatch.setenv("AWS_S3_ENDPOINT", "127.0.0.1:10")
    other = s3_client(5)
    assert other is not first and other.meta.endpoint_url == "http://127.0.0.1:10"


def test_remote_scenes_are_fingerprinted_several_at_once(tmp_path, monkeypatch):
    """Cold fingerprints of many remote scenes overlap their round trips (a nightly list of thousands would
    otherwise wait for each server answer in turn before any work starts); keys are those of a serial run."""
    from rrsis_cli import inputs
    from rrsis_cli.inputs import find_scenes

    root = tmp_path / "served"
    root.mkdir()
    for i in range(6):
        (root / f"s{i}.tif").write_bytes(np.random.default_rng(i).bytes(3000))
    server = RangeServer(root).start()
    try:
        server.latency = 0.2  # a round trip: requests that overlap are seen in flight together
        urls = [f"{server.url}/s{i}.tif" for i in range(6)]
        parallel = find_scenes(urls)
        assert server.max_in_flight >= 2, server.max_in_flight
        monkeypatch.setattr(inputs, "FINGERPRINT_THREADS", 1)
        monkeypatch.setenv("RRSIS_CACHE_DIR", str(tmp_path / "cold"))  # sampled again, one at a time
        server.max_in_flight = 0
        serial = find_scenes(urls)
        assert server.max_in_flight == 1
        assert [(s.key, s.fingerprint) for s in parallel] == [(s.key, s.fingerprint) for s in serial]
        assert [str(s.path) for s in parallel] == urls  # input order kept
    finally:
        server.stop()

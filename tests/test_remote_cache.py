"""GDAL's in-process cache of remote objects (rrsis_cli.vsi_cache): a process that reads a remote scene again after
the object was replaced (a long-lived dask worker, a Python session) reads the new object, not the cached old one.
moto's S3 server on loopback (tests/loopback.py), started and stopped here; the null model (a per-pixel function)."""

from __future__ import annotations

import numpy as np
import pyogrio  # noqa: F401 - maps a second GDAL library into the process, as predict's vector writing does
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from loopback import moto_s3
from rrsis_cli import vsi_cache
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.remote import RemotePath

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "the red roofs"
OPTIONS = PredictOptions(vectors=False, read_workers=1)


def tiff_bytes(seed: int, size: int = 512) -> bytes:
    """A 3-band uint8 GeoTIFF of noise (the same byte size for every seed: uncompressed)."""
    data = np.random.default_rng(seed).integers(0, 256, size=(3, size, size), dtype=np.uint8)
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32618",
                         transform=from_origin(500000, 4000512, 1, 1), tiled=True, blockxsize=256,
                         blockysize=256) as dst:
            dst.write(data)
        return memory.read()


def mask_of(out) -> np.ndarray:
    masks = sorted(out.rglob("mask.tif"))
    assert len(masks) == 1, masks
    with rasterio.open(masks[0]) as ds:
        return ds.read()


def test_a_replaced_object_is_read_anew_in_the_same_process(tmp_path, monkeypatch):
    first, second = tiff_bytes(1), tiff_bytes(2)
    assert len(first) == len(second) and first != second
    for name, body in (("first.tif", first), ("second.tif", second)):
        (tmp_path / name).write_bytes(body)
    assert predict([str(tmp_path / "second.tif")], "null", [PROMPT], tmp_path / "local", OPTIONS).exit_code == 0
    want = mask_of(tmp_path / "local")
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="scenes")
        client.put_object(Bucket="scenes", Key="x.tif", Body=first)
        assert predict(["s3://scenes/x.tif"], "null", [PROMPT], tmp_path / "one", OPTIONS).exit_code == 0
        client.put_object(Bucket="scenes", Key="x.tif", Body=second)  # same size, other content and ETag
        manifest = predict(["s3://scenes/x.tif"], "null", [PROMPT], tmp_path / "two", OPTIONS)
        assert manifest.exit_code == 0
        got = mask_of(tmp_path / "two")
    assert not np.array_equal(mask_of(tmp_path / "one"), want)  # the two objects give different masks
    np.testing.assert_array_equal(got, want)  # without clearing GDAL's cache this was the first object's mask


def test_the_cache_is_cleared_only_when_the_fingerprint_changes(monkeypatch, tmp_path):
    cleared = []
    monkeypatch.setattr(vsi_cache, "clear_gdal_cache", lambda name: cleared.append(name) or True)
    monkeypatch.setattr(vsi_cache, "_opened_with", {})
    path = RemotePath("https://host/a.tif")
    assert not vsi_cache.forget_if_replaced(path, "f1")  # first sight: nothing cached yet
    assert not vsi_cache.forget_if_replaced(path, "f1")  # the same object again (one run opens it several times)
    assert vsi_cache.forget_if_replaced(path, "f2") and cleared == ["/vsicurl/https://host/a.tif"]
    assert not vsi_cache.forget_if_replaced(tmp_path / "local.tif", "f3")  # local files: GDAL caches nothing


def test_a_stack_of_band_assets_clears_each_source():
    """A STAC scene of stacked band assets is an in-memory VRT: the names GDAL caches are its sources'."""
    xml = ('<VRTDataset rasterXSize="2" rasterYSize="2"><VRTRasterBand band="1"><SimpleSource>'
           '<SourceFilename relativeToVRT="0">/vsicurl/https://h/B04.tif?a=1&amp;b=2</SourceFilename>'
           '</SimpleSource></VRTRasterBand><VRTRasterBand band="2"><SimpleSource>'
           '<SourceFilename relativeToVRT="0">/vsis3/b/B03.tif</SourceFilename></SimpleSource></VRTRasterBand>'
           '</VRTDataset>')
    assert vsi_cache.cached_names(RemotePath(xml, label="item [B04,B03]")) == [
        "/vsicurl/https://h/B04.tif?a=1&b=2", "/vsis3/b/B03.tif"]
    assert vsi_cache.cached_names(RemotePath("s3://b/x.tif")) == ["/vsis3/b/x.tif"]


def test_gdals_clear_function_is_reachable():
    assert vsi_cache.loaded_gdal_library() is not None
    assert vsi_cache.clear_gdal_cache("/vsicurl/http://127.0.0.1:9/never-read.tif")


def test_rasterios_gdal_is_chosen_among_several(tmp_path):
    """pyogrio's wheel maps its own GDAL too (imported at the top of this file): clearing that one's cache left
    rasterio's stale (the replaced-object test failed after any test that had used pyogrio)."""
    libs = tmp_path / "site" / "rasterio.libs"
    paths = {"/site/pyogrio.libs/libgdal-1.so.36", str(libs / "libgdal-2.so.36"), "/usr/lib/libgdal.so.32"}
    assert vsi_cache.rasterio_gdal_first(paths, libs) == [str(libs / "libgdal-2.so.36"), "/usr/lib/libgdal.so.32",
                                                          "/site/pyogrio.libs/libgdal-1.so.36"]

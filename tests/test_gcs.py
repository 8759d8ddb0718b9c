"""Google Cloud Storage: ``gs://`` scenes and prefixes as inputs, ``--out gs://bucket/prefix/`` (the S3 output's
contract: mask last, skip-existing and resume against the store, manifest last, ``--publish``), and the
:mod:`rrsis_cli.gcs` helpers, against ``gcp-storage-emulator`` started on 127.0.0.1 by each test
(:func:`loopback.gcs_emulator`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from front_helpers import run_cli, write_scene

from rrsis_cli import gcs as gcs_config
from rrsis_cli.errors import UsageError
from rrsis_cli.gcs import gcs_read, gcs_stat
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.store import GCSBackend, staging_dir

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["water", "the red roofs"]
OPTIONS = dict(tile_size=64, device="cpu", save_prob=True)
GCS_VARIABLES = ("STORAGE_EMULATOR_HOST", "CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST", "GOOGLE_APPLICATION_CREDENTIALS",
                 "GS_SECRET_ACCESS_KEY", "GS_ACCESS_KEY_ID", "GS_OAUTH2_REFRESH_TOKEN", "GOOGLE_CLOUD_PROJECT")


@pytest.fixture()
def gcs(monkeypatch, tmp_path):
    """The emulator (its own process on a free port, killed at the end), the variables GDAL and the client read,
    a bucket ``bucket``; the staging folder under the test's tmp_path."""
    import tempfile

    from loopback import gcs_emulator

    with gcs_emulator() as (client, env):
        for name in GCS_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**env, "GDAL_HTTP_TIMEOUT": "20"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        yield client.create_bucket("bucket")


def names(bucket, prefix: str = "") -> set[str]:
    return {blob.name for blob in bucket.client.list_blobs(bucket, prefix=prefix)}


def scenes(folder: Path) -> list[Path]:
    """Two small scenes side by side (the second flipped, so its masks differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    a = write_scene(folder / "a.tif")
    with rasterio.open(a) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(folder / "b.tif", "w", **profile) as dst:
        dst.write(data[:, ::-1])
    return [a, folder / "b.tif"]


def pixels(path: str | Path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


# ----------------------------------------------------------------------------------------------- inputs
def test_gs_object_and_prefix_give_the_local_pixels(tmp_path, gcs):
    local_scene = scenes(tmp_path / "in")[0]
    local = predict([local_scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    want = pixels(tmp_path / "local" / local.results[0].output_dir / "mask.tif")
    assert want[0].any() and not want[0].all()  # a mask with both classes: the comparison means something
    for key in ("in/x.tif", "in/sub/y.TIF"):
        gcs.blob(key).upload_from_filename(str(local_scene))
    gcs.blob("in/readme.txt").upload_from_string("not a raster")

    one = predict(["gs://bucket/in/x.tif"], "null", PROMPTS[:1], tmp_path / "one", PredictOptions(**OPTIONS))
    assert one.exit_code == 0 and one.results[0].scene == "gs://bucket/in/x.tif"
    listed = predict(["gs://bucket/in/"], "null", PROMPTS[:1], tmp_path / "prefix", PredictOptions(**OPTIONS))
    assert listed.exit_code == 0
    assert sorted(i["key"].rsplit("-", 1)[0] for i in listed.inputs) == ["sub/y", "x"]  # readme.txt left out
    masks = [tmp_path / "one" / one.results[0].output_dir / "mask.tif"] + \
        [tmp_path / "prefix" / r.output_dir / "mask.tif" for r in listed.results]
    for mask in masks:
        got = pixels(mask)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == want[1:]
    again = predict(["gs://bucket/in/"], "null", PROMPTS[:1], tmp_path / "prefix", PredictOptions(**OPTIONS))
    assert [r.status for r in again.results] == ["skipped-existing"] * 2


def test_gs_object_is_keyed_and_written_as_the_local_file(tmp_path, gcs, monkeypatch):
    """A GCS object gets the content fingerprint of a local copy (two ranged reads through the client), so its
    key and its mask's bytes are the local run's; a rerun finds the fingerprint in the cache (no sampling); an
    object replaced under the same name is sampled again and gets its new content's fingerprint."""
    from rrsis_cli import remote
    from rrsis_cli.inputs import content_fingerprint, find_scenes

    local_scene, other_scene = scenes(tmp_path / "in")
    gcs.blob("in/a.tif").upload_from_filename(str(local_scene))
    sampled = []
    real = remote.client_samples
    monkeypatch.setattr(remote, "client_samples", lambda *args: sampled.append(args[0]) or real(*args))
    local = predict([local_scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    on_gcs = predict(["gs://bucket/in/a.tif"], "null", PROMPTS[:1], tmp_path / "gs", PredictOptions(**OPTIONS))
    assert local.exit_code == on_gcs.exit_code == 0 and sampled == ["/vsigs/bucket/in/a.tif"]
    assert on_gcs.inputs[0]["key"] == local.inputs[0]["key"]
    mask = local.results[0].output_dir + "/mask.tif"
    assert on_gcs.results[0].output_dir + "/mask.tif" == mask
    assert (tmp_path / "gs" / mask).read_bytes() == (tmp_path / "local" / mask).read_bytes()
    assert find_scenes(["gs://bucket/in/a.tif"])[0].fingerprint == local.inputs[0]["fingerprint"]
    assert len(sampled) == 1  # the cache answered
    gcs.blob("in/a.tif").upload_from_filename(str(other_scene))  # replaced: new generation and ETag
    assert find_scenes(["gs://bucket/in/a.tif"])[0].fingerprint == content_fingerprint(other_scene)[0]
    assert len(sampled) == 2


def test_gs_scene_side_car_mask_is_read_as_next_to_a_local_file(tmp_path, gcs, monkeypatch):
    """A ``.msk`` side-car next to a GCS object (found by one listing of the scene's stem) is read as GDAL reads
    it next to the local file: the same mask, byte for byte; a scene without one is listed as such."""
    from test_remote_sidecars import masked_pixels, write_plain, write_with_msk

    from rrsis_cli.remote import RemotePath, find_sidecars

    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN", raising=False)
    (tmp_path / "in").mkdir()
    scene = write_with_msk(tmp_path / "in" / "field.tif", seed=4)
    plain = write_plain(tmp_path / "in" / "plain.tif", seed=5)
    for path in (scene, scene.with_name("field.tif.msk"), plain):
        gcs.blob(f"in/{path.name}").upload_from_filename(str(path))
    assert find_sidecars(RemotePath("gs://bucket/in/field.tif")) is True
    assert find_sidecars(RemotePath("gs://bucket/in/plain.tif")) is False
    local = predict([scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    on_gcs = predict(["gs://bucket/in/field.tif"], "null", PROMPTS[:1], tmp_path / "gs", PredictOptions(**OPTIONS))
    assert local.exit_code == on_gcs.exit_code == 0
    mask = local.results[0].output_dir + "/mask.tif"
    assert on_gcs.results[0].output_dir + "/mask.tif" == mask and masked_pixels(tmp_path / "local" / mask) > 0
    assert (tmp_path / "gs" / mask).read_bytes() == (tmp_path / "local" / mask).read_bytes()


def test_stac_catalog_on_gcs_resolves_relative_links_to_gs_objects(tmp_path, gcs):
    """A catalog on GCS (read with the client): its item and the item's relative asset become gs:// names."""
    import datetime

    import pystac

    local_scene = scenes(tmp_path / "in")[0]
    catalog = pystac.Catalog("cat", "on gcs")
    item = pystac.Item("first", {"type": "Point", "coordinates": [-75.0, 36.1]}, [-75.0, 36.1, -74.9, 36.2],
                       datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc), {})
    catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "cat"))
    item.add_asset("visual", pystac.Asset(str(tmp_path / "cat" / "first" / "scene.tif"),
                                          media_type=pystac.MediaType.COG))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    for path in sorted((tmp_path / "cat").rglob("*.json")):
        gcs.blob(f"cat/{path.relative_to(tmp_path / 'cat').as_posix()}").upload_from_filename(str(path))
    gcs.blob("cat/first/scene.tif").upload_from_filename(str(local_scene))
    local = predict([local_scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    manifest = predict(["gs://bucket/cat/catalog.json"], "null", PROMPTS[:1], tmp_path / "out",
                       PredictOptions(**OPTIONS))
    assert manifest.exit_code == 0
    assert [(i["stac_item_id"], i["path"]) for i in manifest.inputs] == [("first", "gs://bucket/cat/first/scene.tif")]
    got = pixels(tmp_path / "out" / manifest.results[0].output_dir / "mask.tif")
    want = pixels(tmp_path / "local" / local.results[0].output_dir / "mask.tif")
    np.testing.assert_array_equal(got[0], want[0])


# ---------------------------------------------------------------------------------------------- outputs
def test_gs_output_is_the_local_output_and_a_rerun_skips(tmp_path, gcs, capsys):
    inputs = scenes(tmp_path / "in")
    local = predict(inputs, "null", PROMPTS, tmp_path / "local", PredictOptions(**OPTIONS), publish=True)
    url = "gs://bucket/runs/one/"
    first = predict(inputs, "null", PROMPTS, url, PredictOptions(**OPTIONS), publish=True)
    assert first.exit_code == 0 and {r.status for r in first.results} == {"done"}
    stored = names(gcs, "runs/one/")
    local_files = {p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*")
                   if p.is_file() and not p.name.startswith(".")}
    assert {f"runs/one/{name}" for name in local_files} <= stored  # every file of a local run, STAC included
    for result, local_result in zip(first.results, local.results, strict=True):
        assert result.outputs["mask"] == f"gs://bucket/runs/one/{result.output_dir}/mask.tif"
        for name in ("mask.tif", "prob.tif"):
            assert gcs.blob(f"runs/one/{result.output_dir}/{name}").download_as_bytes() == \
                (tmp_path / "local" / local_result.output_dir / name).read_bytes()
    assert not any((staging_dir(url) / r.output_dir).exists() for r in first.results)  # uploaded, then removed
    catalog = json.loads(gcs.blob("runs/one/catalog.json").download_as_bytes())
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == len(inputs) * len(PROMPTS)
    vrt = next(name for name in stored if name.endswith(".vrt"))
    with rasterio.open(f"/vsigs/bucket/{vrt}") as mosaic:  # the mosaic names its sources by their store paths (no "..")
        assert mosaic.read(1).any()

    # the next run is the command line in a new process, with STORAGE_EMULATOR_HOST alone (GDAL's endpoint and
    # anonymous reads follow from it): every pair is skipped from the mask tags read in the store
    env = {k: v for k, v in os.environ.items() if k not in ("CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST")}
    rerun = subprocess.run([sys.executable, "-m", "rrsis_cli", "--quiet", "predict", *map(str, inputs), "--model",
                            "null", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out", url, "--tile-size", "64",
                            "--device", "cpu", "--save-prob"],
                           capture_output=True, text=True, timeout=300, env={**env, "TMPDIR": str(tmp_path / "tmp")})
    assert rerun.returncode == 0, rerun.stderr
    second = json.loads(gcs.blob("runs/one/manifest.json").download_as_bytes())
    assert [r["status"] for r in second["results"]] == ["skipped-existing"] * len(first.results)
    # `rrsis publish gs://…` later: the manifest downloaded, the STAC files written again from the store
    gcs.blob("runs/one/catalog.json").delete()
    code, _, err = run_cli(capsys, "publish", url)
    assert code == 0, err
    assert json.loads(gcs.blob("runs/one/catalog.json").download_as_bytes()) == catalog


def test_gs_killed_or_failed_mask_upload_leaves_no_mask_and_is_redone(tmp_path, gcs, monkeypatch):
    """The mask is uploaded last: a run killed while uploading, or whose mask upload fails (a 503 from the
    store), leaves the pair without a mask in the store (its other files are there); the next run redoes it."""
    from google.api_core.exceptions import ServiceUnavailable
    from google.cloud.storage import Blob

    inputs = scenes(tmp_path / "in")[:1]
    upload = GCSBackend.upload

    def killed_at_the_mask(self, local, key):
        if key.endswith("mask.tif"):
            raise KeyboardInterrupt
        upload(self, local, key)

    monkeypatch.setattr(GCSBackend, "upload", killed_at_the_mask)
    with pytest.raises(KeyboardInterrupt):
        predict(inputs, "null", PROMPTS[:1], "gs://bucket/killed", PredictOptions(**OPTIONS))
    stored = names(gcs, "killed/")
    assert any(k.endswith("/prob.tif") for k in stored) and any(k.endswith("/mask.geojson") for k in stored)
    assert not any(k.endswith("/mask.tif") for k in stored)
    monkeypatch.setattr(GCSBackend, "upload", upload)
    rerun = predict(inputs, "null", PROMPTS[:1], "gs://bucket/killed", PredictOptions(**OPTIONS))
    # the killed run's staged prob.tif is still in the staging folder: the mask is re-derived from it
    assert [r.status for r in rerun.results] == ["rethresholded"]
    assert f"killed/{rerun.results[0].output_dir}/mask.tif" in names(gcs, "killed/")

    send = Blob.upload_from_filename

    def unavailable_for_masks(blob, filename, **kwargs):
        if blob.name.endswith("mask.tif"):
            raise ServiceUnavailable("the store is busy")
        return send(blob, filename, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", unavailable_for_masks)
    failed = predict(inputs, "null", PROMPTS[:1], "gs://bucket/failed/", PredictOptions(**OPTIONS))
    result = failed.results[0]
    assert failed.exit_code == 1 and result.status == "failed"  # every pair failed
    assert result.error.startswith(f"gs://bucket/failed/{result.output_dir}/mask.tif: upload failed (GCS error 503)")
    assert not any(k.endswith("/mask.tif") for k in names(gcs, "failed/"))
    monkeypatch.setattr(Blob, "upload_from_filename", send)
    redone = predict(inputs, "null", PROMPTS[:1], "gs://bucket/failed/", PredictOptions(**OPTIONS))
    assert [r.status for r in redone.results] == ["rethresholded"]
    assert f"failed/{result.output_dir}/mask.tif" in names(gcs, "failed/")


def test_gs_output_errors_are_one_line(tmp_path, gcs, monkeypatch, capsys):
    """A bucket that does not exist: exit 1 before any model loads, the URL named, nothing written. Without
    google-cloud-storage: a usage error naming the extra. abfs:// is refused."""
    scene = write_scene(tmp_path / "s.tif")
    common = ["-m", "null", "-p", "water", "--tile-size", "64", "--device", "cpu"]
    code, _, err = run_cli(capsys, "predict", scene, *common, "--out", "gs://nobucket/x/")
    assert code == 1 and "gs://nobucket/x/: the output bucket cannot be reached (GCS error 404)" in err
    assert names(gcs) == set()
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if the package were not installed
    code, _, err = run_cli(capsys, "predict", scene, *common, "--out", "gs://bucket/x/")
    assert code == 2 and "pip install 'rrsis[gcs]'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="only s3://, gs:// and az://"):
        predict([scene], "null", ["water"], "abfs://container/x/", PredictOptions(tile_size=64))
    assert names(gcs) == set()


# ------------------------------------------------------------------------------------- rrsis_cli.gcs
def test_gcs_stat_and_ranged_read(gcs):
    data = bytes(range(256)) * 40
    gcs.blob("in/obj.bin").upload_from_string(data)
    stat = gcs_stat("/vsigs/bucket/in/obj.bin")
    assert stat["size"] == len(data) and stat["etag"] and stat["generation"] and stat["last_modified"]
    assert gcs_stat("gs://bucket/in/obj.bin") == stat
    assert gcs_read("/vsigs/bucket/in/obj.bin", 0, 9) == data[:10]
    assert gcs_read("gs://bucket/in/obj.bin", 300, 300) == data[300:301]
    assert gcs_read("/vsigs/bucket/in/obj.bin", 10000, 20000) == data[10000:]  # past the end: what there is
    gcs.blob("in/obj.bin").upload_from_string(data[::-1])  # replaced under the same name
    replaced = gcs_stat("/vsigs/bucket/in/obj.bin")
    assert replaced["generation"] != stat["generation"] and replaced["etag"] != stat["etag"]
    assert gcs_read("/vsigs/bucket/in/obj.bin", 0, 9) == data[::-1][:10]
    for missing in ("/vsigs/bucket/in/none.bin", "/vsigs/nobucket/x", "/vsis3/bucket/in/obj.bin", "gs://bucket"):
        assert gcs_stat(missing) is None and gcs_read(missing, 0, 9) is None


def test_emulator_host_alone_sets_gdal_endpoint_and_anonymous_access(monkeypatch):
    for name in GCS_VARIABLES:
        monkeypatch.setenv(name, "x")  # recorded, so that the variables apply_gdal_defaults sets are undone
        monkeypatch.delenv(name)
    assert gcs_config.gdal_defaults() == {} and gcs_config.api_endpoint() is None
    assert not gcs_config.anonymous()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    assert gcs_config.gdal_defaults() == {"CPL_GS_ENDPOINT": "http://127.0.0.1:4443/", "GS_NO_SIGN_REQUEST": "YES"}
    assert gcs_config.api_endpoint() == "http://127.0.0.1:4443" and gcs_config.anonymous()
    monkeypatch.setenv("GS_NO_SIGN_REQUEST", "NO")  # the user's setting wins
    gcs_config.apply_gdal_defaults()
    assert os.environ["CPL_GS_ENDPOINT"] == "http://127.0.0.1:4443/" and os.environ["GS_NO_SIGN_REQUEST"] == "NO"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("CPL_GS_ENDPOINT", "https://storage.example.org/")
    monkeypatch.setenv("GS_NO_SIGN_REQUEST", "YES")
    assert gcs_config.api_endpoint() == "https://storage.example.org" and gcs_config.anonymous()


def test_the_emulator_stops_with_its_test():
    """As moto's server: leaving the context ends the emulator itself, not only its ``timeout`` wrapper."""
    import socket

    from loopback import gcs_emulator

    with gcs_emulator() as (client, env):
        port = int(env["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
        client.create_bucket("alive")
        assert [bucket.name for bucket in client.list_buckets()] == ["alive"]
    with socket.socket() as probe:  # binding succeeds only once no server listens there (TIME_WAIT is fine)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))

"""Azure Blob Storage: ``az://`` scenes and prefixes as inputs (keyed and written as their local copies), STAC on
``az://``, side-car files, and ``--out az://container/prefix/`` (the S3 output's contract: mask last, skip-existing
and resume against the store, manifest last, ``--publish``), against Azurite (Microsoft's Azure Storage emulator,
installed by ``make emulators``) started on 127.0.0.1 by each test (:func:`loopback.azurite`)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from front_helpers import run_cli, write_scene

from loopback import azurite, azurite_binary
from rrsis_cli.azure import azure_names, azure_read, azure_stat
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.store import AzureBackend, staging_dir

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(azurite_binary() is None,
                                 reason="Azurite is not installed (`make emulators` needs npm): the az:// tests "
                                        "did not run")]

PROMPTS = ["water", "the red roofs"]
OPTIONS = dict(tile_size=64, device="cpu", save_prob=True)
AZURE_VARIABLES = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY",
                   "AZURE_STORAGE_SAS_TOKEN", "AZURE_NO_SIGN_REQUEST", "GDAL_DISABLE_READDIR_ON_OPEN")


@pytest.fixture()
def container(monkeypatch, tmp_path, cache_dir):
    """Azurite (its own process on a free port, killed at the end), its connection string in the environment, a
    container ``scenes``; the staging folder under the test's tmp_path."""
    import tempfile

    with azurite() as (client, env):
        for name in AZURE_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**env, "GDAL_HTTP_TIMEOUT": "20"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        yield client.create_container("scenes")


def names(container, prefix: str = "") -> set[str]:
    return {blob.name for blob in container.list_blobs(name_starts_with=prefix)}


def upload(container, local: Path, name: str) -> None:
    with local.open("rb") as data:
        container.upload_blob(name, data, overwrite=True)


def download(container, name: str) -> bytes:
    return container.download_blob(name).readall()


def scenes(folder: Path) -> list[Path]:
    """Two small scenes side by side (the second flipped, so its masks differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    a = write_scene(folder / "a.tif")
    with rasterio.open(a) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(folder / "b.tif", "w", **profile) as dst:
        dst.write(data[:, ::-1])
    return [a, folder / "b.tif"]


# ----------------------------------------------------------------------------------------------- inputs
def test_az_object_and_prefix_are_keyed_and_written_as_the_local_file(tmp_path, container, monkeypatch):
    """An Azure blob gets its local copy's key and mask bytes (content fingerprint from two ranged reads through
    the client, then cached); a prefix is listed like a folder; a rerun skips; a blob replaced under its name is
    sampled again."""
    from rrsis_cli import remote
    from rrsis_cli.inputs import content_fingerprint, find_scenes

    local_scene, other_scene = scenes(tmp_path / "in")
    for name in ("in/a.tif", "in/sub/y.TIF"):
        upload(container, local_scene, name)
    container.upload_blob("in/readme.txt", b"not a raster")
    sampled = []
    real = remote.client_samples
    monkeypatch.setattr(remote, "client_samples", lambda *args: sampled.append(args[0]) or real(*args))
    local = predict([local_scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    mask = local.results[0].output_dir + "/mask.tif"
    with rasterio.open(tmp_path / "local" / mask) as ds:
        want = ds.read()
    assert want.any() and not want.all()  # a mask with both classes: the comparisons mean something
    one = predict(["az://scenes/in/a.tif"], "null", PROMPTS[:1], tmp_path / "one", PredictOptions(**OPTIONS))
    assert one.exit_code == 0 and one.results[0].scene == "az://scenes/in/a.tif"
    assert one.inputs[0]["fingerprint"] == local.inputs[0]["fingerprint"] and sampled == ["/vsiaz/scenes/in/a.tif"]
    assert (tmp_path / "one" / mask).read_bytes() == (tmp_path / "local" / mask).read_bytes()
    listed = predict(["az://scenes/in/"], "null", PROMPTS[:1], tmp_path / "prefix", PredictOptions(**OPTIONS))
    assert listed.exit_code == 0
    assert sorted(i["key"].rsplit("-", 1)[0] for i in listed.inputs) == ["a", "sub/y"]  # readme.txt left out
    for result in listed.results:
        with rasterio.open(tmp_path / "prefix" / result.output_dir / "mask.tif") as ds:
            np.testing.assert_array_equal(ds.read(), want)
    again = predict(["az://scenes/in/"], "null", PROMPTS[:1], tmp_path / "prefix", PredictOptions(**OPTIONS))
    assert [r.status for r in again.results] == ["skipped-existing"] * 2
    assert len(sampled) == 2  # a.tif, then sub/y.TIF once: every later fingerprint came from the cache
    upload(container, other_scene, "in/a.tif")  # replaced: new ETag
    assert find_scenes(["az://scenes/in/a.tif"])[0].fingerprint == content_fingerprint(other_scene)[0]
    assert len(sampled) == 3


def test_stac_catalog_on_azure_resolves_relative_links_to_az_blobs(tmp_path, container):
    """A catalog on Azure (read with the client): its item and the item's relative asset become az:// names."""
    import pystac

    local_scene = scenes(tmp_path / "in")[0]
    catalog = pystac.Catalog("cat", "on azure")
    item = pystac.Item("first", {"type": "Point", "coordinates": [-75.0, 36.1]}, [-75.0, 36.1, -74.9, 36.2],
                       datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc), {})
    catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "cat"))
    item.add_asset("visual", pystac.Asset(str(tmp_path / "cat" / "first" / "scene.tif"),
                                          media_type=pystac.MediaType.COG))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    for path in sorted((tmp_path / "cat").rglob("*.json")):
        upload(container, path, f"cat/{path.relative_to(tmp_path / 'cat').as_posix()}")
    upload(container, local_scene, "cat/first/scene.tif")
    local = predict([local_scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    manifest = predict(["az://scenes/cat/catalog.json"], "null", PROMPTS[:1], tmp_path / "out",
                       PredictOptions(**OPTIONS))
    assert manifest.exit_code == 0
    assert [(i["stac_item_id"], i["path"]) for i in manifest.inputs] == [("first", "az://scenes/cat/first/scene.tif")]
    with rasterio.open(tmp_path / "out" / manifest.results[0].output_dir / "mask.tif") as got, \
            rasterio.open(tmp_path / "local" / local.results[0].output_dir / "mask.tif") as want:
        np.testing.assert_array_equal(got.read(), want.read())


def test_az_scene_side_car_mask_is_read_as_next_to_a_local_file(tmp_path, container):
    """A ``.msk`` next to a blob (found by one listing of the scene's stem) is read: the local file's mask bytes."""
    from test_remote_sidecars import masked_pixels, write_plain, write_with_msk

    from rrsis_cli.remote import RemotePath, find_sidecars

    (tmp_path / "in").mkdir()
    scene = write_with_msk(tmp_path / "in" / "field.tif", seed=4)
    plain = write_plain(tmp_path / "in" / "plain.tif", seed=5)
    for path in (scene, scene.with_name("field.tif.msk"), plain):
        upload(container, path, f"in/{path.name}")
    assert find_sidecars(RemotePath("az://scenes/in/field.tif")) is True
    assert find_sidecars(RemotePath("az://scenes/in/plain.tif")) is False
    local = predict([scene], "null", PROMPTS[:1], tmp_path / "local", PredictOptions(**OPTIONS))
    on_azure = predict(["az://scenes/in/field.tif"], "null", PROMPTS[:1], tmp_path / "az", PredictOptions(**OPTIONS))
    mask = local.results[0].output_dir + "/mask.tif"
    assert on_azure.results[0].output_dir + "/mask.tif" == mask and masked_pixels(tmp_path / "local" / mask) > 0
    assert (tmp_path / "az" / mask).read_bytes() == (tmp_path / "local" / mask).read_bytes()


# ---------------------------------------------------------------------------------------------- outputs
def test_az_output_is_the_local_output_and_a_rerun_skips(tmp_path, container, capsys):
    inputs = scenes(tmp_path / "in")
    local = predict(inputs, "null", PROMPTS, tmp_path / "local", PredictOptions(**OPTIONS), publish=True)
    url = "az://scenes/runs/one/"
    first = predict(inputs, "null", PROMPTS, url, PredictOptions(**OPTIONS), publish=True)
    assert first.exit_code == 0 and {r.status for r in first.results} == {"done"}
    stored = names(container, "runs/one/")
    local_files = {p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*")
                   if p.is_file() and not p.name.startswith(".")}
    assert {f"runs/one/{name}" for name in local_files} <= stored  # every file of a local run, STAC included
    for result, local_result in zip(first.results, local.results, strict=True):
        assert result.outputs["mask"] == f"az://scenes/runs/one/{result.output_dir}/mask.tif"
        for name in ("mask.tif", "prob.tif"):
            assert download(container, f"runs/one/{result.output_dir}/{name}") == \
                (tmp_path / "local" / local_result.output_dir / name).read_bytes()
    assert not any((staging_dir(url) / r.output_dir).exists() for r in first.results)  # uploaded, then removed
    catalog = json.loads(download(container, "runs/one/catalog.json"))
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == len(inputs) * len(PROMPTS)
    vrt = next(name for name in stored if name.endswith(".vrt"))
    with rasterio.open(f"/vsiaz/scenes/{vrt}") as mosaic:  # the mosaic names its sources by their store paths (no "..")
        assert mosaic.read(1).any()

    # the next run is the command line in a new process: every pair is skipped from the mask tags in the store
    rerun = subprocess.run([sys.executable, "-m", "rrsis_cli", "--quiet", "predict", *map(str, inputs), "--model",
                            "null", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out", url, "--tile-size", "64",
                            "--device", "cpu", "--save-prob"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert rerun.returncode == 0, rerun.stderr
    second = json.loads(download(container, "runs/one/manifest.json"))
    assert [r["status"] for r in second["results"]] == ["skipped-existing"] * len(first.results)
    # `rrsis publish az://…` later: the manifest downloaded, the STAC files written again from the store
    container.delete_blob("runs/one/catalog.json")
    code, _, err = run_cli(capsys, "publish", url)
    assert code == 0, err
    assert json.loads(download(container, "runs/one/catalog.json")) == catalog


def test_az_killed_or_failed_mask_upload_leaves_no_mask_and_is_redone(tmp_path, container, monkeypatch):
    """The mask is uploaded last: a run killed while uploading it, or whose mask upload fails (a 503 from the
    store), leaves the pair without a mask in the store; the next run redoes it."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient

    inputs = scenes(tmp_path / "in")[:1]
    send = AzureBackend.upload

    def killed_at_the_mask(self, local, key):
        if key.endswith("mask.tif"):
            raise KeyboardInterrupt
        send(self, local, key)

    monkeypatch.setattr(AzureBackend, "upload", killed_at_the_mask)
    with pytest.raises(KeyboardInterrupt):
        predict(inputs, "null", PROMPTS[:1], "az://scenes/killed", PredictOptions(**OPTIONS))
    stored = names(container, "killed/")
    assert any(k.endswith("/prob.tif") for k in stored) and any(k.endswith("/mask.geojson") for k in stored)
    assert not any(k.endswith("/mask.tif") for k in stored)
    monkeypatch.setattr(AzureBackend, "upload", send)
    rerun = predict(inputs, "null", PROMPTS[:1], "az://scenes/killed", PredictOptions(**OPTIONS))
    assert [r.status for r in rerun.results] == ["rethresholded"]  # from the staged prob.tif
    assert f"killed/{rerun.results[0].output_dir}/mask.tif" in names(container, "killed/")

    upload_blob = BlobClient.upload_blob

    def unavailable_for_masks(blob, data, **kwargs):
        if blob.blob_name.endswith("mask.tif"):
            error = HttpResponseError(message="the store is busy")
            error.status_code = 503
            raise error
        return upload_blob(blob, data, **kwargs)

    monkeypatch.setattr(BlobClient, "upload_blob", unavailable_for_masks)
    failed = predict(inputs, "null", PROMPTS[:1], "az://scenes/failed/", PredictOptions(**OPTIONS))
    result = failed.results[0]
    assert failed.exit_code == 1 and result.status == "failed"
    assert result.error.startswith(f"az://scenes/failed/{result.output_dir}/mask.tif: upload failed (Azure error 503)")
    assert not any(k.endswith("/mask.tif") for k in names(container, "failed/"))
    monkeypatch.setattr(BlobClient, "upload_blob", upload_blob)
    redone = predict(inputs, "null", PROMPTS[:1], "az://scenes/failed/", PredictOptions(**OPTIONS))
    assert [r.status for r in redone.results] == ["rethresholded"]


def test_az_output_errors_are_one_line(tmp_path, container, monkeypatch, capsys):
    """A container that does not exist: exit 1 before any model loads, the URL named, nothing written. Without
    azure-storage-blob: a usage error naming the extra."""
    scene = write_scene(tmp_path / "s.tif")
    common = ["-m", "null", "-p", "water", "--tile-size", "64", "--device", "cpu"]
    code, _, err = run_cli(capsys, "predict", scene, *common, "--out", "az://nocontainer/x/")
    assert code == 1 and "az://nocontainer/x/: the output bucket cannot be reached (Azure error ContainerNotFound)" \
        in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)  # as if the package were not installed
    code, _, err = run_cli(capsys, "predict", scene, *common, "--out", "az://scenes/x/")
    assert code == 2 and "pip install 'rrsis[azure]'" in err and len(err.strip().splitlines()) == 1
    assert names(container) == set()


# ----------------------------------------------------------------------------------- rrsis_cli.azure
def test_azure_stat_ranged_read_and_listing(container):
    data = bytes(range(256)) * 40
    container.upload_blob("in/obj.bin", data)
    container.upload_blob("in/obj.bin.aux.xml", b"<PAMDataset/>")
    stat = azure_stat("/vsiaz/scenes/in/obj.bin")
    assert stat["size"] == len(data) and stat["etag"] and stat["last_modified"]
    assert azure_stat("az://scenes/in/obj.bin") == stat
    assert azure_read("/vsiaz/scenes/in/obj.bin", 0, 9) == data[:10]
    assert azure_read("az://scenes/in/obj.bin", 300, 300) == data[300:301]
    assert azure_read("/vsiaz/scenes/in/obj.bin", 10000, 20000) == data[10000:]  # past the end: what there is
    assert azure_names("/vsiaz/scenes/in/obj.bin", "in/obj", 10) == ["in/obj.bin", "in/obj.bin.aux.xml"]
    container.upload_blob("in/obj.bin", data[::-1], overwrite=True)  # replaced under the same name
    assert azure_stat("/vsiaz/scenes/in/obj.bin")["etag"] != stat["etag"]
    for missing in ("/vsiaz/scenes/in/none.bin", "/vsiaz/nocontainer/x", "/vsis3/scenes/in/obj.bin", "az://scenes"):
        assert azure_stat(missing) is None and azure_read(missing, 0, 9) is None


def test_the_emulator_stops_with_its_test():
    import socket

    with azurite() as (_, env):
        port = int(env["AZURE_STORAGE_CONNECTION_STRING"].split("127.0.0.1:")[1].split("/")[0])
    with socket.socket() as probe:  # binding succeeds only once nothing listens there
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))

"""Side-car files of remote scenes (issue 19): a ``.msk`` validity mask or an ``.aux.xml`` next to a scene on a web
server or an object store is read as GDAL reads it next to a local file, so the URL's, the S3 object's and the GCS
object's outputs are the local file's, byte for byte. A scene without side-cars costs no side-car request of GDAL.
Real servers on loopback only (tests/loopback.py); the null model."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from loopback import RangeServer, moto_s3
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.remote import RemotePath, find_sidecars, is_sidecar, remote_open_options, stem_key

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 256
OPTIONS = {"vectors": False, "read_workers": 1}


def write_plain(path: Path, seed: int) -> Path:
    """A tiled 3-band GeoTIFF of noise (no nodata, no mask of its own)."""
    data = np.random.default_rng(seed).integers(1, 256, size=(3, SIZE, SIZE), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint8", "crs": "EPSG:32618",
               "transform": from_origin(500000.0, 4000256.0, 1.0, 1.0), "tiled": True, "blockxsize": 128,
               "blockysize": 128}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_with_msk(path: Path, seed: int) -> Path:
    """A scene whose validity mask (the left 100 columns invalid) is in the side-car ``<name>.msk``."""
    write_plain(path, seed)
    valid = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    valid[:, :100] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "r+") as ds:
        ds.write_mask(valid)
    assert path.with_name(path.name + ".msk").is_file()
    return path


def write_with_aux_nodata(path: Path, seed: int) -> Path:
    """A scene whose nodata value (0, on a 64 px stripe of the top rows) is declared only in ``<name>.aux.xml``."""
    write_plain(path, seed)
    with rasterio.open(path, "r+") as ds:
        stripe = ds.read()
        stripe[:, :64, :] = 0
        ds.write(stripe)
    bands = "".join(f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue></PAMRasterBand>' for b in (1, 2, 3))
    path.with_name(path.name + ".aux.xml").write_text(f"<PAMDataset>{bands}</PAMDataset>")
    return path


WRITERS = {"msk": write_with_msk, "aux": write_with_aux_nodata}


def run(name: str, out: Path):
    manifest = predict([name], "null", ["the fields"], out, PredictOptions(**OPTIONS))
    assert manifest.exit_code == 0, [r.error for r in manifest.results]
    masks = sorted(out.rglob("mask.tif"))
    assert len(masks) == 1
    return masks[0]


def masked_pixels(mask: Path) -> int:
    with rasterio.open(mask) as ds:
        return int((ds.read_masks(1) == 0).sum())


@pytest.fixture()
def sidecar_env(monkeypatch, cache_dir):
    """rrsis chooses the side-car setting (a user's GDAL_DISABLE_READDIR_ON_OPEN would decide instead)."""
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN", raising=False)


@pytest.mark.parametrize("kind", ["msk", "aux"])
def test_url_scene_with_a_sidecar_writes_the_local_mask(kind, tmp_path, sidecar_env):
    """The side-car changes the result (its invalid pixels are nodata in the mask), and the URL's mask is the local
    file's byte for byte."""
    root = tmp_path / "site"
    root.mkdir()
    scene = WRITERS[kind](root / f"{kind}-scene.tif", seed=1)
    local = run(str(scene), tmp_path / "local")
    assert masked_pixels(local) == (100 * SIZE if kind == "msk" else 64 * SIZE)
    server = RangeServer(root).start()
    try:
        remote = run(f"{server.url}/{scene.name}", tmp_path / "url")
    finally:
        server.stop()
    assert remote.relative_to(tmp_path / "url") == local.relative_to(tmp_path / "local")
    assert remote.read_bytes() == local.read_bytes()


def test_url_scene_without_sidecars_costs_no_gdal_probe(tmp_path, sidecar_env):
    """rrsis asks for the two side-cars that change results (one byte each); GDAL then asks for nothing but the
    scene (it would probe ~45 names, a round trip each, if it looked)."""
    root = tmp_path / "site"
    root.mkdir()
    write_plain(root / "plain.tif", seed=2)
    server = RangeServer(root).start()
    try:
        run(f"{server.url}/plain.tif", tmp_path / "url")
        asked = {path for _, path, *_ in server.requests}
    finally:
        server.stop()
    assert asked == {"/plain.tif", "/plain.tif.msk", "/plain.tif.aux.xml"}


@pytest.fixture()
def users_readdir(monkeypatch, cache_dir, tmp_path):
    """``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` in the environment for one test. rasterio's outermost ``Env``
    copies the variables it sets from the environment into GDAL's own configuration when it exits (its "discovered
    options"), so the value would outlive the variable and hide the ``.msk`` of every later test's local files:
    it is removed from GDAL's configuration too, and a local ``.msk`` is checked to be read again."""
    from rasterio.env import set_gdal_config

    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    yield
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN")
    set_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN", None)
    with rasterio.open(write_with_msk(tmp_path / "after.tif", seed=6)) as ds:
        assert int((ds.dataset_mask() == 0).sum()) == 100 * SIZE


def test_the_users_setting_wins_and_costs_no_probe(tmp_path, users_readdir):
    """``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` set by the user: no side-car request at all, side-cars unread."""
    root = tmp_path / "site"
    root.mkdir()
    write_with_msk(root / "optout.tif", seed=3)
    server = RangeServer(root).start()
    try:
        remote = run(f"{server.url}/optout.tif", tmp_path / "url")
        asked = {path for _, path, *_ in server.requests}
    finally:
        server.stop()
    assert asked == {"/optout.tif"} and masked_pixels(remote) == 0



def test_s3_scene_side_cars_from_one_listing(tmp_path, sidecar_env, monkeypatch):
    """S3: one listing of the scene's stem tells its side-cars (another scene sharing the stem is none); the
    object's mask is the local file's byte for byte."""
    root = tmp_path / "site"
    root.mkdir()
    scene = write_with_msk(root / "field.tif", seed=4)
    plain = write_plain(root / "field.b.tif", seed=5)  # starts with the stem "field." but is another scene
    local = run(str(scene), tmp_path / "local")
    with moto_s3() as (client, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client.create_bucket(Bucket="scenes")
        for path in (scene, scene.with_name(scene.name + ".msk"), plain):
            client.upload_file(str(path), "scenes", f"in/{path.name}")
        assert find_sidecars(RemotePath("s3://scenes/in/field.tif")) is True
        assert find_sidecars(RemotePath("s3://scenes/in/field.b.tif")) is False
        assert find_sidecars(RemotePath("s3://no-such-bucket/in/field.tif")) is None  # cannot be listed
        remote = run("s3://scenes/in/field.tif", tmp_path / "s3")
    assert remote.relative_to(tmp_path / "s3") == local.relative_to(tmp_path / "local")
    assert remote.read_bytes() == local.read_bytes()


def test_side_car_names_and_the_open_setting(monkeypatch):
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN", raising=False)
    assert stem_key("in/a/scene.tif") == "in/a/scene" and stem_key("scene") == "scene"
    for name in ("in/scene.tif.msk", "in/scene.tif.aux.xml", "in/scene.RPB", "in/scene_rpc.txt", "in/scene.tfw",
                 "in/scene.tif.ovr"):
        assert is_sidecar(name, "in/scene.tif"), name
    for name in ("in/scene.tif", "in/scene2.tif.msk", "in/scene.b.tif", "in/scene_2.TIFF", "in/scenery.txt"):
        assert not is_sidecar(name, "in/scene.tif"), name
    path = RemotePath("https://example.org/scene.tif")
    assert path.sidecars is None and remote_open_options(path)["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    path.sidecars = True
    assert remote_open_options(path)["GDAL_DISABLE_READDIR_ON_OPEN"] == "YES"
    assert pickle.loads(pickle.dumps(path)).sidecars is True  # a dask worker opens it as this process would
    signed = RemotePath("https://example.org/scene.tif?X-Amz-Signature=abc")
    assert find_sidecars(signed) is None  # a pre-signed URL signs one object: no request made
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "NO")
    assert remote_open_options(path)["GDAL_DISABLE_READDIR_ON_OPEN"] == "NO"

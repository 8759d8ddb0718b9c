"""Publishing a predict output (STAC Items and Catalog, per-prompt mosaics, merged vectors) and object-store
outputs (``--out s3://``) against moto's S3 server on loopback.

The STAC core schemas are vendored in ``tests/data/stac-schemas`` (from the pystac wheel, Apache-2.0); the
projection and raster extension schemas are not shipped by any installed package, so their fields are checked
structurally (``check_projection``, ``check_raster``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from front_helpers import run_cli, write_scene
from rasterio.transform import from_origin
from rasterio.windows import from_bounds

from rrsis_cli.distributed import merge_manifests
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.publish import MEDIA_TYPES, publish
from stub_models import PointwiseModel, use_model

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
STAC = "https://schemas.stacspec.org/v1.1.0/"
PROMPTS = ["water", "the red roofs"]
OPTIONS = dict(tile_size=64, device="cpu", save_prob=True)


@pytest.fixture()
def stub(monkeypatch):
    return use_model(monkeypatch, PointwiseModel())


def scenes(folder: Path) -> list[Path]:
    """Three small scenes: two side by side in UTM 18N (one 10 m, one 5 m pixels), one in UTM 17N."""
    folder.mkdir(parents=True, exist_ok=True)
    a = write_scene(folder / "a.tif")
    b = folder / "b.tif"
    with rasterio.open(a) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(b, "w", **{**profile, "transform": from_origin(500320, 4000000, 10, 10)}) as dst:
        dst.write(data[:, ::-1])
    c = write_scene(folder / "c.tif", crs="EPSG:32617")
    return [a, b, c]


def validator(schema_file: str):
    """A Draft 7 validator of a vendored STAC schema; every reference resolves to a vendored file."""
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    registry = Registry()
    for path in (SCHEMAS / "v1.1.0").glob("*.json"):
        spec = "catalog-spec" if path.name == "catalog.json" else "item-spec"
        registry = registry.with_resource(f"{STAC}{spec}/json-schema/{path.name}",
                                          Resource.from_contents(json.loads(path.read_text()), DRAFT7))
    for path in (SCHEMAS / "geojson").glob("*.json"):
        registry = registry.with_resource(f"https://geojson.org/schema/{path.name}",
                                          Resource.from_contents(json.loads(path.read_text()), DRAFT7))
    schema = json.loads((SCHEMAS / "v1.1.0" / schema_file).read_text())
    return Draft7Validator(schema, registry=registry)


def check_projection(item: dict) -> None:
    """Projection extension v2.0.0: ``proj:code`` (or ``proj:wkt2``), ``proj:shape`` [rows, cols],
    ``proj:transform`` (6 or 9 numbers), ``proj:bbox`` (4 numbers) in the item's properties."""
    props = item["properties"]
    assert "https://stac-extensions.github.io/projection/v2.0.0/schema.json" in item["stac_extensions"]
    assert isinstance(props.get("proj:code"), str) or isinstance(props.get("proj:wkt2"), str)
    assert len(props["proj:shape"]) == 2 and all(isinstance(v, int) and v > 0 for v in props["proj:shape"])
    assert len(props["proj:transform"]) in (6, 9) and all(isinstance(v, float) for v in props["proj:transform"])
    assert len(props["proj:bbox"]) == 4


def check_raster(asset: dict) -> None:
    """Raster extension v1.1.0: ``raster:bands``, one object per band with a known ``data_type``."""
    bands = asset["raster:bands"]
    assert len(bands) == 1 and bands[0]["data_type"] == "uint8" and bands[0]["nodata"] == 255
    assert bands[0]["sampling"] in ("area", "point")


def test_vendored_schemas_reject_a_broken_item():
    """The validator is not a rubber stamp: an Item without ``id`` or with a bad ``datetime`` fails."""
    item_validator = validator("item.json")
    good = {"type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": None, "links": [], "assets": {},
            "properties": {"datetime": "2024-01-01T00:00:00Z"}}
    assert not list(item_validator.iter_errors(good))
    assert list(item_validator.iter_errors({k: v for k, v in good.items() if k != "id"}))
    assert list(item_validator.iter_errors({**good, "properties": {"datetime": "yesterday"}}))


def test_items_catalog_mosaics_and_merged_vectors(tmp_path, stub):
    """predict --publish: one valid Item per pair with relative assets that exist, a valid Catalog linking them
    all, per prompt one VRT per CRS that covers every mask (rasterio and gdalinfo), and one GeoPackage with every
    scene's polygons in EPSG:4326."""
    inputs = scenes(tmp_path / "in")
    out = tmp_path / "out"
    manifest = predict(inputs, "m", PROMPTS, out, PredictOptions(**OPTIONS), publish=True)
    assert {r.status for r in manifest.results} == {"done"}
    catalog = json.loads((out / "catalog.json").read_text())
    assert not list(validator("catalog.json").iter_errors(catalog))
    item_links = [link["href"] for link in catalog["links"] if link["rel"] == "item"]
    assert sorted(item_links) == sorted(f"./{r.output_dir}/item.json" for r in manifest.results)
    item_validator = validator("item.json")
    for result in manifest.results:
        pair = out / result.output_dir
        item = json.loads((pair / "item.json").read_text())
        assert not list(item_validator.iter_errors(item)), result.output_dir
        check_projection(item)
        props = item["properties"]
        with rasterio.open(pair / "mask.tif") as ds:
            tags = ds.tags()
            assert props["proj:code"] == f"EPSG:{ds.crs.to_epsg()}"
            assert props["proj:shape"] == [ds.height, ds.width]
            assert props["proj:transform"] == list(ds.transform)[:6]
        assert props["rrsis:prompt"] == result.prompt == tags["prompt"]
        assert (props["rrsis:model"], props["rrsis:model_sha256"]) == ("pointwise", "pointwise-test")
        assert props["rrsis:threshold"] == 0.5 and props["rrsis:tile_size"] == 64
        assert props["rrsis:version"] == tags["rrsis_version"]
        assert props["rrsis:datetime_source"] == "processing"
        assert set(item["assets"]) == {"mask", "prob", "vectors"}
        assert item["assets"]["mask"]["type"] == MEDIA_TYPES["tif"]
        assert item["assets"]["vectors"]["type"] == "application/geo+json"
        for asset in item["assets"].values():
            assert asset["href"].startswith("./") and (pair / asset["href"]).is_file()
        check_raster(item["assets"]["mask"])
        check_raster(item["assets"]["prob"])
        assert item["assets"]["prob"]["raster:bands"][0]["scale"] == pytest.approx(1 / 254)
        root = next(link for link in item["links"] if link["rel"] == "root")
        assert (pair / root["href"]).resolve() == (out / "catalog.json").resolve()
        west, south, east, north = item["bbox"]
        assert -82 < west < east < -74 and 36 < south < north < 37  # UTM 17N/18N near 36 N, in lon/lat
    for prompt in PROMPTS:
        results = [r for r in manifest.results if r.prompt == prompt]
        folder = out / "mosaic" / results[0].output_dir.split("/")[1]
        assert sorted(p.name for p in folder.glob("*.vrt")) == ["mask-EPSG-32617.vrt", "mask-EPSG-32618.vrt"]
        for vrt in folder.glob("*.vrt"):
            info = subprocess.run(["gdalinfo", str(vrt)], capture_output=True, text=True, timeout=60)
            assert info.returncode == 0, info.stderr
            with rasterio.open(vrt) as mosaic:
                masks = [out / r.output_dir / "mask.tif" for r in results]
                covered = 0
                for path in masks:
                    with rasterio.open(path) as mask:
                        if mask.crs != mosaic.crs:
                            continue
                        covered += 1
                        assert path.name in info.stdout or str(path.parent.name) in info.stdout
                        window = from_bounds(*mask.bounds, transform=mosaic.transform)
                        data = mosaic.read(1, window=window, out_shape=(mask.height, mask.width),
                                           resampling=rasterio.enums.Resampling.nearest)
                        assert np.array_equal(data, mask.read(1)), path
                assert covered == (2 if "32618" in vrt.name else 1)
        merged = gpd.read_file(folder / "vectors.gpkg", layer="mask")
        assert merged.crs.to_epsg() == 4326
        expected = {Path(r.scene): r.features for r in results}
        assert sum(expected.values()) == len(merged) > 0
        counts = merged.groupby("scene_path").size().to_dict()
        assert {Path(k): v for k, v in counts.items()} == {k: v for k, v in expected.items() if v}
        assert set(merged["scene"]) <= {r.output_dir.split("/")[0] for r in results}


def test_merged_vectors_are_streamed_scene_by_scene(tmp_path, monkeypatch):
    """Each scene's polygons are appended before the next scene is read: memory holds one scene at a time."""
    import pyogrio
    from shapely.geometry import box

    from rrsis_cli.publish import Pair, merge_vectors

    sources = []
    for k, crs in enumerate(["EPSG:32618", "EPSG:32617", "EPSG:32618"]):
        frame = gpd.GeoDataFrame({"prompt": ["water"] * (k + 1), "score": [0.9] * (k + 1),
                                  "pixels": [4] * (k + 1), "area_m2": [100.0] * (k + 1)},
                                 geometry=[box(500000 + 20 * i, 4000000, 500010 + 20 * i, 4000010)
                                           for i in range(k + 1)], crs=crs)
        path = tmp_path / f"s{k}.gpkg"
        frame.to_file(path, layer="mask", engine="pyogrio")
        sources.append((Pair(f"/data/s{k}.tif", f"s{k}-0000000{k}", "water", f"s{k}-0000000{k}/water-x"), str(path)))
    calls = []
    read, write = pyogrio.read_dataframe, pyogrio.write_dataframe
    monkeypatch.setattr(pyogrio, "read_dataframe", lambda *a, **k: calls.append("read") or read(*a, **k))
    monkeypatch.setattr(pyogrio, "write_dataframe", lambda *a, **k: calls.append("write") or write(*a, **k))
    assert merge_vectors(sources, tmp_path / "merged.gpkg") == 6
    assert calls == ["read", "write"] * 3
    merged = gpd.read_file(tmp_path / "merged.gpkg", layer="mask")
    assert merged.crs.to_epsg() == 4326 and merged.groupby("scene").size().to_dict() == {
        "s0-00000000": 1, "s1-00000001": 2, "s2-00000002": 3}
    assert -82 < merged.total_bounds[0] < merged.total_bounds[2] < -74


def test_source_item_gives_datetime_and_derived_from(tmp_path, stub):
    """A scene read from a STAC item (predict on the Item's JSON; the input record carries ``stac_item``): the
    published Item's datetime is the source's and a ``derived_from`` link points at it."""
    scene = write_scene(tmp_path / "s.tif")
    source = tmp_path / "source-item.json"
    source.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.1.0", "id": "S2A_1",
        "geometry": {"type": "Point", "coordinates": [-75.0, 36.1]}, "bbox": [-75.0, 36.1, -75.0, 36.1],
        "properties": {"datetime": "2021-06-01T10:20:30Z"},
        "links": [{"rel": "self", "href": str(source)}],
        "assets": {"visual": {"href": str(scene), "type": "image/tiff; application=geotiff"}}}))
    out = tmp_path / "out"
    predict([str(source)], "m", ["water"], out, PredictOptions(tile_size=64, device="cpu"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["stac_item_id"] == "S2A_1" and manifest["results"][0]["status"] == "done"
    publish(out)
    item = json.loads((out / manifest["results"][0]["output_dir"] / "item.json").read_text())
    assert not list(validator("item.json").iter_errors(item))
    assert item["properties"]["datetime"] == "2021-06-01T10:20:30Z"
    assert item["properties"]["rrsis:datetime_source"] == "source-item"
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert len(derived) == 1 and Path(derived[0]["href"]).resolve() == source.resolve()
    assert set(item["assets"]) == {"mask", "vectors"}  # no prob.tif without --save-prob


def test_publish_after_shard_merge(tmp_path, stub, capsys):
    """Shards do not publish (they would race on one catalog); `rrsis manifest merge OUT --publish` publishes the
    whole run."""
    inputs = scenes(tmp_path / "in")
    out = tmp_path / "out"
    for index in range(2):
        predict(inputs, "m", ["water"], out, PredictOptions(tile_size=64, device="cpu"), shard=f"{index}/2",
                publish=True)
    assert not (out / "catalog.json").exists()
    code, _, _ = run_cli(capsys, "manifest", "merge", out, "--publish")
    assert code == 0
    catalog = json.loads((out / "catalog.json").read_text())
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == 3
    merged = merge_manifests(out)  # the merge is repeatable; publishing again gives the same catalog
    assert len(merged["results"]) == 3
    code, _, _ = run_cli(capsys, "publish", out)
    assert code == 0 and json.loads((out / "catalog.json").read_text()) == catalog
    moved = tmp_path / "elsewhere" / "out"  # relative hrefs: the folder moves as it is
    moved.parent.mkdir()
    out.rename(moved)
    for vrt in (moved / "mosaic").rglob("*.vrt"):
        with rasterio.open(vrt) as mosaic:
            assert (mosaic.read(1) != 255).any()
    for link in catalog["links"][1:]:
        item = json.loads((moved / link["href"]).read_text())
        assert all((moved / link["href"]).parent.joinpath(a["href"]).is_file() for a in item["assets"].values())


def test_failed_publication_keeps_the_masks_and_exits_3(tmp_path, stub, monkeypatch, capsys):
    import rrsis_cli.publish

    def broken(out, remote=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rrsis_cli.publish, "publish_output", broken)
    scene = write_scene(tmp_path / "s.tif")
    code, _, err = run_cli(capsys, "predict", scene, "-m", "m", "-p", "water", "--out", tmp_path / "out",
                           "--tile-size", "64", "--device", "cpu", "--publish")
    assert code == 3 and "publishing failed" in err and "rrsis publish" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["exit_code"] == 3 and [r["status"] for r in manifest["results"]] == ["done"]
    assert (tmp_path / "out" / manifest["results"][0]["output_dir"] / "mask.tif").is_file()


def test_publish_needs_a_manifest(tmp_path, capsys):
    code, _, err = run_cli(capsys, "publish", tmp_path)
    assert code == 2 and "manifest.json" in err


# ------------------------------------------------------------------------------------------------ S3 (moto)
@pytest.fixture()
def s3(monkeypatch, tmp_path):
    """moto's S3 server (:func:`loopback.moto_s3`: 127.0.0.1, a free port, its own process, since GDAL holds the
    GIL while it reads), a bucket, the environment GDAL and boto3 read; the staging folder under the test's
    tmp_path. Stopped at the end."""
    import tempfile

    from loopback import moto_s3

    with moto_s3() as (client, env):
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for key, value in {**env, "AWS_EC2_METADATA_DISABLED": "true", "GDAL_HTTP_TIMEOUT": "20"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        client.create_bucket(Bucket="bucket")
        yield client


def keys(client, prefix: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="bucket", Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_s3_output_uploads_publishes_and_rerun_skips(tmp_path, stub, s3, capsys):
    inputs = scenes(tmp_path / "in")[:2]
    url = "s3://bucket/runs/one/"
    first = predict(inputs, "m", ["water"], url, PredictOptions(**OPTIONS), publish=True)
    assert {r.status for r in first.results} == {"done"}
    stored = keys(s3, "runs/one/")
    for result in first.results:
        for name in ("mask.tif", "prob.tif", "mask.geojson", "item.json"):
            assert f"runs/one/{result.output_dir}/{name}" in stored
        assert result.outputs["mask"] == f"s3://bucket/runs/one/{result.output_dir}/mask.tif"
    assert {"runs/one/manifest.json", "runs/one/catalog.json"} <= stored
    prompt_dir = first.results[0].output_dir.split("/")[1]
    assert f"runs/one/mosaic/{prompt_dir}/vectors.gpkg" in stored
    from rrsis_cli.store import staging_dir

    staging = staging_dir(url)
    assert not any((staging / r.output_dir).exists() for r in first.results)  # uploaded, then removed
    vrt = next(k for k in stored if k.endswith(".vrt"))
    with rasterio.open(f"/vsis3/bucket/{vrt}") as mosaic, \
            rasterio.open(f"/vsis3/bucket/runs/one/{first.results[0].output_dir}/mask.tif") as mask:
        window = from_bounds(*mask.bounds, transform=mosaic.transform)
        assert np.array_equal(mosaic.read(1, window=window, out_shape=(mask.height, mask.width)), mask.read(1))
    catalog = json.loads(s3.get_object(Bucket="bucket", Key="runs/one/catalog.json")["Body"].read())
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == 2
    # the command line keeps the URL whole (no Path() collapsing s3:// to s3:/)
    code, _, _ = run_cli(capsys, "predict", *inputs, "-m", "m", "-p", "water", "--out", url, "--tile-size", "64",
                         "--device", "cpu", "--save-prob")
    assert code == 0
    second = json.loads(s3.get_object(Bucket="bucket", Key="runs/one/manifest.json")["Body"].read())
    assert {r["status"] for r in second["results"]} == {"skipped-existing"}


def test_s3_killed_upload_leaves_no_mask(tmp_path, stub, s3, monkeypatch):
    """The mask is uploaded last: a run killed while uploading leaves the pair without a mask in the store (its
    other files are there), and the next run redoes the pair and uploads it."""
    from rrsis_cli.store import RemoteOutput

    inputs = scenes(tmp_path / "in")[:1]
    url = "s3://bucket/killed"
    upload = RemoteOutput.upload

    def killed_at_the_mask(self, local, relative):
        if relative.endswith("mask.tif"):
            raise KeyboardInterrupt
        upload(self, local, relative)

    monkeypatch.setattr(RemoteOutput, "upload", killed_at_the_mask)
    with pytest.raises(KeyboardInterrupt):
        predict(inputs, "m", ["water"], url, PredictOptions(**OPTIONS))
    stored = keys(s3, "killed/")
    assert any(k.endswith("/prob.tif") for k in stored) and any(k.endswith("/mask.geojson") for k in stored)
    assert not any(k.endswith("/mask.tif") for k in stored)
    monkeypatch.setattr(RemoteOutput, "upload", upload)
    rerun = predict(inputs, "m", ["water"], url, PredictOptions(**OPTIONS))
    # the killed run's staged prob.tif (--save-prob) is still in the staging folder: the mask is re-derived from
    # it without running tiles, then uploaded
    assert [r.status for r in rerun.results] == ["rethresholded"]
    assert f"killed/{rerun.results[0].output_dir}/mask.tif" in keys(s3, "killed/")


def test_s3_missing_bucket_is_one_line_error(tmp_path, stub, s3, capsys):
    """A bucket that does not exist: exit 1 before any model loads, the URL named, nothing else written."""
    scene = write_scene(tmp_path / "s.tif")
    code, _, err = run_cli(capsys, "predict", scene, "-m", "m", "-p", "water", "--out", "s3://nobucket/x/",
                           "--tile-size", "64", "--device", "cpu")
    assert code == 1 and "s3://nobucket/x/" in err and "cannot be reached" in err
    assert "testing" not in err  # no credentials in the message
    assert keys(s3) == set()


def test_s3_output_refuses_a_cluster_and_other_stores(tmp_path, stub):
    from rrsis_cli.errors import UsageError

    scene = write_scene(tmp_path / "s.tif")
    with pytest.raises(UsageError, match="object-store outputs run in this process"):
        predict([scene], "m", ["water"], "s3://bucket/x/", PredictOptions(tile_size=64), cluster="local:1")
    with pytest.raises(UsageError, match="only s3://, gs:// and az://"):
        predict([scene], "m", ["water"], "abfs://container/x/", PredictOptions(tile_size=64))

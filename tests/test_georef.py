"""Scenes placed by GCPs or RPCs (issue 24, item 1): warped on the fly through GDAL's own transformers, outputs
on the warped grid, the manifest says how each scene was georeferenced.

The fixtures are copies of a crop of examples/data/RGB.byte.tif (EPSG:32618, 300 m pixels) that lose the
geotransform and keep only GCPs (a grid of pixel -> map points of the affine transform) or RPCs (an exact fit, in
lon/lat, of the same mapping: cubic numerators, denominators 1). The vectors of the copies must lie within one
pixel of those of the original, with a deterministic pointwise model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC
from rasterio.transform import RPCTransformer
from rasterio.windows import Window
from shapely import distance, get_coordinates, points

from helpers import pair_dir
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.scene import SceneReader
from stub_models import PointwiseModel, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
CROP = Window(380, 0, 224, 192)  # top edge of the scene, in UTM zone 18: data and a third of nodata collar
PIXEL = 300.04  # metres




@pytest.fixture()
def pointwise(monkeypatch):
    return use_model(monkeypatch, PointwiseModel())


def _crop():
    with rasterio.open(DATA / "RGB.byte.tif") as ds:
        return ds.read(window=CROP), ds.window_transform(CROP), ds.crs, ds.profile


def _write(path: Path, data, profile, transform=None, crs=None, gcps=None, rpcs=None) -> Path:
    profile = {k: v for k, v in profile.items() if k not in ("transform", "crs", "blockxsize", "blockysize",
                                                              "tiled")}
    profile.update(width=data.shape[2], height=data.shape[1])
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if gcps is not None:
                dst.gcps = (gcps, crs)
            if rpcs is not None:
                dst.rpcs = rpcs
    return path


def _lonlat_grid(transform, crs, height: int, width: int, n: int = 21):
    rows, cols = (a.ravel() for a in np.meshgrid(np.linspace(0, height, n), np.linspace(0, width, n),
                                                 indexing="ij"))
    xs = transform.c + transform.a * cols + transform.b * rows
    ys = transform.f + transform.d * cols + transform.e * rows
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return rows, cols, np.asarray(lon), np.asarray(lat)


def fit_rpcs(transform, crs, height: int, width: int, metres_per_height: float = 0.0) -> RPC:
    """RPCs that reproduce ``transform`` (in ``crs``): lon/lat of a grid of pixel corners, normalised, and a
    least-squares fit of the line and sample numerators on the 10 RPC00B terms without height (denominators 1).
    GDAL's RPC sample/line count from the centre of the first pixel, hence the half pixel. With
    ``metres_per_height``, the sample also moves by that many metres (east) per metre of height."""
    rows, cols, lon, lat = _lonlat_grid(transform, crs, height, width)
    lat_off, lon_off = (lat.min() + lat.max()) / 2, (lon.min() + lon.max()) / 2
    lat_scale, lon_scale = (lat.max() - lat.min()) / 2, (lon.max() - lon.min()) / 2
    lon_n, lat_n = (lon - lon_off) / lon_scale, (lat - lat_off) / lat_scale
    # RPC00B term order: 1 L P H LP LH PH L2 P2 H2 PLH L3 LP2 LH2 L2P P3 PH2 L2H P2H H3 (L lon, P lat, H height)
    terms = np.stack([np.ones_like(lon_n), lon_n, lat_n, lon_n * lat_n, lon_n ** 2, lat_n ** 2, lon_n ** 3,
                      lon_n * lat_n ** 2, lon_n ** 2 * lat_n, lat_n ** 3], axis=1)
    no_height = [0, 1, 2, 4, 7, 8, 11, 12, 14, 15]

    def numerator(target: np.ndarray) -> list[float]:
        coefficients, *_ = np.linalg.lstsq(terms, target, rcond=None)
        assert np.abs(terms @ coefficients - target).max() < 1e-5  # exact up to a tiny fraction of a pixel
        full = np.zeros(20)
        full[no_height] = coefficients
        return full.tolist()

    line_off, samp_off = height / 2, width / 2
    samp = numerator((cols - 0.5 - samp_off) / samp_off)
    samp[3] = metres_per_height / abs(transform.a) / samp_off  # H term: 1 unit of normalised height (1 m)
    return RPC(height_off=0.0, height_scale=1.0, lat_off=lat_off, lat_scale=lat_scale, long_off=lon_off,
               long_scale=lon_scale, line_off=line_off, line_scale=line_off, samp_off=samp_off,
               samp_scale=samp_off, line_num_coeff=numerator((rows - 0.5 - line_off) / line_off),
               line_den_coeff=[1.0] + [0.0] * 19, samp_num_coeff=samp, samp_den_coeff=[1.0] + [0.0] * 19,
               err_bias=0.0, err_rand=0.0)


def _gcp_vrt(path: Path, source: Path, transform, crs, height: int, width: int) -> Path:
    """As rasterio's tests/data/RGB.byte.gcp.vrt: a dataset CRS (EPSG:32618) with the default (identity)
    geotransform, and GCPs in lon/lat (EPSG:4326). GDAL places it by its GCPs, in their own CRS."""
    rows, cols, lon, lat = _lonlat_grid(transform, crs, height, width, n=5)
    points_xml = "".join(f'<GCP Id="{i}" Pixel="{c}" Line="{r}" X="{float(x)!r}" Y="{float(y)!r}" Z="0"/>'
                         for i, (r, c, x, y) in enumerate(zip(rows, cols, lon, lat, strict=True)))
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
                    f'<SourceFilename relativeToVRT="1">{source.name}</SourceFilename><SourceBand>{b}</SourceBand>'
                    "</SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32618</SRS>'
                    "<GeoTransform>0, 1, 0, 0, 0, 1</GeoTransform>"
                    f'<GCPList Projection="EPSG:4326" dataAxisToSRSAxisMapping="2,1">{points_xml}</GCPList>'
                    f"{bands}</VRTDataset>")
    return path


@pytest.fixture()
def scenes(tmp_path) -> dict[str, Path]:
    """The original crop (geotransform), a GCP copy and an RPC copy of it, and an RPC copy whose samples depend
    on the height (for --rpc-height / --rpc-dem)."""
    data, transform, crs, profile = _crop()
    height, width = data.shape[1:]
    gcps = [GroundControlPoint(row=r, col=c, x=transform.c + transform.a * c, y=transform.f + transform.e * r)
            for r in np.linspace(0, height, 5) for c in np.linspace(0, width, 5)]
    rpcs = fit_rpcs(transform, crs, height, width)
    with RPCTransformer(rpcs) as rpc:  # GDAL's RPC transformer reproduces the corners within 0.1 pixel
        corners = [(0, 0), (0, width), (height, 0), (height, width)]
        lon, lat = rpc.xy([r for r, _ in corners], [c for _, c in corners], offset="ul")
    xs, ys = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    for (row, col), x, y in zip(corners, xs, ys, strict=True):
        assert abs((x - transform.c) / transform.a - col) < 0.1 and abs((y - transform.f) / transform.e - row) < 0.1
    original = _write(tmp_path / "original.tif", data, profile, transform, crs)
    return {"original": original,
            "gcps_lonlat_vrt": _gcp_vrt(tmp_path / "gcps_lonlat.vrt", original, transform, crs, height, width),
            "gcps": _write(tmp_path / "gcps.tif", data, profile, crs=crs, gcps=gcps),
            "rpcs": _write(tmp_path / "rpcs.tif", data, profile, rpcs=rpcs),
            "rpcs_height": _write(tmp_path / "rpcs_height.tif", data, profile,
                                  rpcs=fit_rpcs(transform, crs, height, width, metres_per_height=3.0))}


def _run(scene: Path, out: Path, **options) -> tuple[dict, Path]:
    manifest = predict([scene], "pointwise", ["red roofs"], out,
                       PredictOptions(tile_size=64, batch_size=16, device="cpu", **options))
    assert manifest.exit_code == 0, [r.error for r in manifest.results]
    record = json.loads((out / "manifest.json").read_text())["inputs"][0]
    return record, pair_dir(out, scene, "red roofs")


def _boundary_distance(a, b) -> float:
    """Largest distance from a vertex of one geometry's boundary to the other's boundary (both ways)."""
    return max(float(distance(y.boundary, points(get_coordinates(x.boundary))).max())
               for x, y in ((a, b), (b, a)))


@pytest.mark.parametrize("fixture", ["gcps", "rpcs", "gcps_lonlat_vrt"])
def test_gcp_and_rpc_scenes_are_placed_like_the_original(pointwise, scenes, tmp_path, fixture):
    method = fixture[:4]
    _, original = _run(scenes["original"], tmp_path / "original")
    record, copy = _run(scenes[fixture], tmp_path / fixture)

    with rasterio.open(original / "mask.tif") as ref, rasterio.open(copy / "mask.tif") as mask:
        assert mask.crs == ref.crs
        assert mask.res == pytest.approx(ref.res, rel=1e-3)
        assert np.allclose(mask.bounds, ref.bounds, atol=PIXEL)
        assert (mask.read(1) == 1).sum() == pytest.approx((ref.read(1) == 1).sum(), rel=0.02)

    ref_vectors = gpd.read_file(original / "mask.geojson")
    vectors = gpd.read_file(copy / "mask.geojson")
    assert len(ref_vectors) > 5 and vectors.crs == ref_vectors.crs == "EPSG:4326"
    assert len(vectors) == pytest.approx(len(ref_vectors), abs=2)
    a, b = (v.to_crs("EPSG:32618").union_all() for v in (ref_vectors, vectors))
    assert _boundary_distance(a, b) <= PIXEL  # within one pixel
    assert a.symmetric_difference(b).area <= 0.02 * a.area

    georef = record["georeference"]  # the manifest says how the scene was placed, and on which grid
    assert georef["method"] == method and georef["warped"] is True
    assert georef["crs"] == ("EPSG:32618" if fixture == "gcps" else "EPSG:4326")
    assert georef["grid"]["crs"] == "EPSG:32618"  # the GCPs' CRS; for RPCs the UTM zone of the scene
    assert record["crs"] == "EPSG:32618"


@pytest.mark.parametrize("with_crs", [False, True])
def test_scene_without_georeference_stays_in_pixel_space(pointwise, tmp_path, with_crs):
    """No geotransform, GCPs or RPCs: pixel space, and a CRS alone (EPSG:32618 here) is not claimed."""
    data, transform, crs, profile = _crop()
    scene = _write(tmp_path / "plain.tif", data, profile, **({"transform": rasterio.Affine.identity(), "crs": crs}
                                                               if with_crs else {}))
    with rasterio.open(scene) as ds:
        assert ds.transform.is_identity and (ds.crs == crs) == with_crs and not ds.gcps[0] and not ds.rpcs
    record, out = _run(scene, tmp_path / "out")
    assert record["georeference"] == {"method": "none", "warped": False} and record["crs"] is None
    with rasterio.open(out / "mask.tif") as mask:
        assert mask.crs is None and mask.transform.is_identity and mask.shape == data.shape[1:]


def _dem(path: Path, height: float) -> Path:
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": 60, "height": 40, "count": 1, "dtype": "float32", "crs": "EPSG:4326",
               "transform": from_origin(-81.0, 27.0, 0.1, 0.1), "nodata": -9999.0}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 40, 60), height, np.float32))
    return path


def test_rpc_height_and_dem_are_honoured(scenes, tmp_path):
    scene = scenes["rpcs_height"]  # 3 m east per metre of height

    def origin(**kwargs) -> tuple[float, float, dict]:
        reader = SceneReader(scene, None, **kwargs)
        try:
            return reader.ds.transform.c, reader.ds.transform.f, reader.georeference.as_record()
        finally:
            reader.close()

    x0, y0, record0 = origin()
    assert record0["rpc_height"] == 0.0 and record0["rpc_height_source"] == "HEIGHT_OFF of the RPCs"
    x100, y100, record100 = origin(rpc_height=100.0)
    assert record100["rpc_height"] == 100.0 and record100["rpc_height_source"] == "--rpc-height"
    # a point at 100 m is seen 300 m further east: the same pixel lies 300 m further west on the ground
    assert x100 - x0 == pytest.approx(-300.0, abs=0.1 * PIXEL) and y100 == pytest.approx(y0, abs=0.1 * PIXEL)
    x_dem, y_dem, record_dem = origin(rpc_dem=_dem(tmp_path / "dem.tif", 100.0))
    assert record_dem["rpc_dem"].endswith("dem.tif")
    assert x_dem == pytest.approx(x100, abs=0.1 * PIXEL) and y_dem == pytest.approx(y100, abs=0.1 * PIXEL)


def test_rpc_options_from_the_command_line(pointwise, scenes, tmp_path, capsys):
    from rrsis_cli.cli import main

    dem = _dem(tmp_path / "dem.tif", 100.0)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(scenes["rpcs_height"]), "--model", "pointwise", "--prompt", "red roofs", "--out",
              str(out), "--tile-size", "64", "--device", "cpu", "--rpc-dem", str(dem), "--rpc-height", "5"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    record = json.loads((out / "manifest.json").read_text())["inputs"][0]["georeference"]
    assert record["rpc_dem"] == str(dem) and record["rpc_height"] == 5.0
    with rasterio.open(pair_dir(out, scenes["rpcs_height"], "red roofs") / "mask.tif") as mask:
        assert mask.crs == "EPSG:32618" and not mask.transform.is_identity
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(scenes["rpcs"]), "--model", "pointwise", "--prompt", "x", "--out", str(out),
              "--rpc-dem", str(tmp_path / "missing.tif")])
    assert exit_info.value.code == 2 and "missing.tif: --rpc-dem: file not found" in capsys.readouterr().err

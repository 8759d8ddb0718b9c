"""Band order: scenes whose bands carry no colour interpretation get one warning naming the bands read as RGB
(unless --bands is given); `rrsis overlay` takes --bands and refuses a mask that does not overlap the scene."""

from __future__ import annotations

import numpy as np
import pytest
from front_helpers import run_cli, write_scene


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_uninterpreted_bands_get_one_warning_naming_the_order(capsys, no_model, tmp_path, model):
    gray = write_scene(tmp_path / "gray.tif", count=4, dtype="uint16")  # GDAL: gray, undefined, ...
    rgb = write_scene(tmp_path / "rgb.tif", count=3)  # red, green, blue
    args = ["predict", gray, rgb, "-m", model, "-p", "x", "-o", tmp_path / "o", "--dry-run"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    (line,) = _warnings(err)
    assert "gray.tif" in line and "rgb.tif" not in line
    assert "no colour interpretation" in line and "bands 1,2,3 are read as red, green, blue" in line
    assert "--bands" in line
    code, _, err = run_cli(capsys, *args, "--bands", "3,2,1")
    assert code == 0 and _warnings(err) == []


def test_reversed_colour_interpretation_suggests_the_bands(capsys, no_model, tmp_path, model):
    bgr = write_scene(tmp_path / "bgr.tif", count=3, colorinterp=["blue", "green", "red"])
    code, _, err = run_cli(capsys, "predict", bgr, "-m", model, "-p", "x", "-o", tmp_path / "o", "--dry-run")
    (line,) = _warnings(err)
    assert "bands 1,2,3 (blue, green, red)" in line and "--bands 3,2,1" in line


def test_many_scenes_share_one_warning_line(capsys, no_model, tmp_path, model):
    scenes = [write_scene(tmp_path / f"g{i}.tif", dtype="uint16") for i in range(5)]
    code, _, err = run_cli(capsys, "predict", *scenes, "-m", model, "-p", "x", "-o", tmp_path / "o",
                           "--dry-run")
    (line,) = _warnings(err)
    assert "(and 4 more scene(s))" in line


@pytest.fixture()
def overlay_inputs(tmp_path):
    """A 3-band scene whose band 1 is bright and band 3 dark, and a mask on its grid with nothing set."""
    import rasterio

    scene = write_scene(tmp_path / "scene.tif", count=3)
    with rasterio.open(scene, "r+") as ds:
        ds.write(np.full((64, 64), 250, np.uint8), 1)
        ds.write(np.full((64, 64), 10, np.uint8), 3)
        profile = dict(ds.profile, count=1)
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.zeros((1, 64, 64), np.uint8))
    return scene, mask


def test_overlay_bands_option(capsys, overlay_inputs, tmp_path):
    from rrsis_cli.overlay import read_preview

    scene, mask = overlay_inputs
    default = read_preview(scene, mask, max_side=64).rgb
    swapped = read_preview(scene, mask, max_side=64, bands=[3, 2, 1]).rgb
    assert default[..., 0].mean() > 200 and swapped[..., 0].mean() < 50 and swapped[..., 2].mean() > 200
    code, _, err = run_cli(capsys, "overlay", scene, mask, "--bands", "3,2,1", "-o", tmp_path / "o.png")
    assert code == 0, err
    assert (tmp_path / "o.png").is_file()
    code, _, err = run_cli(capsys, "overlay", scene, mask, "--bands", "4", "-o", tmp_path / "p.png")
    assert code == 2 and "--bands" in err and "3 band(s)" in err and not (tmp_path / "p.png").exists()


def test_overlay_refuses_a_mask_off_the_scene(capsys, overlay_inputs, tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    scene, mask = overlay_inputs
    far = tmp_path / "far.tif"
    with rasterio.open(mask) as src:
        profile = dict(src.profile, transform=from_origin(600000, 4000000, 5, 5))  # 100 km east
        data = src.read()
    with rasterio.open(far, "w", **profile) as dst:
        dst.write(data)
    code, _, err = run_cli(capsys, "overlay", scene, far, "-o", tmp_path / "o.png")
    assert code == 1 and "does not overlap the scene" in err and not (tmp_path / "o.png").exists()


def test_overlay_aligns_a_mask_on_another_grid(overlay_inputs, tmp_path):
    """A mask at 10 m over the scene's 5 m grid (e.g. written with --gsd 10), covering its east half."""
    import rasterio
    from rasterio.transform import from_origin

    from rrsis_cli.overlay import read_preview

    scene, _ = overlay_inputs
    coarse = tmp_path / "coarse.tif"
    data = np.zeros((1, 32, 32), np.uint8)
    data[:, :, 16:] = 1
    with rasterio.open(coarse, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(500000, 4000000, 10, 10), nodata=255) as dst:
        dst.write(data)
    rgb = read_preview(scene, coarse, max_side=64).rgb.astype(int)
    magenta = (rgb[..., 0] > 150) & (rgb[..., 2] > 150) & (rgb[..., 1] < 120)
    assert magenta[:, 34:].all() and not magenta[:, :30].any()

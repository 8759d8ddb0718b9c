"""``rrsis overlay``: the tinted preview, its title (prompt, IoU with ground truth), legend and the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rrsis_cli.synth import make_demo_scene

SOURCE = Path(__file__).parents[1] / "examples" / "data" / "rgbn_5m.tif"
PROMPT = "the first object"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 192² demo scene and a mask of its first object (tagged with a prompt like rrsis predict does), and a
    second copy of the mask without tags."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    root = tmp_path_factory.mktemp("overlay")
    make_demo_scene(SOURCE, root / "s", size=192, cell=96, seed=3)
    with rasterio.open(root / "s" / "scene.tif") as src:
        objects = gpd.read_file(root / "s" / "objects.geojson").to_crs(src.crs)
        mask = rasterize(objects.geometry[:1], out_shape=(192, 192), transform=src.transform).astype("uint8")
        profile = dict(src.profile, count=1, photometric="MINISBLACK")
    for name, tags in (("mask.tif", {"prompt": PROMPT}), ("untagged.tif", {})):
        with rasterio.open(root / name, "w", **profile) as dst:
            dst.write(mask, 1)
            dst.update_tags(**tags)
    return {"scene": root / "s" / "scene.tif", "mask": root / "mask.tif", "untagged": root / "untagged.tif",
            "gt": root / "s" / "objects.geojson", "pixels": mask, "n_objects": len(objects)}


def _legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_preview_tints_the_mask_magenta(scene):
    from rrsis_cli.overlay import read_preview

    preview = read_preview(scene["scene"], scene["mask"], max_side=192)
    assert preview.rgb.shape == (192, 192, 3) and preview.rgb.dtype == np.uint8
    ys, xs = np.nonzero(scene["pixels"])
    centre = preview.rgb[int(ys.mean()), int(xs.mean())].astype(int)
    assert centre[0] > 150 and centre[2] > 150 and centre[1] < 120  # magenta
    assert preview.prompt == PROMPT and preview.outlines is None and preview.iou is None


def test_figure_has_prompt_title_iou_and_legend_with_ground_truth(scene):
    from matplotlib.collections import LineCollection

    from rrsis_cli.evaluate import score_scene
    from rrsis_cli.overlay import overlay_figure

    fig = overlay_figure(scene["scene"], scene["mask"], gt=scene["gt"], max_side=192)
    (ax,) = fig.axes
    expected = score_scene(scene["mask"], scene["gt"])["IoU"]
    assert 0.0 < expected < 0.5  # one object of several: the IoU shown is the real score, not 0 or 1
    title = ax.get_title()
    assert PROMPT in title and f"IoU {expected:.4f}" in title
    assert _legend_texts(fig) == ["prediction", "ground truth"]
    (outlines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(outlines.get_segments()) >= scene["n_objects"]  # one ring per object at least
    inside = np.concatenate(outlines.get_segments())
    assert (inside >= -1).all() and (inside <= 193).all()  # drawn on the preview's pixel grid


def test_figure_without_ground_truth_and_title_fallbacks(scene):
    from rrsis_cli.overlay import overlay_figure

    fig = overlay_figure(scene["scene"], scene["mask"], max_side=96)
    assert PROMPT in fig.axes[0].get_title() and "IoU" not in fig.axes[0].get_title()
    assert _legend_texts(fig) == ["prediction"]
    assert fig.axes[0].get_images()[0].get_array().shape[:2] == (96, 96)
    assert overlay_figure(scene["scene"], scene["untagged"], max_side=96).axes[0].get_title() == "untagged.tif"
    assert overlay_figure(scene["scene"], scene["mask"], max_side=96, title="my title").axes[0].get_title() == \
        "my title"


def test_png_is_written_with_mask_outlines_and_legend_area(scene, tmp_path):
    from rrsis_cli.overlay import render_overlay

    png = render_overlay(scene["scene"], scene["mask"], tmp_path / "sub" / "o.png", gt=scene["gt"], max_side=192)
    assert png == tmp_path / "sub" / "o.png" and png.is_file()
    assert not list(png.parent.glob(".*tmp*"))  # written under a temporary name, then renamed
    image = np.array(Image.open(png).convert("RGB")).astype(int)
    assert image.shape[0] > 192 and image.shape[1] >= 192  # the preview plus room for the title and legend
    magenta = (image[..., 0] > 150) & (image[..., 2] > 150) & (image[..., 1] < 120)
    yellow = (image[..., 0] > 220) & (image[..., 1] > 200) & (image[..., 2] < 60)
    assert magenta.sum() > 20 and yellow.sum() > 20


def test_cli_overlay_writes_the_png(scene, tmp_path, capsys):
    from rrsis_cli.cli import main

    out = tmp_path / "cli.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["overlay", str(scene["scene"]), str(scene["mask"]), "--gt", str(scene["gt"]), "--out", str(out),
              "--max-side", "128", "--title", "cli title"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert out.is_file() and Image.open(out).size[0] >= 128

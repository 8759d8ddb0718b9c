"""``rrsis data synth`` backend: seeded referring dataset on real imagery, and the georeferenced demo scene."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rrsis_cli.synth import Thing, compose_chip, make_dataset, make_demo_scene, shape_mask

DATA = Path(__file__).parents[1] / "examples" / "data"
SOURCE = DATA / "rgbn_5m.tif"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    report = make_dataset([SOURCE], root, {"train": 24, "val": 8, "test": 8}, chip_size=64, seed=5)
    return root, report


def test_dataset_layout_counts_and_report(dataset):
    root, report = dataset
    assert report["splits"]["train"] == {"samples": 24, "by_type": {"attribute": 6, "position": 6,
                                                                    "comparison": 6, "relation": 6}}
    rows = list(csv.DictReader(open(root / "test.csv")))
    assert len(rows) == 8 and set(rows[0]) == {"id", "image", "mask", "expression", "category", "type"}
    for row in rows:
        image = np.array(Image.open(root / row["image"]))
        mask = np.array(Image.open(root / row["mask"]))
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() > 10
        assert row["category"] in row["expression"]
    assert json.loads((root / "synth_report.json").read_text())["heldout_vocabulary_check"]["test"][
        "unseen_in_train"] == []


def test_same_seed_same_bytes(dataset, tmp_path):
    root, _ = dataset
    make_dataset([SOURCE], tmp_path / "again", {"train": 24, "val": 8, "test": 8}, chip_size=64, seed=5)
    assert _digest(tmp_path / "again") == _digest(root)
    make_dataset([SOURCE], tmp_path / "other", {"train": 24, "val": 8, "test": 8}, chip_size=64, seed=6)
    assert _digest(tmp_path / "other") != _digest(root)


@pytest.mark.parametrize("seed", range(12))
def test_every_expression_needs_the_language(seed):
    """Look-alike distractors make colour or shape alone insufficient for every expression type."""
    rng = np.random.default_rng(seed)
    background = np.full((96, 96, 3), 120, np.uint8)
    for kind in ("attribute", "position", "comparison", "relation"):
        chip = None
        while chip is None:
            chip = compose_chip(background, kind, rng)
        _, mask, expression, _, things = chip
        target, others = things[0], things[1:]
        twins = [t for t in others if (t.shape, t.colour) == (target.shape, target.colour)]
        assert mask.sum() > 0
        if kind == "attribute":
            assert any(t.shape == target.shape and t.colour != target.colour for t in others)
            assert any(t.colour == target.colour and t.shape != target.shape for t in others)
        elif kind == "position":
            assert twins
            quadrant = ("upper" if target.cy < 48 else "lower") + (" left" if target.cx < 48 else " right")
            assert expression.endswith(quadrant)
            assert all((t.cy < 48, t.cx < 48) != (target.cy < 48, target.cx < 48) for t in twins)
        elif kind == "comparison":
            (twin,) = twins
            ratio = target.radius / twin.radius
            assert ratio > 1.4 if "larger" in expression else ratio < 1 / 1.4
        else:
            (twin,) = twins
            anchor = others[-1]
            assert anchor.shape != target.shape and expression.endswith(anchor.shape)
            left = "left of" in expression
            assert (target.cx < anchor.cx < twin.cx) if left else (twin.cx < anchor.cx < target.cx)


def test_shape_masks():
    circle = shape_mask(Thing("circle", "red", 10, 10, 5), 20, 20)
    assert abs(circle.sum() - np.pi * 25) < 8
    square = shape_mask(Thing("square", "red", 10, 10, 5), 20, 20)
    assert square.sum() == 100  # half-side 0.9 * 5 = 4.5 px around a pixel-centre grid: 10 x 10
    triangle = shape_mask(Thing("triangle", "red", 10, 10, 5), 20, 20)
    assert 0.3 * square.sum() < triangle.sum() < square.sum()


def test_demo_scene_is_georeferenced_with_exact_ground_truth(tmp_path):
    import geopandas as gpd
    import rasterio

    report = make_demo_scene(SOURCE, tmp_path / "demo", size=384, cell=96, seed=2)
    with rasterio.open(SOURCE) as src, rasterio.open(tmp_path / "demo" / "scene.tif") as scene:
        assert scene.crs == src.crs and scene.transform == src.transform
        assert (scene.width, scene.height, scene.count) == (384, 384, 3)
        pixel_area = abs(scene.transform.a * scene.transform.e)
    objects = gpd.read_file(tmp_path / "demo" / "objects.geojson")
    assert len(objects) == report["objects"] == 16
    utm = objects.to_crs(report["crs"])
    assert np.allclose(utm.area, objects["pixels"] * pixel_area, rtol=1e-6)
    for prompt, info in report["prompts"].items():
        gt = gpd.read_file(tmp_path / "demo" / info["path"])
        colour, shape = prompt.split()[-2:]
        assert len(gt) == info["objects"] == int(((objects.colour == colour) & (objects["shape"] == shape)).sum())


def test_absent_referent_chips_have_empty_masks_and_look_alikes():
    rng = np.random.default_rng(0)
    background = np.full((96, 96, 3), 120, np.uint8)
    chip = None
    while chip is None:
        chip = compose_chip(background, "absent", rng)
    image, mask, expression, category, things = chip
    colour, shape = expression.split()[1:3]
    assert not mask.any() and category == shape
    assert all((t.colour, t.shape) != (colour, shape) for t in things)
    assert any(t.shape == shape for t in things) and any(t.colour == colour for t in things)
    assert (image != 120).any()


def test_absent_fraction_only_affects_training(tmp_path):
    report = make_dataset([SOURCE], tmp_path / "d", {"train": 40, "val": 12}, chip_size=64, seed=1,
                          absent_fraction=0.5)
    assert report["splits"]["train"]["by_type"].get("absent", 0) >= 10
    assert "absent" not in report["splits"]["val"]["by_type"]
    empty = [r for r in csv.DictReader(open(tmp_path / "d" / "train.csv")) if r["type"] == "absent"]
    assert all(not np.array(Image.open(tmp_path / "d" / r["mask"])).any() for r in empty)

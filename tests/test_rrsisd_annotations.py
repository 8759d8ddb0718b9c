"""RRSIS-D annotations in the form of the real files (``shared/reference/datasets.md``): ``segmentation`` is a
list holding an RLE dict with compressed-string counts, the annotation's category key is ``categories_id``.
Every mask the reader returns is compared with one decoded here with pycocotools the way RMSIN's loader does it
(``refer.py`` ``getMask``: polygons through ``frPyObjects`` when ``segmentation[0]`` is a list, otherwise the list
of RLE dicts straight to ``decode``; the parts are summed and ``dataset_refer_bert.py`` keeps ``mask == 1``)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rrsis_cli.data import open_dataset

H = W = 800  # every RRSIS-D image is 800 x 800
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
CATEGORIES = ["Expressway-Service-area", "Expressway-toll-station", "airplane", "airport", "baseballfield",
              "basketballcourt", "bridge", "chimney", "dam", "golffield", "groundtrackfield", "harbor", "overpass",
              "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill"]


# ------------------------------------------------------------------------------------------ masks
def _blank():
    return np.zeros((H, W), np.uint8)


def ring():
    """A square with a square hole."""
    m = _blank()
    m[200:400, 300:520] = 1
    m[250:330, 360:450] = 0
    return m


def several_parts():
    """Three separate parts, one of them with a hole, in one mask (one RLE)."""
    m = _blank()
    m[10:60, 700:790] = 1
    m[500:780, 20:90] = 1
    m[600:700, 400:700] = 1
    m[630:660, 450:500] = 0
    return m


def disc(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def compressed(m):
    """pycocotools' compressed RLE with the counts as a str, as json.load gives it back."""
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed(m):
    flat = m.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def official_target(segmentation):
    """The training/evaluation target of RMSIN's loader, decoded independently with pycocotools. Its
    ``getMask`` cannot take a bare RLE dict (it indexes ``segmentation[0]``) nor uncompressed counts in the list
    (``decode`` wants bytes), and ``frPyObjects`` fails when the first polygon has fewer than 3 points; those are
    read here as one-item lists, through ``frPyObjects``, and with a valid polygon first."""
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if isinstance(segmentation[0], list):
        polygons = sorted(segmentation, key=len, reverse=True)  # pycocotools draws short ones as nothing
        parts = mask_utils.decode(mask_utils.frPyObjects(polygons, H, W))
    elif isinstance(segmentation[0]["counts"], list):
        parts = mask_utils.decode(mask_utils.frPyObjects(segmentation, H, W))
    else:
        parts = mask_utils.decode(segmentation)
    return np.sum(parts, axis=2).astype(np.uint8) == 1


TRIANGLE = [100.0, 100.0, 300.0, 120.0, 180.0, 330.0]
SQUARE = [200, 200, 420, 200, 420, 400, 200, 400]
DEGENERATE = [[50, 60, 90, 95], [700, 700], [10, 10, 20, 20, 30]]  # 2 points, 1 point, 2 points + 1 odd value


def annotations():
    """ref id -> (split, segmentation, ground truth or None, category id). Ids follow the real numbering
    (image_id == ann_id == ref_id == sent_id)."""
    a, b = disc(400, 400, 150), disc(400, 560, 120)  # overlapping parts
    return {
        6000: ("test", [compressed(ring())], ring(), 18),  # the real form: a list holding one RLE dict
        6003: ("test", [compressed(several_parts())], several_parts(), 0),
        6010: ("test", [compressed(a), compressed(b)], a ^ b, 2),  # several RLEs: the overlap has sum 2
        6011: ("test", [uncompressed(ring())], ring(), 6),  # list counts
        6012: ("test", compressed(several_parts()), several_parts(), 13),  # a bare RLE dict
        6015: ("test", [TRIANGLE, SQUARE, *DEGENERATE], None, 15),  # polygons, overlapping, plus degenerate ones
        6017: ("test", [*DEGENERATE, SQUARE], None, 16),  # a degenerate polygon first
        7001: ("val", [compressed(ring())], ring(), 4),
        7002: ("val", [], None, 5),
        7003: ("val", [{"size": [H, W], "counts": compressed(ring())["counts"][:9]}], None, 7),  # cut short
        7004: ("val", [compressed(ring()[:400, :400])], None, 8),  # an RLE of another size
        7005: ("val", None, None, 9),
        7006: ("val", [SQUARE, compressed(ring())], None, 10),  # polygons mixed with an RLE
        7007: ("val", [{"size": [H, W], "counts": "~~~~"}], None, 11),  # not the RLE alphabet
        8001: ("train", [compressed(several_parts())], several_parts(), 12),
        8002: ("train", [compressed(ring())], ring(), 14),
        8003: ("train", [{"size": [H, W]}], None, 17),  # no counts
    }


UNDECODABLE = {7002, 7003, 7004, 7005, 7006, 7007, 8003}


def write_real_layout(root):
    """refs(unc).p, instances.json and 800 x 800 JPEGs laid out and keyed as in the real RRSIS-D files."""
    meta = root / "rrsisd"
    images = root / "images" / "rrsisd" / "JPEGImages"
    meta.mkdir(parents=True)
    images.mkdir(parents=True)
    picture = np.stack([*np.meshgrid(np.arange(W) % 256, np.arange(H) % 256), np.full((H, W), 90)], -1)
    image_rows, anns, refs = [], [], []
    for ref_id, (split, segmentation, _, category) in annotations().items():
        name = f"{ref_id:05d}.jpg"
        Image.fromarray(picture.astype(np.uint8)).save(images / name)
        image_rows.append({"file_name": name, "height": H, "width": W, "id": ref_id})
        ann = {"bbox": [300, 200, 520, 400], "categories_id": category, "id": ref_id, "image_id": ref_id,
               "segmentation": segmentation, "area": 279213}  # bbox [x1, y1, x2, y2]; area is not a pixel count
        if segmentation is None:
            del ann["segmentation"]
        anns.append(ann)
        words = f"the {CATEGORIES[category].lower()} in the middle".split()
        refs.append({"image_id": ref_id, "split": split,
                     "sentences": [{"tokens": words, "raw": " ".join(words).capitalize(), "sent_id": ref_id,
                                    "sent": " ".join(words)}],
                     "file_name": name, "category_id": category, "ann_id": ref_id, "sent_ids": [ref_id],
                     "ref_id": ref_id})
    (meta / "instances.json").write_text(json.dumps({
        "images": image_rows, "annotations": anns,
        "categories": [{"name": n, "id": i} for i, n in enumerate(CATEGORIES)]}))
    refs.reverse()  # readers must not depend on the order of refs in the file
    (meta / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=4))
    return root


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    return write_real_layout(tmp_path_factory.mktemp("rrsisd_real"))


# ------------------------------------------------------------------------------------------ tests
def test_real_layout_masks_match_pycocotools(real_root):
    ann = json.loads((real_root / "rrsisd" / "instances.json").read_text())["annotations"][0]
    assert list(ann) == ["bbox", "categories_id", "id", "image_id", "segmentation", "area"]
    assert isinstance(ann["segmentation"], list) and isinstance(ann["segmentation"][0]["counts"], str)
    ds = open_dataset("rrsisd", real_root, "test")
    table = annotations()
    assert sorted(s.id for s in ds.samples) == [f"{i}_{i}" for i in sorted(i for i in table if i < 7000)]
    for sample in sorted(ds.samples, key=lambda s: s.extra["ref_id"]):  # 6000: the real form first
        ref_id = sample.extra["ref_id"]
        _, segmentation, truth, category = table[ref_id]
        assert sample.category == CATEGORIES[category]  # read from category_id / categories_id, id 0 included
        image, mask = ds.load_sample(sample)
        assert image.shape == (H, W, 3) and mask.shape == (H, W) and mask.dtype == bool
        assert np.array_equal(mask, official_target(segmentation)), ref_id
        if truth is not None:
            assert np.array_equal(mask, truth.astype(bool)), ref_id
        assert mask.any(), ref_id
    assert ds.info()["undecodable_refs"] == 0 and ds.info()["problems"] == []


def test_overlapping_parts_and_degenerate_polygons_follow_the_official_loader(real_root):
    from rrsis_cli.data.rrsisd import decode_segmentation

    a, b = disc(400, 400, 150), disc(400, 560, 120)
    both = decode_segmentation([compressed(a), compressed(b)], H, W)
    assert both.sum() == (a ^ b).sum() < (a | b).sum()  # sum == 1, not the union
    polygons = decode_segmentation([TRIANGLE, SQUARE], H, W)
    assert polygons[150, 150] and polygons[300, 300]  # in the triangle only, in the square only
    assert not polygons[210, 220]  # inside both polygons: sum 2
    assert np.array_equal(decode_segmentation([TRIANGLE, SQUARE, *DEGENERATE], H, W), polygons)
    assert np.array_equal(decode_segmentation([*DEGENERATE, TRIANGLE, SQUARE], H, W), polygons)
    assert not decode_segmentation(DEGENERATE, H, W).any()  # only degenerate polygons: nothing to draw


@pytest.mark.parametrize("seed", range(4))
def test_compressed_counts_parser_agrees_with_pycocotools(seed):
    from rrsis_cli.data.rrsisd import compressed_rle_counts

    rng = np.random.default_rng(seed)
    h, w = 37, 53
    m = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    if seed == 3:
        m[:] = 0
        m[0, 0] = 1  # a mask starting with the target: the first run is 0
    runs = compressed_rle_counts(compressed(m)["counts"])
    assert sum(runs) == h * w
    rebuilt = np.repeat(np.arange(len(runs)) % 2, runs).reshape(w, h).T
    assert np.array_equal(rebuilt, m)


def test_undecodable_annotations_are_empty_masks_with_a_counted_warning(real_root, capsys):
    ds = open_dataset("rrsisd", real_root, "val")
    for _ in range(2):  # a second pass (next epoch) neither fails nor warns again
        for sample in ds.samples:
            ref_id = sample.extra["ref_id"]
            _, mask = ds.load_sample(sample)
            assert mask.shape == (H, W)
            assert mask.any() == (ref_id not in UNDECODABLE), ref_id
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 6
    for ref_id in UNDECODABLE - {8003}:
        [line] = [w for w in warnings if f"ref {ref_id} " in w]
        assert "instances.json" in line and "cannot be decoded" in line and "empty mask" in line
    assert "6 such ref(s) in split 'val'" in warnings[-1]
    info = ds.info()
    assert info["undecodable_refs"] == 6
    problems = "\n".join(info["problems"])
    assert len(info["problems"]) == 6 and "7001" not in problems
    assert "7002_7002: empty mask: ref 7002 annotation 7002: segmentation is an empty list" in problems
    assert "ref 7004" in problems and "differs from the image's 800x800" in problems
    assert "ref 7005 annotation 7005: the annotation has no segmentation" in problems
    assert "ref 7003" in problems and "ref 7007" in problems and "ref 7006" in problems


def test_data_info_reports_undecodable_refs(real_root):
    cmd = [sys.executable, "-m", "rrsis_cli", "data", "info", str(real_root), "--format", "rrsisd"]
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    reports = {r["split"]: r for r in json.loads(res.stdout)}
    assert {s: r["undecodable_refs"] for s, r in reports.items()} == {"train": 1, "val": 6, "test": 0}
    assert reports["test"]["n_samples"] == 7 and reports["test"]["categories"]["Expressway-Service-area"] == 1
    assert "ref 8003" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([*cmd, "--split", "val"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "val: 6 ref(s) whose annotation cannot be decoded" in res.stdout
    res = subprocess.run([*cmd, "--split", "val", "--json", "--no-check"], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert json.loads(res.stdout)[0]["undecodable_refs"] is None


def test_evaluate_and_train_run_on_the_real_layout(real_root, tmp_path):
    from rrsis_cli.evaluate import evaluate_dataset
    from rrsis_cli.models import build_model, load_model

    ds = open_dataset("rrsisd", real_root, "test")
    summary = evaluate_dataset(build_model("lavt-tiny", seed=0), ds, tmp_path / "ev", image_size=64, plots=False)
    assert summary["n_samples"] == 7
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "train", "--dataset", "rrsisd", "--root", str(real_root),
                          "--train-split", "train", "--val-split", "val", "--model", "lavt-tiny", "--epochs", "1",
                          "--batch-size", "3", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ref 8003" in res.stderr and "ref 7002" in res.stderr
    assert load_model(tmp_path / "run" / "last").arch == "lavt"

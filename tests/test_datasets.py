"""Dataset readers on small fixtures written here in each exact on-disk format, and ``rrsis data info``."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rrsis_cli.data import open_dataset
from rrsis_cli.errors import DatasetError, UsageError

ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(seed, h=40, w=48):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ RefSegRS
def write_refsegrs(root):
    """Two images; masks hold soft edges (values 40 and 60) that the > 50 rule splits."""
    for i, stem in enumerate(("1001", "1002")):
        Image.fromarray(_image(i)).save(_mkdir(root / "images") / f"{stem}.tif")
        mask = np.zeros((40, 48), np.uint8)
        mask[5:15, 5:20] = 255
        mask[15, 5:20] = 60  # counts (> 50)
        mask[16, 5:20] = 40  # does not
        Image.fromarray(mask).save(_mkdir(root / "masks") / f"{stem}.tif")
    (root / "output_phrase_train.txt").write_text("1001 the white  building on the left\n1002 a road\n\n1001 vehicle\n")
    (root / "output_phrase_test.txt").write_text("1002 the river\n")
    return root


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_refsegrs_ids_threshold_and_expressions(tmp_path):
    ds = open_dataset("refsegrs", write_refsegrs(tmp_path), "train")
    assert [s.id for s in ds.samples] == ["train_0", "train_1", "train_3"]  # 0-based line index, blank kept
    assert ds.samples[0].expression == "the white building on the left"
    assert ds.samples[2].image.name == "1001.tif" and ds.samples[2].expression == "vehicle"
    image, mask = ds.load_sample(ds.samples[0])
    assert image.shape == (40, 48, 3) and image.dtype == np.uint8
    assert mask.sum() == 10 * 15 + 15  # the 255 block and the row of 60, not the row of 40
    assert len(open_dataset("refsegrs", tmp_path, "test")) == 1


def test_refsegrs_errors_name_the_problem(tmp_path):
    root = write_refsegrs(tmp_path)
    with pytest.raises(DatasetError, match="output_phrase_val.txt.*found output_phrase_test.txt"):
        open_dataset("refsegrs", root, "val")
    (root / "masks" / "1002.tif").unlink()
    with pytest.raises(DatasetError, match=r"line 2: 1002 \(mask\)"):
        open_dataset("refsegrs", root, "train")
    with pytest.raises(DatasetError, match="dataset root not found"):
        open_dataset("refsegrs", tmp_path / "nope", "train")
    with pytest.raises(UsageError, match="unknown dataset format"):
        open_dataset("coco", root, "train")


# ------------------------------------------------------------------------------------------ RISBench
def write_risbench(root):
    for i, name in enumerate(("P0001_0.png", "P0002_3.png")):
        _png(root / "img_rgb" / name, _image(10 + i, 32, 32))
        mask = np.zeros((32, 32), np.uint8)
        mask[: 4 * (i + 1), :8] = 255
        mask[20, :] = 100  # below the > 127 rule
        _png(root / "mask" / name, mask)
    (root / "output_phrase_test.txt").write_text(
        "P0001_0.png the large storage tank located at the north east corner next to the road\n"
        "P0002_3.png a ship\nP0001_0.png the tank\n")
    return root


def test_risbench_reader(tmp_path):
    ds = open_dataset("risbench", write_risbench(tmp_path), "test")
    assert [s.id for s in ds.samples] == ["test_0", "test_1", "test_2"]
    assert ds.samples[0].mask.name == "P0001_0.png" and ds.samples[2].image == ds.samples[0].image
    assert [int(ds.load_sample(s)[1].sum()) for s in ds.samples] == [32, 64, 32]
    info = ds.info()
    assert info["n_samples"] == 3 and info["n_images"] == 2 and info["problems"] == []
    assert info["expression_words"]["max"] == 14


def test_info_reports_size_mismatch_and_empty_masks(tmp_path):
    root = write_risbench(tmp_path)
    _png(root / "mask" / "P0002_3.png", np.zeros((16, 16), np.uint8))
    ds = open_dataset("risbench", root, "test")
    problems = ds.info()["problems"]
    assert problems == ["test_1: image 32x32 and mask 16x16 sizes differ"]
    with pytest.raises(DatasetError, match="test_1.*sizes differ"):
        ds.load_sample(ds.samples[1])
    _png(root / "mask" / "P0002_3.png", np.zeros((32, 32), np.uint8))
    assert open_dataset("risbench", root, "test").info()["problems"] == ["test_1: empty mask"]


# ------------------------------------------------------------------------------------------ RRSIS-D
def write_rrsisd(root, categories_key="categories_id"):
    """REFER layout: refs(unc).p (plain dicts), instances.json with a polygon, a compressed and an uncompressed
    RLE annotation, and 3 JPEGs."""
    from pycocotools import mask as mask_utils

    meta = _mkdir(root / "rrsisd")
    images = _mkdir(root / "images" / "rrsisd" / "JPEGImages")
    h, w = 30, 40
    block = np.zeros((h, w), np.uint8, order="F")
    block[10:20, 5:25] = 1
    compressed = mask_utils.encode(np.asfortranarray(block))
    compressed["counts"] = compressed["counts"].decode()
    uncompressed = {"size": [h, w], "counts": _uncompressed_counts(block)}
    segs = [[[5, 10, 25, 10, 25, 20, 5, 20]], compressed, uncompressed]
    image_rows, anns = [], []
    for i, seg in enumerate(segs):
        name = f"{i:05d}.jpg"
        Image.fromarray(_image(20 + i, h, w)).save(images / name)
        image_rows.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        anns.append({"id": 200 + i, "image_id": 100 + i, "segmentation": seg, categories_key: 1 + i % 2,
                     "bbox": [5, 10, 20, 10], "area": 200, "iscrowd": 0})
    (meta / "instances.json").write_text(json.dumps({
        "images": image_rows, "annotations": anns,
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "bridge"}]}))
    refs = []
    for i in range(3):
        refs.append({"ref_id": 7 + i, "ann_id": 200 + i, "image_id": 100 + i, "file_name": f"{i:05d}.jpg",
                     "split": "test" if i < 2 else "train", categories_key: 1 + i % 2,
                     "sentences": [{"sent": f"the object number {i}", "raw": f"The object number {i}.",
                                    "tokens": ["the", "object"], "sent_id": 30 + 2 * i},
                                   {"sent": "another  phrase", "raw": "Another phrase", "tokens": [],
                                    "sent_id": 31 + 2 * i}]})
    with open(meta / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return root, block.astype(bool)


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


@pytest.mark.parametrize("categories_key", ["categories_id", "category_id"])
def test_rrsisd_reader_decodes_polygons_and_rle(tmp_path, categories_key):
    root, block = write_rrsisd(tmp_path, categories_key)
    ds = open_dataset("rrsisd", root, "test")
    assert [s.id for s in ds.samples] == ["7_30", "7_31", "8_32", "8_33"]
    assert ds.samples[1].expression == "another phrase"
    assert [s.category for s in ds.samples] == ["vehicle", "vehicle", "bridge", "bridge"]
    for sample in ds.samples:
        image, mask = ds.load_sample(sample)
        assert image.shape == (30, 40, 3)
        # polygon rasterisation includes the boundary pixels; RLE is exact
        assert np.array_equal(mask, block) or (mask[block].all() and abs(int(mask.sum()) - int(block.sum())) <= 35)
    train = open_dataset("rrsisd", root, "train")
    image, mask = train.load_sample(train.samples[0])
    assert np.array_equal(mask, block)  # the uncompressed RLE
    # the rrsisd folder itself is accepted as the root
    assert len(open_dataset("rrsisd", root / "rrsisd", "test")) == 4


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_rrsisd_refuses_a_pickle_that_references_a_global(tmp_path):
    root, _ = write_rrsisd(tmp_path)
    with open(root / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 1, "x": Exploit()}], f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DatasetError, match=r"refs\(unc\).p.*refused.*(posix|os)\.system"):
            open_dataset("rrsisd", root, "test")
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "PWNED").exists()


def test_rrsisd_unknown_ids_and_missing_split(tmp_path):
    root, _ = write_rrsisd(tmp_path)
    with pytest.raises(DatasetError, match="split 'val' has no refs.*test, train"):
        open_dataset("rrsisd", root, "val")
    from rrsis_cli.data.rrsisd import load_plain_pickle

    refs = load_plain_pickle(root / "rrsisd" / "refs(unc).p")
    refs[0]["ann_id"] = 999
    (root / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DatasetError, match="ref 7: unknown ann_id"):
        open_dataset("rrsisd", root, "test")


# ------------------------------------------------------------------------------------------ data info CLI
def test_data_info_cli(tmp_path):
    root, _ = write_rrsisd(tmp_path)
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "data", "info", str(root), "--format", "rrsisd",
                          "--json"], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    reports = {r["split"]: r for r in json.loads(res.stdout)}
    assert reports["test"]["n_samples"] == 4 and reports["train"]["n_samples"] == 2
    assert reports["test"]["categories"] == {"bridge": 2, "vehicle": 2}
    assert "no refs" in reports["val"]["error"]
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "data", "info", str(root), "--format", "rrsisd",
                          "--split", "val"], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 1 and "no refs" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("format", ["refsegrs", "rrsisd", "risbench"])
def test_evaluate_runs_on_every_benchmark_format(tmp_path, format):
    """Each reader feeds `evaluate_dataset` (tiny random model): one row per sample, fixed ids, all outputs."""
    from rrsis_cli.evaluate import evaluate_dataset
    from rrsis_cli.models import build_model

    writers = {"refsegrs": write_refsegrs, "risbench": write_risbench,
               "rrsisd": lambda root: write_rrsisd(root)[0]}
    split = "train" if format == "refsegrs" else "test"
    ds = open_dataset(format, writers[format](tmp_path / "data"), split)
    summary = evaluate_dataset(build_model("lavt-tiny", seed=0), ds, tmp_path / "ev", image_size=64,
                               batch_size=2, save_masks=True)
    assert summary["n_samples"] == len(ds) and summary["dataset"]["format"] == format
    ids = [line.split(",")[0] for line in (tmp_path / "ev" / "per_sample.csv").read_text().splitlines()[1:]]
    assert ids == [s.id for s in ds.samples]
    assert sorted(p.stem for p in (tmp_path / "ev" / "masks").glob("*.png")) == sorted(ids)
    assert (tmp_path / "ev" / "precision_curve.png").is_file()


def test_train_cli_reads_a_benchmark_format(tmp_path):
    """`rrsis train --dataset rrsisd` runs on the REFER-layout fixture and writes a loadable model."""
    from rrsis_cli.models import load_model

    root, _ = write_rrsisd(tmp_path / "data")
    res = subprocess.run([sys.executable, "-m", "rrsis_cli", "train", "--dataset", "rrsisd", "--root", str(root),
                          "--train-split", "train", "--val-split", "test", "--model", "lavt-tiny", "--epochs", "1",
                          "--batch-size", "2", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    assert load_model(tmp_path / "run" / "last").arch == "lavt"
    assert "n_samples" in (tmp_path / "run" / "metrics.csv").read_text()


@pytest.mark.parametrize("card", ["rmsin-tiny", "lgce-tiny", "crobim-tiny", "btdnet-tiny"])
def test_evaluate_runs_every_architecture_through_the_registry(tmp_path, card):
    """`evaluate_dataset` needs nothing architecture-specific: every tiny card scores a fixture split."""
    from rrsis_cli.evaluate import evaluate_dataset
    from rrsis_cli.models import build_model

    ds = open_dataset("risbench", write_risbench(tmp_path / "data"), "test")
    summary = evaluate_dataset(build_model(card, seed=0), ds, tmp_path / "ev", image_size=64, plots=False)
    assert summary["n_samples"] == 3 and summary["model"]["arch"] == card.split("-")[0]

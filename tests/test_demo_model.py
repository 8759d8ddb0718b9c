"""The shipped demo model (examples/demo-model) has learnt to ground language on the synthetic task.

The fixed split: the first 80 chips of the synthetic test split (seed 0, the four images of examples/data),
regenerated here byte-identically. Scored with the official protocol at the model's input size (argmax; IoU 0
on an empty union; every test chip has a referent). Measured when the model was trained (all 400 test chips):
mIoU 0.842 with the expressions, 0.099 with empty expressions (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rrsis_cli.data.transforms import resize_image
from rrsis_cli.models import load_model
from rrsis_cli.synth import make_dataset

ROOT = Path(__file__).parents[1]
SOURCES = [ROOT / "examples" / "data" / n for n in
           ("rgbn_5m.tif", "RGB.byte.tif", "L7_ETMs.tif", "landsat8_uint16_crop.tif")]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-test")
    make_dataset(SOURCES, root, {"train": 0, "val": 0, "test": 80}, chip_size=96, seed=0)
    return root, list(csv.DictReader(open(root / "test.csv")))


def score(model, root: Path, rows: list[dict], blind: bool) -> dict[str, float]:
    cfg = model.config
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    by_type = defaultdict(list)
    for start in range(0, len(rows), 40):
        batch = rows[start:start + 40]
        pixels = torch.stack([(resize_image(np.array(Image.open(root / r["image"]).convert("RGB")),
                                            cfg["image_size"]) - mean) / std for r in batch])
        ids, mask = model.tokenize(["" if blind else r["expression"] for r in batch])
        with torch.no_grad():
            pred = model(pixels, ids, mask).argmax(1).numpy().astype(bool)
        for row, p in zip(batch, pred, strict=True):
            gt = np.array(Image.open(root / row["mask"])) > 0
            union = (p | gt).sum()
            by_type[row["type"]].append((p & gt).sum() / union if union else 0.0)
    result = {k: float(np.mean(v)) for k, v in by_type.items()}
    result["mIoU"] = float(np.mean([v for vs in by_type.values() for v in vs]))
    return result


def test_demo_model_grounds_language(split):
    root, rows = split
    model = load_model(ROOT / "examples" / "demo-model")
    with_text = score(model, root, rows, blind=False)
    blind = score(model, root, rows, blind=True)
    assert with_text["mIoU"] >= 0.7, with_text
    assert blind["mIoU"] <= with_text["mIoU"] - 0.3, (with_text, blind)
    for kind in ("attribute", "position", "comparison", "relation"):
        assert with_text[kind] > 0.5, with_text  # every expression type is learnt, not just one

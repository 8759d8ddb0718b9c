"""The ``folder`` dataset format, for users' own data and ``rrsis data synth`` output.

Layout::

    ROOT/<split>.csv | <split>.jsonl   one row per sample: image, mask, expression[, category][, id][, type]
    ROOT/images/...                    paths in the rows are relative to ROOT (or absolute)
    ROOT/masks/...                     single-band masks, non-zero = target (PNG, TIFF, JPEG)

Sample ids are the ``id`` column, or the 0-based row index. Validation on open: the split file exists and has
the required columns; every image and mask file exists (the first few missing ones are named).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rrsis_cli.errors import DatasetError

REQUIRED = ("image", "mask", "expression")


@dataclass
class Sample:
    id: str
    image: Path
    mask: Path
    expression: str
    category: str | None = None
    extra: dict = field(default_factory=dict)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 from PNG/JPEG/TIFF (GeoTIFFs via rasterio, first three bands)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as src:
            bands = src.read(indexes=list(range(1, min(3, src.count) + 1)))
        if bands.shape[0] < 3:
            bands = np.repeat(bands[:1], 3, axis=0)
        if bands.dtype != np.uint8:
            data = bands.astype(np.float32)
            lo, hi = np.percentile(data, (2, 98))
            bands = np.clip((data - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        return bands.transpose(1, 2, 0)
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool, non-zero = target."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as src:
            return src.read(1) > 0
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("L")) > 0


class FolderDataset:
    """Samples of one split of a ``folder`` dataset (see the module docstring)."""

    format = "folder"

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError("dataset root not found (expected <split>.csv|jsonl, images/, masks/)", self.root)
        self.samples = self._read_rows()
        missing = [str(p) for s in self.samples for p in (s.image, s.mask) if not p.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} listed files are missing, e.g. {', '.join(missing[:3])}", self.root)

    def _rows(self) -> tuple[Path, list[dict]]:
        for suffix in (".csv", ".jsonl"):
            path = self.root / f"{self.split}{suffix}"
            if path.is_file():
                break
        else:
            raise DatasetError(f"no {self.split}.csv or {self.split}.jsonl for split {self.split!r}", self.root)
        try:
            if suffix == ".csv":
                with open(path, newline="", encoding="utf-8") as f:
                    return path, list(csv.DictReader(f))
            return path, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError, csv.Error) as exc:
            raise DatasetError(f"unreadable split file: {exc}", path) from exc

    def _read_rows(self) -> list[Sample]:
        path, rows = self._rows()
        samples = []
        for i, row in enumerate(rows):
            absent = [k for k in REQUIRED if not row.get(k)]
            if absent:
                raise DatasetError(f"row {i} lacks {', '.join(absent)} (columns: {', '.join(REQUIRED)}"
                                   "[, category][, id])", path)
            extra = {k: v for k, v in row.items() if k not in (*REQUIRED, "id", "category")}
            samples.append(Sample(str(row.get("id") or i), self.root / row["image"], self.root / row["mask"],
                                  str(row["expression"]), row.get("category") or None, extra))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def load_training_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, str]:
        """(image H x W x 3 uint8, mask H x W bool, expression) for the trainer."""
        image, mask = read_image(sample.image), read_mask(sample.mask)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ", sample.mask)
        return image, mask, sample.expression

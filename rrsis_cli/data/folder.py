"""The ``folder`` dataset format, for users' own data and ``rrsis data synth`` output.

Layout::

    ROOT/<split>.csv | <split>.jsonl   one row per sample: image, mask, expression[, category][, id][, type]
    ROOT/images/...                    paths in the rows are relative to ROOT (or absolute)
    ROOT/masks/...                     single-band masks, non-zero = target (PNG, TIFF, JPEG)

Sample ids are the ``id`` column, or the 0-based row index. Validation on open: the split file exists and has
the required columns; ids are unique; every image and mask file exists (the first few missing ones are named).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rrsis_cli.data.common import ReferringDataset, Sample, raise_if_duplicate_ids, raise_if_missing
from rrsis_cli.errors import DatasetError

REQUIRED = ("image", "mask", "expression")


class FolderDataset(ReferringDataset):
    """Samples of one split of a ``folder`` dataset (see the module docstring)."""

    format = "folder"

    def __init__(self, root: str | Path, split: str):
        super().__init__(root, split)
        self.samples = self._read_rows()
        missing = [str(p) for s in self.samples for p in (s.image, s.mask) if not p.is_file()]
        raise_if_missing(missing, "listed files are", self.root)
        raise_if_duplicate_ids(self.samples, self.root)

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

"""RRSIS-D reader (Liu et al., RMSIN): the REFER layout of RefCOCO-style datasets.

Layout (the root is the folder holding ``rrsisd/`` and ``images/``, or the ``rrsisd`` folder itself)::

    ROOT/rrsisd/refs(unc).p            pickled list of refs: ref_id, ann_id, image_id, file_name, split,
                                       sentences [{sent, raw, tokens, sent_id}], category_id, ...
    ROOT/rrsisd/instances.json         COCO-style images / annotations (polygon or RLE) / categories
    ROOT/images/rrsisd/JPEGImages/     the 800 x 800 JPEG images

Each sentence of each ref of the split is one sample, id ``<ref_id>_<sent_id>``; its mask is the ref's
annotation. RRSIS-D's files say ``categories_id`` where COCO says ``category_id``; both are accepted.

The refs file is a pickle. It is loaded with a restricted unpickler that builds plain Python data only (lists,
dicts, strings, numbers, tuples, sets): a pickle that names any other global (a class, a function such as
``os.system``) is refused with a DatasetError instead of being executed.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli.data.common import (
    ReferringDataset,
    Sample,
    first_existing,
    image_size,
    raise_if_duplicate_ids,
    raise_if_missing,
)
from rrsis_cli.errors import DatasetError

SAFE_BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
                           "float", "complex", "bool", "slice", "range"})


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the builtin container and scalar types; any other global is an error."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_plain_pickle(path: Path) -> Any:
    """Plain Python data from a pickle file (see :class:`PlainDataUnpickler`); errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"unreadable: {exc.strerror}", path) from exc
    try:
        return PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"refused to load the pickle: {exc} (only plain Python data is accepted)", path) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pickles raise many types
        raise DatasetError(f"not a readable pickle ({type(exc).__name__}: {exc})", path) from exc


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool from a COCO segmentation: polygons [[x, y, ...], ...], or RLE (compressed or not)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects([p for p in segmentation if len(p) >= 6], height, width)
        if not rles:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise DatasetError(f"unknown segmentation encoding ({type(segmentation).__name__})")
    return mask_utils.decode(rle).astype(bool)


def _category(record: dict) -> Any:
    return record.get("category_id", record.get("categories_id"))


class RRSISDDataset(ReferringDataset):
    format = "rrsisd"

    def __init__(self, root: str | Path, split: str):
        super().__init__(root, split)
        meta = first_existing(self.root, ("rrsisd/refs(unc).p", "refs(unc).p"), "refs(unc).p").parent
        instances_path = meta / "instances.json"
        if not instances_path.is_file():
            raise DatasetError("instances.json not found next to refs(unc).p", meta)
        base = self.root if meta == self.root / "rrsisd" else self.root.parent
        image_dir = first_existing(base, ("images/rrsisd/JPEGImages", "rrsisd/JPEGImages", "JPEGImages"),
                                   "image folder")
        refs = load_plain_pickle(meta / "refs(unc).p")
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise DatasetError("expected a list of ref dicts", meta / "refs(unc).p")
        instances = self._read_instances(instances_path)
        images = {im["id"]: im for im in instances.get("images", [])}
        self.annotations = {a["id"]: a for a in instances.get("annotations", [])}
        names = {c["id"]: c.get("name", str(c["id"])) for c in instances.get("categories", [])}
        known_splits = sorted({str(r.get("split")) for r in refs})
        chosen = [r for r in refs if r.get("split") == split]
        if not chosen:
            raise DatasetError(f"split {split!r} has no refs (splits present: {', '.join(known_splits)})",
                               meta / "refs(unc).p")
        missing: list[str] = []
        for ref in chosen:
            ref_id = ref.get("ref_id")
            ann = self.annotations.get(ref.get("ann_id"))
            image = images.get(ref.get("image_id"))
            if ann is None or image is None:
                missing.append(f"ref {ref_id}: unknown {'ann_id' if ann is None else 'image_id'}")
                continue
            path = image_dir / str(image.get("file_name") or ref.get("file_name"))
            if not path.is_file():
                missing.append(f"ref {ref_id}: {path.name}")
                continue
            category = _category(ref) if _category(ref) is not None else _category(ann)
            for sentence in ref.get("sentences", []):
                text = " ".join(str(sentence.get("sent") or sentence.get("raw") or "").split())
                self.samples.append(Sample(f"{ref_id}_{sentence.get('sent_id')}", path, ann["id"],
                                           text, names.get(category, None if category is None else str(category)),
                                           extra={"ref_id": ref_id, "image_size": (image.get("height"),
                                                                                  image.get("width"))}))
        raise_if_missing(missing, "refs point to missing annotations, images or files:", meta)
        raise_if_duplicate_ids(self.samples, meta / "refs(unc).p")
        empty = [s.id for s in self.samples if not s.expression]
        if empty:
            raise DatasetError(f"{len(empty)} sentences are empty, e.g. {', '.join(empty[:3])}", meta / "refs(unc).p")

    @staticmethod
    def _read_instances(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"unreadable COCO instances file: {exc}", path) from exc
        if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
            raise DatasetError("expected a COCO instances object with 'images' and 'annotations'", path)
        return data

    def load_mask(self, sample: Sample) -> np.ndarray:
        ann = self.annotations[sample.mask]
        height, width = sample.extra["image_size"]
        if height is None or width is None:
            height, width = image_size(sample.image)
        try:
            return decode_segmentation(ann["segmentation"], int(height), int(width))
        except DatasetError as exc:
            raise DatasetError(f"annotation {ann['id']}: {exc.message}", sample.image) from exc

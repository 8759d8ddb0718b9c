"""RRSIS-D reader (Liu et al., RMSIN): the REFER layout of RefCOCO-style datasets.

Layout (the root is the folder holding ``rrsisd/`` and ``images/``, or the ``rrsisd`` folder itself)::

    ROOT/rrsisd/refs(unc).p            pickled list of refs: ref_id, ann_id, image_id, file_name, split,
                                       sentences [{sent, raw, tokens, sent_id}], category_id, ...
    ROOT/rrsisd/instances.json         COCO-style images / annotations (polygon or RLE) / categories
    ROOT/images/rrsisd/JPEGImages/     the 800 x 800 JPEG images

Each sentence of each ref of the split is one sample, id ``<ref_id>_<sent_id>``; its mask is the ref's
annotation. RRSIS-D's files say ``categories_id`` where COCO says ``category_id``; both are accepted. Their
``segmentation`` is a list holding one RLE dict with compressed-string counts; polygons, several RLEs and a bare
RLE dict are read too, as RMSIN's loader reads them (:func:`decode_segmentation`). An annotation that cannot be
decoded is an empty mask plus one warning naming the ref; ``info()`` counts those refs (``undecodable_refs``).

The refs file is a pickle. It is loaded with a restricted unpickler that builds plain Python data only (lists,
dicts, strings, numbers, tuples, sets): a pickle that names any other global (a class, a function such as
``os.system``) is refused with a DatasetError instead of being executed.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli import console
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


class UndecodableSegmentation(ValueError):
    """An annotation's ``segmentation`` is none of the forms :func:`decode_segmentation` reads; the message says
    why. The reader turns it into an empty mask and a warning naming the ref."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compressed_rle_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' text form: each run, or from the third run on
    its difference to the run two before, in little-endian groups of 5 bits written as chars 48 + value, 0x20 =
    another group follows, 0x10 in the last group = negative). Raises UndecodableSegmentation for a character
    outside that alphabet, a truncated number or a negative run."""
    data = counts.encode() if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    pos = 0
    while pos < len(data):
        value = shift = 0
        while True:
            if pos == len(data):
                raise UndecodableSegmentation("compressed RLE counts end in the middle of a number")
            group = data[pos] - 48
            if not 0 <= group < 64:
                raise UndecodableSegmentation(f"compressed RLE counts hold an invalid character {chr(data[pos])!r}")
            pos += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise UndecodableSegmentation(f"compressed RLE counts give a negative run length ({value})")
        runs.append(value)
    return runs


def _rle_part(rle: dict, height: int, width: int) -> dict:
    """One RLE dict, checked, in the form ``pycocotools.mask.decode`` takes (compressed, bytes counts). The runs
    must cover exactly height x width pixels: pycocotools does not check that and fills what short runs leave
    from uninitialised memory, so a corrupt string would otherwise give a random mask."""
    from pycocotools import mask as mask_utils

    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)):
        raise UndecodableSegmentation(f"RLE size must be [height, width], not {size!r}")
    if [int(v) for v in size] != [height, width]:
        raise UndecodableSegmentation(f"RLE size {int(size[1])}x{int(size[0])} (width x height) differs from "
                                      f"the image's {width}x{height}")
    if isinstance(counts, (str, bytes)):
        runs = compressed_rle_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
        if any(c < 0 for c in runs):
            raise UndecodableSegmentation("RLE counts hold a negative run length")
    else:
        raise UndecodableSegmentation(f"RLE counts must be a string or a list of integers, not "
                                      f"{type(counts).__name__}")
    if sum(runs) != height * width:
        raise UndecodableSegmentation(f"RLE runs cover {sum(runs)} pixels, not {height}x{width} = "
                                      f"{height * width}")
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}


def _polygon_parts(polygons: list, height: int, width: int) -> list[dict]:
    """RLEs of the polygons with at least 3 points. pycocotools rasterises a polygon of fewer points to no pixels
    (when it is not the first of the list; as the first it makes ``frPyObjects`` fail), so leaving them out gives
    the official masks without that failure."""
    from pycocotools import mask as mask_utils

    for polygon in polygons:
        if not all(_is_number(v) for v in polygon):
            raise UndecodableSegmentation("polygon coordinates must be finite numbers")
    kept = [[float(v) for v in polygon] for polygon in polygons if len(polygon) >= 6]
    return mask_utils.frPyObjects(kept, height, width) if kept else []


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool from a COCO/REFER ``segmentation``, as RMSIN's loader (``refer.py`` ``getMask`` and
    ``dataset_refer_bert.py``) makes the target:

    - a list whose first item is a list: polygons ``[[x, y, x, y, ...], ...]``; polygons of fewer than 3 points
      cover no pixel;
    - any other list: RLE dicts ``[{"size": [h, w], "counts": "<compressed>" or [runs]}, ...]`` (RRSIS-D's form);
    - a bare RLE dict (COCO ``iscrowd`` form).

    Each polygon or RLE is one part; the parts are summed per pixel (as uint8) and the target is where the sum is
    exactly 1 (``getMask`` sums the decoded parts, the dataset keeps ``mask == 1``), so with several overlapping
    parts the overlap is background. Anything else, RLE runs that do not cover exactly ``height x width`` pixels
    and an RLE of another size raise UndecodableSegmentation.
    """
    from pycocotools import mask as mask_utils

    if segmentation is None:
        raise UndecodableSegmentation("the annotation has no segmentation")
    if isinstance(segmentation, dict):
        if "counts" not in segmentation:
            raise UndecodableSegmentation("RLE dict has no counts")
        parts = [_rle_part(segmentation, height, width)]
    elif isinstance(segmentation, list):
        if not segmentation:
            raise UndecodableSegmentation("segmentation is an empty list")
        if isinstance(segmentation[0], list):
            if not all(isinstance(p, list) for p in segmentation):
                raise UndecodableSegmentation("segmentation mixes polygons with other items")
            parts = _polygon_parts(segmentation, height, width)
        elif all(isinstance(p, dict) for p in segmentation):
            parts = [_rle_part(p, height, width) for p in segmentation]
        else:
            raise UndecodableSegmentation("segmentation list holds neither polygons nor RLE dicts only")
    else:
        raise UndecodableSegmentation(f"unknown segmentation encoding ({type(segmentation).__name__})")
    if not parts:
        return np.zeros((height, width), bool)
    try:
        decoded = mask_utils.decode(parts)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exceptions, TypeErrors, ValueErrors
        raise UndecodableSegmentation(f"pycocotools cannot decode it ({type(exc).__name__}: {exc})") from exc
    return decoded.sum(axis=2, dtype=np.uint64).astype(np.uint8) == 1


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
        self.instances_path = instances_path
        self.undecodable: dict[Any, str] = {}  # ref_id -> why its annotation cannot be decoded
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
        """The ref's mask (see :func:`decode_segmentation`). An annotation that cannot be decoded gives an empty
        mask and, once per ref, a warning naming the ref; :attr:`undecodable` counts them."""
        ann = self.annotations[sample.mask]
        height, width = sample.extra["image_size"]
        if height is None or width is None:
            height, width = image_size(sample.image)
        height, width = int(height), int(width)
        try:
            return decode_segmentation(ann.get("segmentation"), height, width)
        except UndecodableSegmentation as exc:
            ref_id = sample.extra["ref_id"]
            if ref_id not in self.undecodable:
                self.undecodable[ref_id] = f"annotation {ann['id']}: {exc}"
                console.warn(f"{self.instances_path}: ref {ref_id} (annotation {ann['id']}): segmentation cannot "
                             f"be decoded ({exc}); using an empty mask [{len(self.undecodable)} such ref(s) in "
                             f"split {self.split!r} so far]", ref_id=ref_id, ann_id=ann["id"])
            return np.zeros((height, width), bool)

    def empty_mask_problem(self, sample: Sample) -> str:
        reason = self.undecodable.get(sample.extra["ref_id"])
        if reason is None:
            return super().empty_mask_problem(sample)
        return f"empty mask: ref {sample.extra['ref_id']} {reason}"

    def info(self, check: bool = True) -> dict[str, Any]:
        """The common report plus ``undecodable_refs``: how many refs of the split have an annotation that cannot
        be decoded (read as empty masks); None when masks were not checked."""
        report = super().info(check=check)
        report["undecodable_refs"] = len(self.undecodable) if check else None
        return report

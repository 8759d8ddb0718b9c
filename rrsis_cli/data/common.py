"""What every dataset reader shares: the sample record, image/mask reading, validation and ``info``.

A reader is a :class:`ReferringDataset` subclass that fills ``self.samples`` (one :class:`Sample` per
(image, expression) pair, with a fixed id) when opened. Opening checks what is cheap to check for every sample
(the split file, image/mask pairing, unknown ids); :meth:`ReferringDataset.check` reads every image header and
mask for sizes and empty masks (``rrsis data info``), and :meth:`ReferringDataset.load_sample` checks the sizes of
the sample it loads.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rrsis_cli.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Sample:
    """One (image, expression) pair. ``mask`` is a file path, or an object the reader knows how to decode."""

    id: str
    image: Path
    mask: Any
    expression: str
    category: str | None = None
    extra: dict = field(default_factory=dict)


def _open_tiff(path: Path):
    """rasterio dataset of a (Geo)TIFF; plain TIFFs of benchmark datasets are not georeferenced, which is fine."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 from PNG/JPEG/TIFF (GeoTIFFs via rasterio, first three bands)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with _open_tiff(path) as src:
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


def read_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """(H, W) bool: first band > ``threshold`` (0: any non-zero value is target)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with _open_tiff(path) as src:
            return src.read(1) > threshold
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("L")) > threshold


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header only."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with _open_tiff(path) as src:
            return src.height, src.width
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or ``folder/<name><suffix>`` for the usual image suffixes when ``name`` has none."""
    path = folder / name
    if path.is_file():
        return path
    if not Path(name).suffix:
        for suffix in IMAGE_SUFFIXES:
            if (candidate := folder / f"{name}{suffix}").is_file():
                return candidate
    return None


def first_existing(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    """The first of ``root/<candidate>`` that exists; a DatasetError naming every candidate otherwise."""
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise DatasetError(f"no {what} found (looked for {', '.join(candidates)})", root)


def read_phrase_file(path: Path) -> list[tuple[int, str, str]]:
    """Lines ``<key> <expression words ...>`` -> (0-based line index, key, expression). Blank lines keep their
    index (ids stay the line numbers) but give no sample; a line with a key and no expression is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"unreadable phrase file: {exc.strerror}", path) from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"phrase file is not UTF-8 text ({exc.reason} at byte {exc.start})", path) from exc
    rows = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        key, _, expression = line.strip().partition(" ")
        if not expression.strip():
            raise DatasetError(f"line {index + 1} has an id ({key!r}) but no expression", path)
        rows.append((index, key, " ".join(expression.split())))
    return rows


def raise_if_missing(missing: list[str], what: str, where: Path) -> None:
    if missing:
        raise DatasetError(f"{len(missing)} {what} missing, e.g. {', '.join(missing[:3])}", where)


def raise_if_duplicate_ids(samples: list[Sample], where: Path) -> None:
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise DatasetError(f"sample ids must be unique; {s.id!r} appears more than once", where)
        seen.add(s.id)


class ReferringDataset:
    """Base class of the readers: ``samples``, ``len()``, ``load_sample`` and ``load_training_sample``."""

    format = ""
    mask_threshold = 0  # a mask pixel is target when its value is greater than this

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(f"dataset root not found (format {self.format})", self.root)
        self.samples: list[Sample] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, sample: Sample) -> np.ndarray:
        return read_mask(sample.mask, self.mask_threshold)

    def load_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x 3 uint8, mask H x W bool); a size mismatch is a DatasetError naming the sample."""
        image, mask = read_image(sample.image), self.load_mask(sample)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"sample {sample.id}: image {image.shape[1]}x{image.shape[0]} and mask "
                               f"{mask.shape[1]}x{mask.shape[0]} sizes differ", sample.image)
        return image, mask

    def load_training_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, str]:
        """(image, mask, expression) for the trainer and ``evaluate``."""
        image, mask = self.load_sample(sample)
        return image, mask, sample.expression

    def fingerprint(self) -> str:
        """sha256 over the format, split, and every sample's id, expression and file names: identifies exactly
        which samples were scored without reading pixel data."""
        digest = hashlib.sha256(f"{self.format}\n{self.split}\n".encode())
        for s in self.samples:
            mask = s.mask.name if isinstance(s.mask, Path) else repr(s.mask)
            digest.update(f"{s.id}\t{s.expression}\t{s.image.name}\t{mask}\n".encode())
        return digest.hexdigest()

    def check(self) -> list[str]:
        """Read every image header and mask: size mismatches, unreadable files and empty masks."""
        problems: list[str] = []
        sizes: dict[Path, tuple[int, int]] = {}
        for s in self.samples:
            try:
                if s.image not in sizes:
                    sizes[s.image] = image_size(s.image)
                mask = self.load_mask(s)
            except DatasetError as exc:
                problems.append(f"{s.id}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - PIL/rasterio raise many types for broken files
                problems.append(f"{s.id}: unreadable image or mask ({exc})")
                continue
            if mask.shape != sizes[s.image]:
                problems.append(f"{s.id}: image {sizes[s.image][1]}x{sizes[s.image][0]} and mask "
                                f"{mask.shape[1]}x{mask.shape[0]} sizes differ")
            elif not mask.any():
                problems.append(f"{s.id}: {self.empty_mask_problem(s)}")
        return problems

    def empty_mask_problem(self, sample: Sample) -> str:
        """What :meth:`check` says about a sample whose mask is empty (readers may add the reason)."""
        return "empty mask"

    def info(self, check: bool = True) -> dict[str, Any]:
        """Counts, categories, expression-length statistics (words) and problems of this split."""
        words = [len(s.expression.split()) for s in self.samples]
        categories = Counter(s.category for s in self.samples if s.category)
        return {
            "format": self.format, "split": self.split, "root": str(self.root),
            "n_samples": len(self.samples), "n_images": len({s.image for s in self.samples}),
            "categories": dict(sorted(categories.items())),
            "expression_words": {
                "mean": round(statistics.fmean(words), 2) if words else 0.0,
                "median": statistics.median(words) if words else 0,
                "max": max(words, default=0), "min": min(words, default=0),
            },
            "problems": self.check() if check else None,
            "fingerprint": self.fingerprint(),
        }

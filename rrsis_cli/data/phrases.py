"""Readers for the phrase-file datasets: RefSegRS and RISBench.

Both list one sample per line of ``output_phrase_<split>.txt`` as ``<key> <expression words ...>``: the first
space-separated field names the image and its mask (same name in both folders), the rest is the expression.
Sample ids are ``<split>_<line index>`` (0-based line of the phrase file), so one image may carry several
expressions and ids never depend on file names.

RefSegRS (Yuan et al., LGCE)::

    ROOT/images/<key>.tif    ROOT/masks/<key>.tif    ROOT/output_phrase_{train,val,test}.txt

The key is the file stem (``.tif`` is added; a key with a suffix is used as is). Masks are 8-bit with soft
edges and are binarised at > 50, as the official loader does. (Copies named ``images2``/``masks2`` are accepted.)

RISBench (Dong et al., CroBIM)::

    ROOT/img_rgb/<key>    ROOT/mask/<key>    ROOT/output_phrase_{train,val,test}.txt

The key is the file name with its suffix (``.png``); a key without suffix is looked up with the usual image
suffixes. Masks are black background / white target and are binarised at > 127. This layout comes from
third-party loaders (the official README does not describe it; ``shared/reference/papers.md`` §3), so the reader
states what it assumed when something does not match.
"""

from __future__ import annotations

from pathlib import Path

from rrsis_cli.data.common import (
    ReferringDataset,
    Sample,
    find_file,
    first_existing,
    raise_if_missing,
    read_phrase_file,
)
from rrsis_cli.errors import DatasetError


class PhraseFileDataset(ReferringDataset):
    image_dirs: tuple[str, ...] = ()
    mask_dirs: tuple[str, ...] = ()
    key_suffix = ""  # added to a key that has no suffix before falling back to the usual image suffixes

    def __init__(self, root: str | Path, split: str):
        super().__init__(root, split)
        phrases = self.root / f"output_phrase_{split}.txt"
        if not phrases.is_file():
            present = sorted(p.name for p in self.root.glob("output_phrase_*.txt"))
            raise DatasetError(f"no phrase file for split {split!r} (expected {phrases.name}; found "
                               f"{', '.join(present) or 'none'})", self.root)
        images = first_existing(self.root, self.image_dirs, "image folder")
        masks = first_existing(self.root, self.mask_dirs, "mask folder")
        missing: list[str] = []
        for index, key, expression in read_phrase_file(phrases):
            name = key if Path(key).suffix or not self.key_suffix else f"{key}{self.key_suffix}"
            image, mask = find_file(images, name), find_file(masks, name)
            if image is None or mask is None:
                missing.append(f"line {index + 1}: {key} ({'image' if image is None else 'mask'})")
                continue
            self.samples.append(Sample(f"{split}_{index}", image, mask, expression, extra={"key": key}))
        raise_if_missing(missing, f"images or masks named in {phrases.name} are", self.root)
        if not self.samples:
            raise DatasetError(f"split {split!r} has no samples", phrases)


class RefSegRSDataset(PhraseFileDataset):
    format = "refsegrs"
    image_dirs = ("images", "images2")
    mask_dirs = ("masks", "masks2")
    key_suffix = ".tif"
    mask_threshold = 50


class RISBenchDataset(PhraseFileDataset):
    format = "risbench"
    image_dirs = ("img_rgb",)
    mask_dirs = ("mask",)
    mask_threshold = 127

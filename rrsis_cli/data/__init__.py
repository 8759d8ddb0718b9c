"""Dataset readers. ``open_dataset(format, root, split)`` returns a :class:`~rrsis_cli.data.common.ReferringDataset`:
``samples`` (each with a fixed ``id``), ``len()``, ``load_sample(sample) -> (image HxWx3 uint8, mask HxW bool)``,
``load_training_sample(sample) -> (image, mask, expression)``, ``info()`` and ``fingerprint()``.

Formats: ``folder`` (users' own data, ``rrsis data synth``), ``refsegrs``, ``rrsisd``, ``risbench``.
"""

from __future__ import annotations

from pathlib import Path

from rrsis_cli.errors import UsageError

READERS = {
    "folder": ("rrsis_cli.data.folder", "FolderDataset"),
    "refsegrs": ("rrsis_cli.data.phrases", "RefSegRSDataset"),
    "risbench": ("rrsis_cli.data.phrases", "RISBenchDataset"),
    "rrsisd": ("rrsis_cli.data.rrsisd", "RRSISDDataset"),
}
FORMATS = tuple(READERS)


def open_dataset(format: str, root: str | Path, split: str):
    """Open one split of a dataset; validation errors are DatasetErrors naming the file."""
    if format not in READERS:
        raise UsageError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    import importlib

    module, name = READERS[format]
    return getattr(importlib.import_module(module), name)(root, split)

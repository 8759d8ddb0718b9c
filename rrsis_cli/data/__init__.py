"""Dataset readers. ``open_dataset(format, root, split)`` returns an object with ``samples``, ``len()`` and
``load_training_sample(sample) -> (image HxWx3 uint8, mask HxW bool, expression)``."""

from __future__ import annotations

from pathlib import Path

from rrsis_cli.errors import UsageError

FORMATS = ("folder",)


def open_dataset(format: str, root: str | Path, split: str):
    if format == "folder":
        from rrsis_cli.data.folder import FolderDataset

        return FolderDataset(root, split)
    raise UsageError(f"unknown or unavailable dataset format {format!r}; available: {', '.join(FORMATS)}")

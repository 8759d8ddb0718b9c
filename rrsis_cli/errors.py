"""Project exceptions. Each carries the path it is about; the CLI maps classes to exit codes.

Exit codes (DESIGN §4): 0 all done, 1 fatal / nothing done, 2 usage error, 3 partial, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM: timeout, SLURM, systemd, Kubernetes), 129 hang-up (SIGHUP).
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
EXIT_HANGUP = 129
EXIT_TERMINATED = 143


def as_path(path: str | os.PathLike) -> os.PathLike:
    """A local path as a :class:`~pathlib.Path`; a URL or GDAL ``/vsi`` name (a
    :class:`~rrsis_cli.remote.RemotePath`, or text with ``://`` or ``/vsi``) is kept as it is: ``Path()`` would
    collapse its ``//``, and its ``str()`` hides credentials."""
    if isinstance(path, Path) or not isinstance(path, str):
        return path
    return path if path.startswith("/vsi") or "://" in path else Path(path)


class RrsisError(Exception):
    """Base class: an error a user can cause, reported as one line naming the file."""

    exit_code = EXIT_FATAL

    def __init__(self, message: str, path: str | Path | os.PathLike | None = None):
        self.path = None if path is None else as_path(path)
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(str(self.message).split())
        return f"{self.path}: {text}" if self.path is not None else text


class UsageError(RrsisError):
    """Bad arguments or options (exit code 2)."""

    exit_code = EXIT_USAGE


class InputError(RrsisError):
    """An input raster, vector or list file is missing, unreadable or unsupported."""


class OutsideAoi(InputError):
    """The scene does not meet the ``--aoi``: it is skipped (status ``skipped-aoi``), not failed."""


class ModelError(RrsisError):
    """A model directory, zoo card or checkpoint is missing, malformed or does not match."""


class DatasetError(RrsisError):
    """A dataset root is missing files, has an unexpected layout or an empty split."""


class OutputError(RrsisError):
    """An output location cannot be created or written."""


class ConversionError(ModelError):
    """An official checkpoint does not match the architecture (keys missing / unexpected / shapes)."""


class Stopped(BaseException):
    """Raised in the main thread by a SIGTERM or SIGHUP handler (:mod:`rrsis_cli.signals`). A ``BaseException``
    like ``KeyboardInterrupt``, so per-scene ``except Exception`` handlers let it through and the run stops."""

    def __init__(self, signum: int, name: str):
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {name}")

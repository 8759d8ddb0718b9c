"""Console output shared by every command: rich text for people, JSON lines for cron (``--log-format json``).

The root CLI callback calls :func:`configure` once per invocation (and each command again for the global options
given after its name); library code calls :func:`info` / :func:`warn` and asks
:func:`progress_enabled` before drawing progress bars.

The console entry point runs inside :func:`routed_warnings` so that what libraries say on their own (Python warnings
from rasterio, pyogrio, numpy ...; records of the ``logging`` module) reaches stderr through the same path: one
line each, a JSON object with ``--log-format json``, never a raw warning with its source line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console


@dataclass
class Settings:
    quiet: bool = False
    debug: bool = False
    silenced: bool = False
    log_format: str = "text"
    verbose: bool = False


SETTINGS = Settings()
stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def table_console() -> Console:
    """Where to print a table: the terminal's console, or for a pipe or file a 200-column one, so that rows are
    not folded at 80 columns (``rrsis models list | grep …`` keeps one line per row)."""
    return stdout if stdout.is_terminal else Console(highlight=False, width=200)


def configure(quiet: bool | None = False, debug: bool | None = False, log_format: str | None = "text",
              verbose: bool | None = False) -> None:
    """Set the output settings; ``None`` keeps a setting as it is."""
    if verbose is not None:
        SETTINGS.verbose = verbose
    if quiet is not None:
        SETTINGS.quiet = quiet
    if debug is not None:
        SETTINGS.debug = debug
    if log_format is not None:
        SETTINGS.log_format = log_format


# One JSON line is one write under this lock: ``print`` writes the text and the newline separately, so the
# background writer thread's records and the main thread's could share a line (seen in a test under load).
_JSON_LOCK = threading.Lock()


def _emit(level: str, message: str, **fields) -> None:
    if SETTINGS.log_format == "json":
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": level, "message": message, **fields}
        line = json.dumps(record, default=str) + "\n"
        with _JSON_LOCK:
            sys.stderr.write(line)
            sys.stderr.flush()
        return
    style = {"warning": "yellow", "error": "bold red", "debug": "dim"}.get(level, "")
    prefix = {"warning": "warning: ", "error": "error: ", "debug": "debug: "}.get(level, "")
    stderr.print(f"{prefix}{message}", style=style, markup=False)


@contextmanager
def silenced():
    """Info and warning messages are dropped within the block (errors still print): for work that repeats
    something already reported, such as opening a second handle on a scene."""
    previous = SETTINGS.silenced
    SETTINGS.silenced = True
    try:
        yield
    finally:
        SETTINGS.silenced = previous


def debug(message: str, **fields) -> None:
    """Details for ``-v/--verbose`` (resolved model, tile size, per-stage decisions); silent otherwise."""
    if SETTINGS.verbose and not SETTINGS.quiet:
        _emit("debug", message, **fields)


def info(message: str, **fields) -> None:
    if not SETTINGS.quiet and not SETTINGS.silenced:
        _emit("info", message, **fields)


def warn(message: str, **fields) -> None:
    if not SETTINGS.silenced:
        _emit("warning", message, **fields)


def error(message: str, **fields) -> None:
    _emit("error", message, **fields)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Replacement for :func:`warnings.showwarning`: one console line (no source line), category and origin as
    fields."""
    text = " ".join(str(message).split())
    origin = f"{Path(filename).name}:{lineno}"
    if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
        # Notes from libraries to their developers (e.g. affine's "use @"), not about the user's data: a cron
        # job's log must not change with the library versions installed. Shown with -v only.
        debug(f"{category.__name__}: {text}", category=category.__name__, origin=origin)
        return
    warn(f"{category.__name__}: {text}", category=category.__name__, origin=origin)


class _ConsoleHandler(logging.Handler):
    """Library log records (warnings and errors) as console lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001 - a malformed record must not break the run
            text = str(record.msg)
        emit = error if record.levelno >= logging.ERROR else warn
        emit(text, logger=record.name)


@contextmanager
def routed_warnings() -> Iterator[None]:
    """While active, Python warnings and library log records (WARNING and above) go through the console, so
    stderr stays one line per message (JSON objects in json mode). The CLI entry point runs inside it; what was
    there before is restored on exit (the CLI is also called in-process, by tests and other programs)."""
    previous = warnings.showwarning
    handler = _ConsoleHandler(logging.WARNING)
    root = logging.getLogger()
    warnings.showwarning = _show_warning
    root.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = previous
        root.removeHandler(handler)


def progress_enabled() -> bool:
    """Progress bars only for people: not with --quiet, JSON logs, or when stderr is not a terminal."""
    return not SETTINGS.quiet and SETTINGS.log_format == "text" and sys.stderr.isatty()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Heartbeat(_NoBar):
    """Progress for logs (no terminal, or JSON logs): one info record every ``every`` seconds with the count,
    rate and estimated time left, so a long scene in a cron job shows it is alive."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, every: float):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = self.start_done = initial
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else None
            eta = f", about {left:.0f} s left" if left is not None else ""
            info(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f} %), "
                 f"{rate:.2f} {self.unit}/s{eta}",
                 progress={"label": self.desc, "unit": self.unit, "done": self.done, "total": self.total,
                           "per_second": round(rate, 3), "seconds_left": None if left is None else round(left, 1)})


def heartbeat_seconds() -> float:
    """Seconds between heartbeat records: ``RRSIS_HEARTBEAT_SECONDS`` (default 60; 0 turns them off)."""
    try:
        return float(os.environ.get("RRSIS_HEARTBEAT_SECONDS", "60"))
    except ValueError:
        return 60.0


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar on stderr when :func:`progress_enabled`; for logs (no terminal, or JSON logs, not quiet) a
    heartbeat record every :func:`heartbeat_seconds`; else an object with the same methods that does nothing.
    Use as a context manager."""
    if not progress_enabled():
        every = heartbeat_seconds()
        if SETTINGS.quiet or every <= 0:
            return _NoBar()
        return _Heartbeat(total, desc, unit, initial, every)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

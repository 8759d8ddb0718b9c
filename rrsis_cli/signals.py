"""SIGTERM and SIGHUP handled like Ctrl-C: schedulers (``timeout``, SLURM preemption and walltime, systemd,
Kubernetes) stop jobs with SIGTERM, a closed terminal sends SIGHUP.

:func:`stop_on_signals` turns either signal into :class:`~rrsis_cli.errors.Stopped` raised in the main thread,
the way Python turns SIGINT into ``KeyboardInterrupt``: the batch in flight is dropped (its tiles are not in the
journal, so the next run recomputes it), the run writes its manifest with the unfinished pairs marked
``interrupted``, releases its lock and exits 128 + the signal number (143 for TERM, 129 for HUP). A second
signal while that clean-up runs is ignored, so the manifest is always written; SIGKILL (SLURM's KillWait) still
stops the process at once, and the journal makes the next run resume.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from rrsis_cli.errors import Stopped

HANDLED = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = HANDLED):
    """Within the block, SIGTERM/SIGHUP raise :class:`Stopped` in the main thread; previous handlers come back
    afterwards. Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame):
        if fired:
            return  # clean-up after the first signal is in progress
        fired.append(signum)
        raise Stopped(signum, signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""A window worker of :func:`rrsis_cli.vectors.vectorise` (``python -m rrsis_cli.vector_worker REQUEST``): the
request is JSON (the job, its share of the windows, the spool path); it spools the final polygons of its
windows and prints a JSON summary on stdout."""

from __future__ import annotations

import json
import sys

from rrsis_cli.vectors import run_window_worker

if __name__ == "__main__":
    print(json.dumps(run_window_worker(json.loads(sys.argv[1]))))

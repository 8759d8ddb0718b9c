"""Local vs URL on real rasters: run ``predict`` (null model, one process) on every ``.tif``/``.tiff``/``.vrt`` of a
folder read from the disk, and again read over HTTP from a loopback Range server (tests/loopback.py) serving the
same folder, and compare status and ``mask.tif`` bytes. A remote scene is keyed by content like its local copy,
so the two masks should be the same file; a difference names what a remote read does not see.

Usage: python benchmarks/remote_corpus.py FOLDER [--out DIR]

Run it on rasterio's test data (``tests/data`` of github.com/rasterio/rasterio) to reproduce the table in
benchmarks/RESULTS.md. The fingerprint cache is a temporary folder (``RRSIS_CACHE_DIR``), not yours.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def outcome(manifest, out: Path) -> tuple[str, str | None, str]:
    """(status, 12 hex of the mask's bytes or None, error line) of a one-scene, one-prompt run."""
    result = manifest.results[0]
    mask = out / result.output_dir / "mask.tif" if result.output_dir else None
    digest = hashlib.sha256(mask.read_bytes()).hexdigest()[:12] if mask is not None and mask.exists() else None
    return result.status, digest, (result.error or "")[:100]


def run_one(name: str, out: Path) -> tuple[str, str | None, str]:
    from rrsis_cli.predict import PredictOptions, predict

    try:
        return outcome(predict([name], "null", ["x"], out, PredictOptions(vectors=False, read_workers=1)), out)
    except Exception as exc:  # noqa: BLE001 - a crash is a result of this check
        return "crash", None, f"{type(exc).__name__}: {exc}"[:100]


def main() -> None:
    from loopback import RangeServer

    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    files = sorted(p for p in a.folder.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".vrt"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RRSIS_CACHE_DIR"] = str(Path(tmp) / "cache")
        out = a.out or Path(tmp) / "out"
        server = RangeServer(a.folder).start()
        try:
            same = 0
            print("| file | local | url | mask bytes |\n|---|---|---|---|")
            for path in files:
                local = run_one(str(path), out / "local" / path.name)
                remote = run_one(f"{server.url}/{path.name}", out / "url" / path.name)
                identical = local[:2] == remote[:2]
                same += identical
                print(f"| {path.name} | {local[0]} | {remote[0]} | {'same' if identical else '**differ**'} |",
                      flush=True)
            print(f"\n{same} of {len(files)} files: same status and mask bytes read locally and over HTTP")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

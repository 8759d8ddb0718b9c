"""Run manifests of ``rrsis predict``: the exit-code rule over pair statuses, the manifest file of a run or of a
shard, and the merge of a job array's shard manifests into ``OUT/manifest.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rrsis_cli.errors import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, UsageError


def exit_code_for(statuses: list[str]) -> int:
    """0 when nothing failed (done, skipped, re-thresholded or dry-run), 1 when everything failed, 3 when some
    failed or a pair is ``partial`` (its mask written, a derived product such as the vectors failed)."""
    failed = sum(status == "failed" for status in statuses)
    if failed and failed == len(statuses):
        return EXIT_FATAL
    return EXIT_PARTIAL if failed or "partial" in statuses else EXIT_OK


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.json" if shard is None else f"manifest-shard-{shard[0]}-of-{shard[1]}.json"


def merge_manifests(out: str | Path) -> dict[str, Any]:
    """Combine ``OUT/manifest-shard-*-of-N.json`` into ``OUT/manifest.json``; every shard must be present."""
    out = Path(out)
    paths = sorted(out.glob("manifest-shard-*-of-*.json"))
    if not paths:
        raise UsageError(f"no shard manifests (manifest-shard-I-of-N.json) in {out}")
    parts = [json.loads(p.read_text()) for p in paths]
    counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in paths}
    if len(counts) != 1:
        raise UsageError(f"shard manifests of different shard counts in {out}: {sorted(counts)}")
    count = counts.pop()
    present = {int(p.stem.split("-")[2]) for p in paths}
    missing = sorted(set(range(count)) - present)
    if missing:
        raise UsageError(f"shard(s) {', '.join(map(str, missing))} of {count} have no manifest in {out}")
    first = parts[0]
    merged = {**first, "shard": None, "shards_merged": count,
              "inputs": [i for m in parts for i in m["inputs"]],
              "results": [r for m in parts for r in m["results"]],
              "encoder_calls": sum(m["encoder_calls"] for m in parts),
              "seconds": max(m["seconds"] for m in parts)}
    done = [r for r in merged["results"] if r["status"] == "done"]
    merged["tiles_per_second"] = sum(r["tiles"] for r in done) / merged["seconds"] if merged["seconds"] else 0.0
    merged["exit_code"] = exit_code_for([r["status"] for r in merged["results"]])
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    os.replace(tmp, out / "manifest.json")
    return merged

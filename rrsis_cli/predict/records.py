"""What a run records: one :class:`SceneResult` per (scene, prompt), the :class:`RunManifest` and its atomic
write, the job of a pair that needs tiles (:class:`PairJob`), and the log lines of a pair."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrsis_cli import console
from rrsis_cli.inputs import WORK_DIR, Scene, relative_output_dir
from rrsis_cli.manifest import exit_code_for

if TYPE_CHECKING:
    from rrsis_cli.preflight import SceneHeader


@dataclass
class SceneResult:
    scene: str
    prompt: str
    status: str = "pending"
    output_dir: str | None = None  # relative to OUT: <scene key>/<prompt key>
    reads_per_tile: float | None = None  # tile reads of the run ÷ tiles of the grid (1.0: one read for all prompts)
    work_bytes_per_pixel: float | None = None  # work journal on disk ÷ scene pixels, at its largest
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path
    features: int | None = None  # polygons written; None when no vectors were written (--no-vectors, skipped)
    tiles: int = 0
    tiles_skipped_nodata: int = 0
    tiles_resumed: int = 0
    grounding: dict[str, Any] | None = None
    windows: dict[str, Any] | None = None  # a scene split into window tasks: tasks, bands written and resumed
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunManifest:
    rrsis_version: str
    model: str
    model_sha256: str | None
    prompts: list[str]
    options: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    results: list[SceneResult] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # inputs reached twice, processed once
    encoder_calls: int = 0
    seconds: float = 0.0
    tiles_per_second: float = 0.0
    km2_per_hour: float | None = None
    shard: str | None = None
    gpu_max_memory_mb: float | None = None
    exit_code: int = 0


@dataclass
class PairJob:
    """One (scene, prompt) that needs tiles: where it writes and works, and its result."""

    prompt: str
    result: SceneResult
    target: Path
    work: Path


@dataclass
class RunClock:
    """When processing started (perf_counter, after the model loaded) and the km² finished so far."""

    started: float = field(default_factory=time.perf_counter)
    km2: float = 0.0


def finish_manifest(manifest: RunManifest, out: Path, started: float, area_km2: float,
                    name: str = "manifest.json", exit_code: int | None = None) -> RunManifest:
    """Throughput from ``started`` (a perf_counter time), exit code (0 all done or skipped, 3 some failed,
    1 all failed; or ``exit_code`` for an interrupted run) and the atomic JSON write."""
    manifest.seconds = time.perf_counter() - started
    tiles = sum(r.tiles for r in manifest.results if r.status == "done")
    manifest.tiles_per_second = tiles / manifest.seconds if manifest.seconds else 0.0
    manifest.km2_per_hour = area_km2 / manifest.seconds * 3600 if area_km2 and manifest.seconds else None
    torch = sys.modules.get("torch")  # no model ran without it (everything skipped): nothing to ask CUDA
    if torch is not None and torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        manifest.gpu_max_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    manifest.exit_code = exit_code_for([r.status for r in manifest.results]) if exit_code is None else exit_code
    write_manifest(manifest, out / name)
    work = out / WORK_DIR
    if work.is_dir() and not any(work.rglob("job.json")):
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def write_manifest(manifest: RunManifest, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, default=str) + "\n")
    os.replace(tmp, path)


def pair_fields(result: SceneResult) -> dict[str, Any]:
    """Structured fields of one (scene, prompt) for JSON log records."""
    return {"scene": result.scene, "prompt": result.prompt, "status": result.status, "tiles": result.tiles,
            "tiles_resumed": result.tiles_resumed, "seconds": round(sum(result.seconds.values()), 3),
            "output_dir": result.output_dir, **({"error": result.error} if result.error else {})}


def log_pair(result: SceneResult, scene: Scene) -> None:
    console.info(f"{scene.path.name} / {result.prompt!r}: {result.status} ({result.tiles} tiles run, "
                 f"{result.tiles_resumed} resumed, {result.tiles_skipped_nodata} nodata tiles skipped)",
                 **pair_fields(result))


def log_skipped(result: SceneResult, scene: Scene) -> None:
    console.info(f"{scene.path.name} / {result.prompt!r}: skipped-existing (finished with the same scene, prompt "
                 "and configuration)", **pair_fields(result))


def record_skipped(manifest: RunManifest, header: SceneHeader, prompts: list[str]) -> None:
    """A scene whose every prompt is finished: its header as the input record, ``skipped-existing`` results."""
    manifest.inputs.append(header.record())
    for prompt in prompts:
        result = SceneResult(str(header.scene.path), prompt, "skipped-existing",
                             relative_output_dir(header.scene, prompt))
        manifest.results.append(result)
        log_skipped(result, header.scene)


def order_by_scene(manifest: RunManifest, scenes: list[Scene]) -> None:
    """Inputs and results in input order (stable: prompt order kept within a scene)."""
    order = {str(s.path): i for i, s in enumerate(scenes)}
    manifest.inputs.sort(key=lambda i: order.get(i["path"], len(order)))
    manifest.results.sort(key=lambda r: order.get(r.scene, len(order)))


def mark_interrupted(manifest: RunManifest, scenes: list[Scene], prompts: list[str]) -> None:
    """Every pair without a final status (in flight, or not started) becomes ``interrupted`` in the manifest."""
    for result in manifest.results:
        if result.status == "pending":
            result.status = "interrupted"
    seen = {(r.scene, r.prompt) for r in manifest.results}
    recorded = {i.get("path") for i in manifest.inputs}
    for scene in scenes:
        if str(scene.path) not in recorded:
            manifest.inputs.append(scene.as_dict())
        manifest.results += [SceneResult(str(scene.path), p, "interrupted", relative_output_dir(scene, p))
                             for p in prompts if (str(scene.path), p) not in seen]

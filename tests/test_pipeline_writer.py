"""Writing one scene's outputs overlaps the tiles of the next (a background writer): it really overlaps, a write
error still fails the right pair, a stop (SIGTERM) lets the pair being written finish, drops the queued ones and
still writes the manifest, and the results stay in input order and equal to an uninterrupted run."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
from front_helpers import write_scene

import rrsis_cli.predict.runner
import rrsis_cli.predict.tiles
import rrsis_cli.predict.write
from rrsis_cli.errors import Stopped
from rrsis_cli.pipeline import BackgroundWriter
from rrsis_cli.predict import PredictOptions, predict

OPTIONS = dict(tile_size=32, overlap=0.25, batch_size=4, device="cpu", vectors=False, read_workers=1)
PROMPTS = ["a", "b"]


@pytest.fixture()
def scenes(tmp_path):
    (tmp_path / "in").mkdir()
    return [write_scene(tmp_path / "in" / f"s{i}.tif", size=96) for i in range(2)]


def masks(out: Path, manifest) -> dict[tuple[str, str], bytes]:
    return {(Path(r.scene).name, r.prompt): (out / r.output_dir / "mask.tif").read_bytes()
            for r in manifest.results}


def hold_first_write_until_second_scene(monkeypatch, then=None) -> dict:
    """The first write of scene s0 waits (10 s at most) until the tiles of s1 start; ``then`` runs when they do."""
    seen = {"overlapped": None}
    second_started = threading.Event()
    real_write, real_run = rrsis_cli.predict.runner.write_pair, rrsis_cli.predict.tiles.run_pairs

    def write_pair(reader, model, scene, job, *args, **kwargs):
        if scene.path.name == "s0.tif" and seen["overlapped"] is None:
            seen["overlapped"] = second_started.wait(10)
        return real_write(reader, model, scene, job, *args, **kwargs)

    def run_pairs(reader, *args, **kwargs):
        if reader.path.name == "s1.tif":
            second_started.set()
            if then is not None:
                then()
        return real_run(reader, *args, **kwargs)

    monkeypatch.setattr(rrsis_cli.predict.runner, "write_pair", write_pair)  # looked up by compute_pairs
    monkeypatch.setattr(rrsis_cli.predict.tiles, "run_pairs", run_pairs)  # looked up by run_tiles
    return seen


def test_the_next_scene_runs_while_the_previous_one_is_written(scenes, tmp_path, monkeypatch):
    straight = predict(scenes, "null", PROMPTS, tmp_path / "straight", PredictOptions(**OPTIONS))
    seen = hold_first_write_until_second_scene(monkeypatch)
    manifest = predict(scenes, "null", PROMPTS, tmp_path / "out", PredictOptions(**OPTIONS))
    assert seen["overlapped"] is True  # s0 was being written when s1's tiles started
    assert [(Path(r.scene).name, r.prompt, r.status) for r in manifest.results] == [
        ("s0.tif", "a", "done"), ("s0.tif", "b", "done"), ("s1.tif", "a", "done"), ("s1.tif", "b", "done")]
    assert masks(tmp_path / "out", manifest) == masks(tmp_path / "straight", straight)
    assert manifest.km2_per_hour is not None  # the area of the pairs written in the background is counted


def test_a_write_error_fails_its_own_pair_only(scenes, tmp_path, monkeypatch):
    real = rrsis_cli.predict.write.to_cog

    def to_cog(src, dst, tags, threads=1):
        if tags.get("prompt") == "b" and tags["rrsis_scene"].endswith("s0.tif"):
            raise OSError("disk full (test)")
        return real(src, dst, tags, threads)

    monkeypatch.setattr(rrsis_cli.predict.write, "to_cog", to_cog)
    manifest = predict(scenes, "null", PROMPTS, tmp_path / "out", PredictOptions(**OPTIONS))
    statuses = [(Path(r.scene).name, r.prompt, r.status) for r in manifest.results]
    assert statuses == [("s0.tif", "a", "done"), ("s0.tif", "b", "failed"), ("s1.tif", "a", "done"),
                        ("s1.tif", "b", "done")]
    assert "disk full (test)" in manifest.results[1].error
    assert manifest.exit_code == 3


def test_a_stop_finishes_the_pair_being_written_and_writes_the_manifest(scenes, tmp_path, monkeypatch):
    straight = predict(scenes, "null", PROMPTS, tmp_path / "straight", PredictOptions(**OPTIONS))

    def sigterm():
        raise Stopped(signal.SIGTERM, "SIGTERM")

    seen = hold_first_write_until_second_scene(monkeypatch, then=sigterm)
    out = tmp_path / "out"
    with pytest.raises(Stopped):
        predict(scenes, "null", PROMPTS, out, PredictOptions(**OPTIONS))
    assert seen["overlapped"] is True
    written = json.loads((out / "manifest.json").read_text())
    assert written["exit_code"] == 143
    assert [(Path(r["scene"]).name, r["prompt"], r["status"]) for r in written["results"]] == [
        ("s0.tif", "a", "done"), ("s0.tif", "b", "interrupted"), ("s1.tif", "a", "interrupted"),
        ("s1.tif", "b", "interrupted")]
    monkeypatch.undo()
    resumed = predict(scenes, "null", PROMPTS, out, PredictOptions(**OPTIONS))
    by_pair = {(Path(r.scene).name, r.prompt): r for r in resumed.results}
    assert by_pair["s0.tif", "a"].status == "skipped-existing"
    assert by_pair["s0.tif", "b"].tiles == 0 and by_pair["s0.tif", "b"].status == "done"  # from its journal
    assert masks(out, resumed) == masks(tmp_path / "straight", straight)


def test_background_writer_runs_in_order_bounds_its_queue_and_hands_errors_back():
    order, gate = [], threading.Event()
    writer = BackgroundWriter(depth=1)
    writer.submit(lambda: (gate.wait(5), order.append(1)))
    writer.submit(lambda: order.append(2))  # queued behind the first
    blocked = threading.Thread(target=writer.submit, args=(lambda: order.append(3),))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # the queue is full: submit waits
    gate.set()
    blocked.join(5)
    writer.close()
    assert order == [1, 2, 3]

    failing = BackgroundWriter(depth=2)
    failing.submit(lambda: 1 / 0)
    failing.submit(lambda: order.append("dropped"))
    failing.submit(lambda: order.append("clean-up"), cleanup=True)
    with pytest.raises(ZeroDivisionError):
        failing.close()
    assert order[-1] == "clean-up" and "dropped" not in order

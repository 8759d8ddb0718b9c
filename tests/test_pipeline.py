"""The tile pipeline: one read per tile for every prompt, parallel reads, a journal of 1 byte per pixel, and
resume of pairs at different points of the same scene — all with results equal to running each pair alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

import rrsis_cli.inference
from rrsis_cli.blend import RowBlender, band_rows, carry_rows
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.tiling import TileGrid, blend_weights

DATA = Path(__file__).parents[1] / "examples" / "data"
SCENE = DATA / "RGB.byte.tif"
PROMPTS = ["the river", "the roads", "water", "fields"]
OPTIONS = dict(tile_size=64, overlap=0.25, batch_size=8, device="cpu")


def _masks(out: Path, manifest) -> dict[str, bytes]:
    return {r.prompt: (out / r.output_dir / "mask.tif").read_bytes() for r in manifest.results}


def test_four_prompts_read_each_tile_once_and_match_single_prompt_runs(tmp_path):
    together = predict([SCENE], "null", PROMPTS, tmp_path / "all", PredictOptions(**OPTIONS, read_workers=3))
    assert [r.status for r in together.results] == ["done"] * 4
    assert all(r.reads_per_tile == 1.0 for r in together.results)
    assert all(r.work_bytes_per_pixel <= 1.01 for r in together.results)  # 1 byte per scene pixel
    masks = _masks(tmp_path / "all", together)
    for prompt in PROMPTS:
        alone = predict([SCENE], "null", [prompt], tmp_path / prompt, PredictOptions(**OPTIONS, read_workers=1))
        assert _masks(tmp_path / prompt, alone)[prompt] == masks[prompt]
    assert len(set(masks.values())) == 4  # the prompts give different masks


def test_pairs_resume_from_different_points(tmp_path, monkeypatch):
    """A run of one prompt is interrupted mid-scene; the rerun adds three prompts: the first resumes from its
    journal, the others start, and every mask equals an uninterrupted run."""
    straight = predict([SCENE], "null", PROMPTS, tmp_path / "straight", PredictOptions(**OPTIONS))
    expected = _masks(tmp_path / "straight", straight)

    real = rrsis_cli.inference.forward_probability
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > 12:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rrsis_cli.inference, "forward_probability", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        predict([SCENE], "null", PROMPTS[:1], out, PredictOptions(**OPTIONS))
    monkeypatch.setattr(rrsis_cli.inference, "forward_probability", real)
    journal = next((out / ".rrsis-work").rglob("journal.txt"))
    assert 0 < len(journal.read_text().splitlines()) < 15
    resumed = predict([SCENE], "null", PROMPTS, out, PredictOptions(**OPTIONS))
    first = resumed.results[0]
    assert first.tiles_resumed > 0 and first.tiles < straight.results[0].tiles
    assert _masks(out, resumed) == expected


@pytest.mark.parametrize("tile,overlap", [(64, 0.25), (64, 0.6), (96, 0.0)])
def test_row_blender_equals_the_whole_scene_blend_to_the_bit(tile, overlap):
    """The streaming blend gives the same float32 values as blending every tile into whole-scene sums."""
    rng = np.random.default_rng(0)
    grid = TileGrid.for_scene(300, 410, tile, overlap)
    weights = blend_weights(tile)
    probs = rng.random((len(grid), tile, tile), dtype=np.float32)
    skipped = {3, 7}
    # reference: every tile added to whole-scene sums in row-major order, then one division
    psum = np.zeros((grid.height + tile, grid.width + tile), np.float32)
    wsum = np.zeros_like(psum)
    for index in range(len(grid)):
        if index not in skipped:
            r, c = grid.origin(index)
            psum[r:r + tile, c:c + tile] += probs[index] * weights
            wsum[r:r + tile, c:c + tile] += weights
    psum, wsum = psum[:grid.height, :grid.width], wsum[:grid.height, :grid.width]
    want = np.where(wsum > 0, psum / np.maximum(wsum, 1e-12), 0.0).astype(np.float32)
    blender = RowBlender(grid, weights)
    ncols = len(grid.cols)
    got = np.zeros((grid.height, grid.width), np.float32)
    for r in range(len(grid.rows)):
        for c in range(ncols):
            if r * ncols + c not in skipped:
                blender.add(r, c, probs[r * ncols + c])
        y0, y1, prob, _ = blender.finish(r)
        got[y0:y1] = prob
    np.testing.assert_array_equal(got, want)


def test_band_rows_cover_the_scene_and_carry_is_the_overlap():
    grid = TileGrid.for_scene(718, 791, 64, 0.25)
    bands = [band_rows(grid, r) for r in range(len(grid.rows))]
    assert bands[0][0] == 0 and bands[-1][1] == 718
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:], strict=False))
    assert carry_rows(grid, 3) == [3]  # 25 % overlap: only the last tile row reaches the next band
    dense = TileGrid.for_scene(718, 791, 64, 0.75)
    assert carry_rows(dense, 5) == [3, 4, 5]


def test_read_workers_give_the_same_mask(tmp_path):
    one = predict([SCENE], "null", ["x"], tmp_path / "1", PredictOptions(**OPTIONS, read_workers=1))
    four = predict([SCENE], "null", ["x"], tmp_path / "4", PredictOptions(**OPTIONS, read_workers=4))
    with rasterio.open(tmp_path / "1" / one.results[0].output_dir / "mask.tif") as a, \
            rasterio.open(tmp_path / "4" / four.results[0].output_dir / "mask.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_finished_bands_are_quantised_chunk_by_chunk_as_the_float_band(monkeypatch):
    """finish_band (column chunks, weight sums rebuilt per band) = quantise(finish), 255 where invalid."""
    from rrsis_cli.blend import quantise

    monkeypatch.setattr(RowBlender, "CHUNK", 100)  # several chunks across the 410 columns
    rng = np.random.default_rng(1)
    grid = TileGrid.for_scene(300, 410, 64, 0.5)
    weights = blend_weights(64)
    probs = rng.random((len(grid), 64, 64), dtype=np.float32)
    a, b = RowBlender(grid, weights), RowBlender(grid, weights)
    ncols = len(grid.cols)
    for r in range(len(grid.rows)):
        for c in range(ncols):
            if r * ncols + c != 5:
                a.add(r, c, probs[r * ncols + c])
                b.add(r, c, probs[r * ncols + c])
        y0, y1, prob, covered = a.finish(r)
        want = quantise(prob)
        want[:, :7] = 255
        _, _, p8, got_covered = b.finish_band(r, lambda y0, y1, c0, c1: np.arange(c0, c1)[None].repeat(y1 - y0, 0)
                                              >= 7)
        np.testing.assert_array_equal(p8, want)
        np.testing.assert_array_equal(got_covered, covered)

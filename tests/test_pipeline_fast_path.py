"""The optimised per-tile path equals the straightforward one to the bit: raw tiles normalised on the device in
one pass per batch (:class:`~rrsis_cli.inference.BatchNormaliser`) against the reader's float normalisation and
``normalise_on_device``; tiles with data found from their values (:meth:`SceneReader.read_raw`) against the
valid mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rrsis_cli.inference import BatchNormaliser, normalise_on_device, unsigned_to_float
from rrsis_cli.scene import SceneReader

CPU = torch.device("cpu")


def write(path: Path, data: np.ndarray, nodata=None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": str(data.dtype), "crs": "EPSG:32631", "transform": from_origin(500000, 4000000, 1, 1),
               "nodata": nodata, "tiled": True, "blockxsize": 64, "blockysize": 64}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def reference(reader: SceneReader, raw: np.ndarray, config: dict) -> torch.Tensor:
    """The host path: the reader's float normalisation per tile, stacked, then ``normalise_on_device``."""
    tiles = np.stack([reader.normalise(tile) for tile in raw])
    return normalise_on_device(torch.from_numpy(tiles), config)


SCENES = {
    "uint8 rgb": lambda rng: rng.integers(0, 256, (3, 150, 170), dtype=np.uint8),
    "uint16 rgb, stretched": lambda rng: rng.integers(0, 5000, (3, 150, 170)).astype(np.uint16),
    "int16 grey": lambda rng: rng.integers(-300, 3000, (1, 150, 170)).astype(np.int16),
    "float32 with NaN and inf": lambda rng: np.where(rng.random((3, 150, 170)) < 0.05, np.nan,
                                                     rng.normal(0, 50, (3, 150, 170))).astype(np.float32),
}
CARDS = {"mean 0, std 1": {"mean": [0.0] * 3, "std": [1.0] * 3},
         "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("kind", SCENES)
def test_batch_normaliser_equals_the_host_normalisation_to_the_bit(tmp_path, kind, card):
    rng = np.random.default_rng(3)
    data = SCENES[kind](rng)
    if data.dtype.kind == "f":
        data[0, 3, 4], data[1, 5, 6] = np.inf, -np.inf
    reader = SceneReader(write(tmp_path / "s.tif", data), None)
    try:
        raw = np.stack([data[:, r:r + 64, c:c + 64] for r, c in [(0, 0), (50, 90), (86, 106)]])
        normalise = BatchNormaliser(reader.lo, reader.hi, reader.raw_dtype, CARDS[card], CPU)
        got, want = normalise(raw), reference(reader, raw, CARDS[card])
        assert got.shape == want.shape == (3, 3, 64, 64)
        assert torch.equal(got, want)
        assert torch.equal(normalise(raw[:2]), want[:2])  # the reused buffer follows the batch's size
    finally:
        reader.close()


def test_read_raw_finds_tiles_with_data_as_the_valid_mask_does(tmp_path):
    """Nodata values (a pixel is nodata where every band is) and an edge tile padded outside the scene."""
    data = np.full((3, 150, 170), 7, np.uint16)
    data[:, :64, :64] = 0  # every band nodata: no data in the first tile
    data[1, 64:128, :64] = 0  # one band nodata: still data
    data[:, 100:, 120:] = 0
    data[2, 140, 160] = 5  # one pixel of data in an edge tile
    reader = SceneReader(write(tmp_path / "n.tif", data, nodata=0), None)
    try:
        assert reader.nodata_values == [0, 0, 0]  # found from the values, no mask read
        out = np.empty((3, 64, 64), np.uint16)
        for row, col in [(0, 0), (64, 0), (100, 120), (110, 130), (120, 150), (0, 150)]:
            has_data = reader.read_raw(row, col, 64, out)
            tile, valid = reader.read(row, col, 64)
            assert has_data == bool(valid.any()), (row, col)
            np.testing.assert_array_equal(reader.normalise(out), tile)  # same values, zero outside
    finally:
        reader.close()
    data[2, 140, 160] = 0  # the edge tile without its one pixel of data
    reader = SceneReader(write(tmp_path / "e.tif", data, nodata=0), None)
    try:
        assert not reader.read_raw(100, 120, 64, np.empty((3, 64, 64), np.uint16))
    finally:
        reader.close()


@pytest.mark.parametrize("dtype, signed", [(np.uint16, torch.int16), (np.uint32, torch.int32)])
def test_unsigned_tiles_travel_as_signed_views_and_come_back_exact(dtype, signed):
    """The accelerator path of uint16/uint32 tiles (their signed view is copied, then widened and masked on the
    device), run here on the CPU: every value, the top of the range included, becomes the same float32."""
    top = np.iinfo(dtype).max
    raw = torch.as_tensor(np.array([0, 1, 255, 32767, 32768, 40000, top - 1, top], dtype=dtype))
    view = raw.view(signed)
    assert int(view[-1]) == -1  # what a plain signed copy would give
    got = unsigned_to_float(view, raw.dtype)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(raw.numpy().astype(np.float32)))


def test_the_heap_is_bounded_only_where_the_forward_allocates_nothing_on_the_host(monkeypatch, tmp_path):
    """A fixed mmap threshold page-faults every activation of a CPU forward (20 % slower for lavt-swin-t):
    predict bounds the heap for the null model and for GPU models, not for a real model on the CPU."""
    from rrsis_cli import pipeline
    from rrsis_cli.models import build_model, load_model
    from rrsis_cli.predict import PredictOptions, SceneRunner

    null, tiny = load_model("null"), build_model("lavt-tiny")
    assert pipeline.heap_bound_pays(CPU, null) and not pipeline.heap_bound_pays(CPU, tiny)
    assert pipeline.heap_bound_pays(torch.device("cuda"), tiny)
    calls = []
    monkeypatch.setattr(pipeline, "bound_heap", lambda *a: calls.append(a) or True)
    for spec in ("null", "lavt-tiny"):
        SceneRunner(spec, ["x"], tmp_path / spec, PredictOptions(device="cpu", allow_random_weights=True))
    assert len(calls) == 1  # the null model's runner only

"""The null model: registered like the others, needs no weights, costs nothing, and its per-pixel output lets
predict's tiling and blending be checked against the whole-image computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rrsis_cli.models import load_model
from rrsis_cli.predict import PredictOptions, predict
from rrsis_cli.scene import valid_mask

DATA = Path(__file__).parents[1] / "examples" / "data"


def whole_image_mask(model, path: Path, prompt: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        x = torch.from_numpy(ds.read([1, 2, 3]).astype(np.float32) / 255.0)[None]
        valid = valid_mask(ds, [1, 2, 3])
    ids, mask = model.tokenize([prompt])
    with torch.inference_mode():
        prob = model(x, ids, mask).softmax(1)[0, 1].numpy()
    out = (np.round(prob * 254) / 254 >= 0.5).astype(np.uint8)
    out[~valid] = 255
    return out


def test_null_model_needs_no_weights_and_depends_on_pixel_and_prompt():
    model = load_model("null")
    assert not model.needs_weights and model.sha256 == "no-weights:null"
    x = torch.rand(1, 3, 32, 32)
    a = model(x, *model.tokenize(["water"]))
    b = model(x, *model.tokenize(["Water!"]))
    assert a.shape == (1, 2, 32, 32) and not torch.equal(a, b)
    shifted = model(x[..., 8:, 8:], *model.tokenize(["water"]))
    torch.testing.assert_close(shifted, a[..., 8:, 8:])  # pointwise: no context


@pytest.mark.parametrize("tile,overlap", [(64, 0.25), (128, 0.5)])
def test_predict_with_the_null_model_equals_the_whole_image(tmp_path, tile, overlap):
    scene = DATA / "RGB.byte.tif"
    manifest = predict([scene], "null", ["the river"], tmp_path,
                       PredictOptions(tile_size=tile, overlap=overlap, batch_size=16, device="cpu"))
    assert manifest.exit_code == 0 and manifest.model_sha256 == "no-weights:null"
    with rasterio.open(tmp_path / manifest.results[0].output_dir / "mask.tif") as ds:
        got = ds.read(1)
    np.testing.assert_array_equal(got, whole_image_mask(load_model("null"), scene, "the river"))

"""A naive tiled predictor, the way common geo-ML scripts do it, as the baseline of benchmarks/predict_bench.py.
Not part of the product.

Per tile: a windowed read of that tile alone (no read-ahead), the prompt tokenized and encoded again (the model's
plain forward), batch 1; probabilities summed into whole-scene float32 arrays in memory (sum and count, 8 bytes
per pixel), thresholded at the end and written as one deflate GeoTIFF. Same tile grid, normalisation (uint8 /255)
and model as ``rrsis predict``.

    python benchmarks/naive_predict.py SCENE MODEL PROMPT OUT.tif [--tile-size N] [--overlap 0.25]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from rrsis_cli.models import load_model
from rrsis_cli.tiling import tile_origins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("model")
    ap.add_argument("prompt")
    ap.add_argument("out")
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--overlap", type=float, default=0.25)
    a = ap.parse_args()
    model = load_model(a.model, device="cpu", allow_random_weights=True)  # speed does not depend on the weights
    tile = a.tile_size or int(model.config["image_size"])
    stride = max(1, int(round(tile * (1 - a.overlap))))
    mean = torch.tensor(model.config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.config["std"]).view(1, 3, 1, 1)
    started = time.perf_counter()
    tiles = 0
    with rasterio.open(a.scene) as ds:
        prob_sum = np.zeros((ds.height, ds.width), np.float32)
        count = np.zeros((ds.height, ds.width), np.float32)
        for r in tile_origins(ds.height, tile, stride):
            for c in tile_origins(ds.width, tile, stride):
                data = ds.read([1, 2, 3], window=Window(c, r, tile, tile), boundless=True, fill_value=0)
                x = (torch.from_numpy(data.astype(np.float32) / 255.0)[None] - mean) / std
                ids, mask = model.tokenize([a.prompt])
                with torch.inference_mode():
                    prob = model(x, ids, mask).softmax(1)[0, 1].numpy()
                h, w = min(tile, ds.height - r), min(tile, ds.width - c)
                prob_sum[r:r + h, c:c + w] += prob[:h, :w]
                count[r:r + h, c:c + w] += 1
                tiles += 1
        out = (prob_sum / np.maximum(count, 1) >= 0.5).astype(np.uint8)
        profile = {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1, "dtype": "uint8",
                   "crs": ds.crs, "transform": ds.transform, "compress": "deflate", "tiled": True}
        with rasterio.open(a.out, "w", **profile) as dst:
            dst.write(out, 1)
    seconds = time.perf_counter() - started
    print(json.dumps({"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()

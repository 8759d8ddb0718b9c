#!/usr/bin/env bash
# Offline end-to-end demonstration (about a minute on 2 CPU cores):
#   1. a 1024x1024 georeferenced scene of real pixels with composited objects and ground-truth polygons,
#   2. rrsis predict with the shipped demo model (examples/demo-model: small Swin + frozen MiniLM),
#   3. rrsis evaluate against the ground truth,
#   4. an overlay PNG (prediction magenta, ground truth outlined yellow).
# Set QS_SIZE to change the scene size (CI uses a smaller one) and QS_OUT for the output folder.
# Stops at the first failing command and exits non-zero; ends by checking that every output was written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${QS_OUT:-demo}
SIZE=${QS_SIZE:-1024}
PROMPT="the red circle"

rrsis data scene examples/data/rgbn_5m.tif --out "$OUT/scene" --size "$SIZE" --overwrite
rrsis predict "$OUT/scene/scene.tif" --model examples/demo-model --prompt "$PROMPT" --out "$OUT/predict" --overwrite
[ -s "$OUT/predict/manifest.json" ] || { echo "quickstart: FAILED: $OUT/predict/manifest.json was not written" >&2; exit 1; }
# OUT/<scene key>/<prompt key>/ (e.g. scene-1a2b3c4d/the-red-circle-842bc5d3/): the manifest maps each pair to it
MASK_DIR="$OUT/predict/$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"][0]["output_dir"])' \
    "$OUT/predict/manifest.json")"
rrsis evaluate --pred "$MASK_DIR/mask.tif" \
    --gt "$OUT/scene/gt/the-red-circle.geojson" --out "$OUT/eval"
rrsis overlay "$OUT/scene/scene.tif" "$MASK_DIR/mask.tif" \
    --gt "$OUT/scene/gt/the-red-circle.geojson" --out "$OUT/overlay.png"
for output in "$OUT/predict/manifest.json" "$MASK_DIR/mask.tif" "$MASK_DIR/mask.geojson" \
        "$OUT/eval/metrics.json" "$OUT/overlay.png"; do
    if [ ! -s "$output" ]; then
        echo "quickstart: FAILED: $output was not written" >&2
        exit 1
    fi
done
echo "outputs: $OUT/predict (mask.tif, mask.geojson, manifest.json), $OUT/eval/metrics.json, $OUT/overlay.png"

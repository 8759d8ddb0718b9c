"""Run by tests/test_train.py under torchrun: a small DDP training job on in-memory synthetic samples."""

import sys

from rrsis_cli import console
from rrsis_cli.models import build_model
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import Trainer, TrainOptions
from synthetic import make_samples

if __name__ == "__main__":
    out = sys.argv[1]
    console.configure(log_format="json")
    model = build_model("lavt-tiny", seed=0)
    cfg = model.config

    def wrap(samples):
        return ReferringTrainSet(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer, 20)

    opts = TrainOptions(out_dir=out, epochs=2, batch_size=4, lr=1e-3)
    Trainer(model, wrap(make_samples(16, seed=0)), wrap(make_samples(4, seed=1)), opts).run()

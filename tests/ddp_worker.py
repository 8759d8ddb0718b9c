"""Run by tests/test_train.py under torchrun: a small DDP training job on in-memory synthetic samples.

``ddp_worker.py OUT`` trains 2 epochs, then checks that the trainer destroyed the process group it created (its
gloo threads joined before interpreter exit). ``ddp_worker.py OUT --fail-rank R`` makes rank R raise in its
last epoch (the other ranks are then inside a collective, waiting for it).
"""

import os
import sys

import torch.distributed as dist

from rrsis_cli import console
from rrsis_cli.models import build_model
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import Trainer, TrainOptions
from synthetic import make_samples

EPOCHS = 2


class FailingInLastEpoch(ReferringTrainSet):
    def __getitem__(self, index):
        if self.epoch == EPOCHS - 1:
            raise RuntimeError(f"injected failure on rank {os.environ['RANK']} in the last epoch")
        return super().__getitem__(index)


if __name__ == "__main__":
    out = sys.argv[1]
    fail_rank = int(sys.argv[3]) if sys.argv[2:3] == ["--fail-rank"] else None
    # The main thread keeps the GIL up to 100 s unless it blocks: a gloo thread that still needs the GIL after
    # the last collective then waits into interpreter exit, where it was killed ("terminate called without an
    # active exception") when nothing destroyed the group: about 4 runs in 10 instead of 1 in 20.
    sys.setswitchinterval(100)
    console.configure(log_format="json")
    model = build_model("lavt-tiny", seed=0)
    cfg = model.config
    failing = fail_rank == int(os.environ["RANK"])

    def wrap(samples, kind=ReferringTrainSet):
        return kind(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer, 20)

    opts = TrainOptions(out_dir=out, epochs=EPOCHS, batch_size=4, lr=1e-3)
    train_set = wrap(make_samples(16, seed=0), FailingInLastEpoch if failing else ReferringTrainSet)
    Trainer(model, train_set, wrap(make_samples(4, seed=1)), opts).run()
    if dist.is_initialized():
        sys.exit("the trainer left its process group initialized")

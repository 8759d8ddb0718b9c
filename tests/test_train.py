"""Training: a tiny LAVT learns a language-dependent task; exact resume; poly schedule; losses."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from rrsis_cli.models import build_model, load_model
from rrsis_cli.train.data import EpochSampler, ReferringTrainSet
from rrsis_cli.train.loop import STATE_FILE, Trainer, TrainOptions
from rrsis_cli.train.losses import dice_loss, segmentation_loss
from rrsis_cli.train.schedule import poly_lr_factor
from synthetic import BLIND_MIOU_BOUND, make_samples


def _sets(model, n_train: int, n_val: int, occlusion_prob: float = 0.0, seed: int = 0):
    cfg = model.config

    def wrap(samples, occlusion=0.0):
        return ReferringTrainSet(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer, 20,
                                 occlusion_prob=occlusion, seed=seed)

    return wrap(make_samples(n_train, seed=0), occlusion_prob), wrap(make_samples(n_val, seed=1))


def test_tiny_lavt_learns_a_language_dependent_task(tmp_path):
    """Each image has a red and a blue square and two expressions; the blind bound is mIoU 0.5 (synthetic.py)."""
    model = build_model("lavt-tiny", seed=0)
    train_set, val_set = _sets(model, 128, 24)
    opts = TrainOptions(out_dir=tmp_path / "run", epochs=3, batch_size=8, lr=1e-3)
    result = Trainer(model, train_set, val_set, opts).run()
    final = result["history"][-1]
    assert final["mIoU"] > BLIND_MIOU_BOUND + 0.25, final  # measured: about 0.9 after 3 epochs
    assert final["oIoU"] > 0.7
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 3 and float(rows[-1]["mIoU"]) == pytest.approx(final["mIoU"])
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    best = load_model(tmp_path / "run" / "best")
    assert best.sha256 and (tmp_path / "run" / "last" / STATE_FILE).is_file()


def _run(tmp_path, name: str, max_steps: int, resume: bool = False):
    model = build_model("lavt-tiny", seed=3)
    # 40 samples / batch 8 -> 5 steps per epoch; RMSIN's occlusion on a fixed half of the refs (new boxes each
    # epoch), so the resumed run must reproduce the boxes too
    train_set, val_set = _sets(model, 20, 4, occlusion_prob=0.5)
    assert len(train_set.occluded) == 20
    opts = TrainOptions(out_dir=tmp_path / name, epochs=3, batch_size=8, lr=5e-4, max_steps=max_steps,
                        resume=resume, occlusion_prob=0.5, clip_grad=1.0)
    return Trainer(model, train_set, val_set, opts).run()


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    _run(tmp_path, "straight", max_steps=8)
    _run(tmp_path, "split", max_steps=3)  # stops mid-epoch 1
    _run(tmp_path, "split", max_steps=8, resume=True)  # crosses the epoch boundary and its validation
    a = load_model(tmp_path / "straight" / "last").state_dict()
    b = load_model(tmp_path / "split" / "last").state_dict()
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=1e-6), key
    moved = load_model(tmp_path / "split" / "last").state_dict()
    start = build_model("lavt-tiny", seed=3).state_dict()
    assert any(not torch.equal(moved[k], start[k]) for k in start if start[k].is_floating_point())


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    from rrsis_cli.errors import OutputError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("x")
    model = build_model("lavt-tiny", seed=0)
    train_set, val_set = _sets(model, 8, 2)
    with pytest.raises(OutputError, match="--resume"):
        Trainer(model, train_set, val_set, TrainOptions(out_dir=tmp_path / "run", epochs=1)).run()


def test_poly_schedule_and_warmup():
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(100, 100) == 0.0
    assert poly_lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert poly_lr_factor(10, 100, warmup_steps=10) == 1.0


def test_occlusion_depends_on_seed_epoch_and_index_only():
    """What a resumed run needs: an item is the same whatever was drawn before (global generators included)."""
    import random

    model = build_model("lavt-tiny", seed=0)
    first, _ = _sets(model, 6, 1, occlusion_prob=0.5, seed=4)
    first.set_epoch(2)
    before = [first[i]["pixel_values"] for i in range(12)]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    again, _ = _sets(model, 6, 1, occlusion_prob=0.5, seed=4)
    again.set_epoch(2)
    assert again.occluded == first.occluded and len(again.occluded) == 6
    for i in reversed(range(12)):
        assert torch.equal(again[i]["pixel_values"], before[i]), i
    other, _ = _sets(model, 6, 1, occlusion_prob=0.5, seed=5)
    assert other.occluded != first.occluded


def test_losses():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = torch.stack([(1 - target) * 20.0, target * 20.0], 1).float()
    assert dice_loss(perfect, target) < 1e-3
    assert segmentation_loss(perfect, target) < 1e-3
    wrong = perfect.flip(1)
    ce_only = segmentation_loss(wrong, target, {"type": "weighted_ce"})
    mixed = segmentation_loss(wrong, target, {"type": "ce_dice", "ce_weight": 0.9, "dice_weight": 0.1})
    assert float(mixed) == pytest.approx(float(0.9 * ce_only + 0.1 * dice_loss(wrong, target)), rel=1e-5)


def test_epoch_sampler_shards_are_disjoint_and_complete():
    shards = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    seen = [i for s in shards for i in s]
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # padded by wrapping like DistributedSampler
    one = EpochSampler(10, seed=1)
    one.set_epoch(2, skip=4)
    full = EpochSampler(10, seed=1)
    full.set_epoch(2)
    assert list(one) == list(full)[4:]


def test_parameter_groups_follow_the_official_recipe():
    from rrsis_cli.train.schedule import parameter_groups

    model = build_model("lavt-tiny", seed=0)
    decay, no_decay = parameter_groups(model, 0.01, text_layers=1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "backbone.layers.0.blocks.0.norm1.weight" in no_decay_names
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in no_decay_names
    assert "classifier.bn1_4.weight" not in no_decay_names  # the decoder decays, as officially
    trainable = {names[id(p)] for g in (decay, no_decay) for p in g["params"]}
    assert any(n.startswith("text_encoder.encoder.layer.0.") for n in trainable)
    assert not any(n.startswith(("text_encoder.encoder.layer.1.", "text_encoder.embeddings.")) for n in trainable)


@pytest.mark.alone  # torchrun: two processes of its own
def test_ddp_two_process_gloo_run(tmp_path):
    """torchrun with 2 CPU processes (gloo): completes, logs each epoch once, checkpoint loads; each rank destroys
    the process group the trainer created (left to interpreter exit, rank 1 aborted now and then with "terminate
    called without an active exception"; ddp_worker.py widens that window)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tests / "ddp_worker.py"), str(tmp_path / "ddp")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    epochs = [r["message"] for r in records if r["message"].startswith("epoch ")]
    assert len(epochs) == 2, epochs  # rank 0 only: one line per epoch
    config = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 8
    model = load_model(tmp_path / "ddp" / "last")
    assert model.arch == "lavt"
    rows = list(csv.DictReader(open(tmp_path / "ddp" / "metrics.csv")))
    assert len(rows) == 2 and int(rows[-1]["n_samples"]) == 8  # every validation sample scored once


@pytest.mark.alone
def test_ddp_rank_failing_in_its_last_epoch_fails_the_job_without_hanging(tmp_path):
    """Rank 1 raises in its last epoch while rank 0 waits in a collective: the trainer's cleanup (destroying the
    process group, no barrier) must not keep either rank alive: torchrun fails promptly with rank 1's error."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tests / "ddp_worker.py"), str(tmp_path / "ddp"), "--fail-rank", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert "injected failure on rank 1 in the last epoch" in res.stderr, res.stderr[-3000:]
    assert "terminate called" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("card", ["lavt-tiny", "rmsin-tiny", "lgce-tiny", "crobim-tiny", "btdnet-tiny"])
def test_every_architecture_trains_through_the_registry(card, tmp_path):
    """No architecture-specific branches: the same Trainer runs each tiny card and writes loadable checkpoints."""
    model = build_model(card, seed=0)
    cfg = model.config

    def wrap(samples):
        return ReferringTrainSet(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer,
                                 int(cfg["max_tokens"]))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = TrainOptions(out_dir=tmp_path / card, epochs=1, batch_size=4, lr=1e-3, loss=cfg.get("loss"))
    result = Trainer(model, wrap(make_samples(4, seed=0)), wrap(make_samples(2, seed=1)), opts).run()
    assert result["step"] == 2 and np.isfinite(result["history"][-1]["train_loss"])
    trained = load_model(tmp_path / card / "last")
    assert trained.arch == cfg["arch"]
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items() if v.is_floating_point())


def test_cli_train_on_a_folder_dataset_then_resume(tmp_path):
    """`rrsis train --dataset folder` end to end (YAML config + flags), then --resume continues to more steps."""
    import subprocess
    import sys

    from synthetic import write_folder_dataset

    root = write_folder_dataset(tmp_path / "data", {"train": 8, "val": 2})
    config = tmp_path / "train.yaml"
    config.write_text(f"dataset: folder\nroot: {root}\nmodel: lavt-tiny\nepochs: 2\nbatch-size: 4\nlr: 0.001\n")
    base = [sys.executable, "-m", "rrsis_cli", "train", "--config", str(config), "--out", str(tmp_path / "run")]
    first = subprocess.run(base + ["--max-steps", "3"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming at step 3" in second.stderr
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["step"]) for r in rows][-1] == 8  # 16 samples / batch 4 x 2 epochs
    assert load_model(tmp_path / "run" / "best").arch == "lavt"
    bad = subprocess.run([sys.executable, "-m", "rrsis_cli", "train", "--dataset", "folder", "--root",
                          str(tmp_path / "nowhere"), "--model", "lavt-tiny", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "nowhere: dataset root not found" in bad.stderr

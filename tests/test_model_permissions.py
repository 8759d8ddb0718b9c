"""Model directories written by `models init`, `train` (and every save_model) honour the umask, so colleagues on
a shared cluster can read them: folders 0777 & ~umask, files 0666 & ~umask (not tempfile's 0700 / 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rrsis_cli import console
from rrsis_cli.cli import main
from rrsis_cli.models import build_model
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import STATE_FILE, Trainer, TrainOptions
from synthetic import make_samples


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)
    console.configure()


def _modes(root: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        modes[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return modes


def _expected(root: Path, umask: int) -> dict[str, int]:
    expected = {".": 0o777 & ~umask}
    for path in root.rglob("*"):
        expected[str(path.relative_to(root))] = (0o777 if path.is_dir() else 0o666) & ~umask
    return expected


def test_models_init_honours_the_umask(umask, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(SystemExit) as exit_info:
        main(["--quiet", "models", "init", "lavt-tiny", "--out", str(out)])
    assert exit_info.value.code == 0
    modes = _modes(out)
    assert {"config.json", "model.safetensors", "tokenizer"} <= set(modes)
    assert modes == _expected(out, umask), {k: oct(v) for k, v in modes.items()}
    # replacing an existing directory gives the same modes
    with pytest.raises(SystemExit):
        main(["--quiet", "models", "init", "lavt-tiny", "--out", str(out), "--overwrite", "--seed", "1"])
    assert _modes(out) == _expected(out, umask)


def test_training_checkpoints_honour_the_umask(umask, tmp_path):
    model = build_model("lavt-tiny", seed=0)
    cfg = model.config
    train_set = ReferringTrainSet(make_samples(8, seed=0), lambda s: s, 64, cfg["mean"], cfg["std"],
                                  model.tokenizer, 20)
    out = tmp_path / "run"
    Trainer(model, train_set, None, TrainOptions(out_dir=out, epochs=1, max_steps=1, batch_size=4,
                                                 device="cpu")).run()
    for which in ("last", "best"):
        if (out / which).exists():
            modes = _modes(out / which)
            assert "model.safetensors" in modes
            assert modes == _expected(out / which, umask), (which, {k: oct(v) for k, v in modes.items()})
    assert (out / "last" / STATE_FILE).is_file()
    assert stat.S_IMODE((out / "last" / STATE_FILE).stat().st_mode) == 0o666 & ~umask

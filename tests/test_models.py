"""Model loading and saving beyond the contract (tests/test_model_contract.py): refusals and their messages,
configuration overrides, float16 export; the tokenizer convention; the Swin blocks and the official LAVT
configuration's structure."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import read_manifest
from rrsis_cli.errors import ModelError
from rrsis_cli.models import build_model, load_model, save_model
from rrsis_cli.models.registry import config_for
from rrsis_cli.models.swin import shifted_window_mask, window_partition, window_reverse


@pytest.fixture(scope="module")
def tiny():
    return build_model("lavt-tiny", seed=0)


PROMPTS = ["the red car on the left", "a large white storage tank north of the road"]




def test_tokenize_official_convention(tiny):
    ids, mask = tiny.tokenize(["the two white storage tanks", "x " * 40])
    assert ids.shape == mask.shape == (2, 20)
    assert ids[0, 0].item() == 101  # [CLS]
    n = int(mask[0].sum())
    assert ids[0, n - 1].item() == 102  # [SEP] ends a short sentence
    assert ids[0, n:].eq(0).all() and mask[0, n:].eq(0).all()
    assert mask[1].all() and ids[1, -1].item() != 102  # a long sentence is cut, [SEP] dropped (official)












def test_save_refuses_non_empty_dir_without_overwrite(tiny, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    from rrsis_cli.errors import OutputError

    with pytest.raises(OutputError, match="not empty"):
        save_model(tiny, tmp_path / "m", overwrite=False)
    assert (tmp_path / "m" / "keep.txt").exists()


def test_load_model_errors_name_the_file(tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(ModelError, match="config.json missing"):
        load_model(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"arch": "lavt"}')
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        load_model(tmp_path / "broken")
    with pytest.raises(ModelError, match="unknown model card|neither a model card"):
        load_model("no-such-card")


def test_load_rejects_weights_of_another_configuration(tiny, tmp_path):
    save_model(tiny, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["backbone"]["embed_dim"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="shape mismatch"):
        load_model(tmp_path / "m")


def test_overrides_and_architecture_default():
    cfg = config_for("lavt", window_size=7, backbone__num_heads=[1, 2, 4, 8])
    assert cfg["name"] == "lavt-swin-b" and cfg["backbone"]["window_size"] == 7
    assert cfg["backbone"]["num_heads"] == [1, 2, 4, 8] and cfg["fusion"]["num_heads"] == [1, 1, 1, 1]
    with pytest.raises(ModelError, match="several sections"):
        config_for("lavt", num_heads=[1, 1, 1, 1])


def test_window_partition_round_trip_and_mask():
    x = torch.randn(2, 8, 12, 5)
    assert torch.equal(window_reverse(window_partition(x, 4), 4, 8, 12), x)
    mask = shifted_window_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert mask[0].eq(0).all()  # the top-left window holds one region only
    assert set(mask.unique().tolist()) == {-100.0, 0.0}


def test_official_swin_b_structure_and_parameter_count():
    """LAVT Swin-B: every official key with its shape, and 118,847,866 parameters outside BERT."""
    model = build_model("lavt-swin-b")
    counts = model.parameter_counts()
    assert counts["vision_and_fusion"] == 118_847_866
    assert counts["text_encoder"] == 108_891_648
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k.replace("bert_model/", "text_encoder."): s for k, s, _ in read_manifest("lavt-swin-b-w12.keys.tsv")}
    assert ours == official


def test_float16_export_halves_the_size_and_loads_as_float32(tiny, tmp_path):
    save_model(tiny, tmp_path / "fp32")
    save_model(tiny, tmp_path / "fp16", weights_dtype="float16")
    a = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    b = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert b < 0.6 * a
    half = load_model(tmp_path / "fp16")
    assert half.backbone.patch_embed.proj.weight.dtype == torch.float32
    x = torch.randn(1, 3, 64, 64)
    ids, mask = tiny.tokenize(["the red car"])
    with torch.no_grad():
        assert torch.allclose(half(x, ids, mask), tiny(x, ids, mask), atol=5e-2)

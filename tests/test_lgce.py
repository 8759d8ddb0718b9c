"""LGCE: strict conversion of the official layout, parameter counts, and the model contract on the tiny card."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import read_manifest, synthetic_official_checkpoint
from rrsis_cli.errors import ConversionError
from rrsis_cli.models import build_model, load_model, save_model
from rrsis_cli.models.convert import convert_checkpoint
from rrsis_cli.models.lgce import UNUSED_OFFICIAL_MODULES, sentence_vector

PROMPTS = ["the red car on the left", "a large white storage tank north of the road"]
MANIFEST = "lgce-swin-b-w12.keys.tsv"


@pytest.fixture(scope="module")
def tiny():
    return build_model("lgce-tiny", seed=0)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The published layout (BERT outside as 'bert_model'), Swin-B window 12, converted once."""
    ckpt = synthetic_official_checkpoint(MANIFEST, seed=5)
    path = tmp_path_factory.mktemp("lgce") / "lgce_official.pth"
    torch.save(ckpt, path)
    model = convert_checkpoint("lgce", path)
    return ckpt, model


def test_official_checkpoint_converts_strictly(official):
    ckpt, model = official
    state = model.state_dict()
    official_keys = set(ckpt["model"]) | {"text_encoder." + k for k in ckpt["bert_model"]}
    assert set(state) == official_keys  # every official key consumed, every weight filled
    for key, value in ckpt["model"].items():
        assert torch.equal(state[key], value), key
    for key, value in ckpt["bert_model"].items():
        assert torch.equal(state["text_encoder." + key], value), key
    cfg = model.config
    assert cfg["arch"] == "lgce" and cfg["backbone"]["window_size"] == 12 and cfg["backbone"]["embed_dim"] == 128
    assert cfg["decoder"]["msb_depths"] == [1, 3] and cfg["decoder"]["patch_sizes"] == [8, 16]
    assert cfg["decoder"]["sentence_pool"] == "all"


def test_official_parameter_counts(official):
    counts = official[1].parameter_counts()
    assert counts["vision_and_fusion"] == 167_366_138
    assert counts["text_encoder"] == 108_891_648


def test_official_card_matches_manifest_shapes(official):
    """The zoo card builds exactly the official keys and shapes (checked on the converted model's config)."""
    model = official[1]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    manifest = {k.replace("bert_model/", "text_encoder."): s for k, s, _ in read_manifest(MANIFEST)}
    assert ours == manifest


def _tiny_official(seed: int = 3) -> dict:
    """An official-layout checkpoint of a small LGCE: our tiny LGCE with its BERT as 'bert_model'."""
    state = build_model("lgce-tiny", seed=seed).state_dict()
    return {
        "model": {k: v for k, v in state.items() if not k.startswith("text_encoder.")},
        "bert_model": {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")},
    }


def test_tiny_official_layout_round_trips(tmp_path):
    ckpt = _tiny_official()
    torch.save(ckpt, tmp_path / "tiny.pth")
    model = convert_checkpoint("lgce", tmp_path / "tiny.pth")
    assert model.config["decoder"]["msb_depths"] == [1, 2]
    for key, value in ckpt["model"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_missing_and_extra_keys_raise_conversion_error(tmp_path):
    ckpt = _tiny_official()
    ckpt["model"].pop("classifier.msb1.msb.blocks.1.0.attn.qkv.weight")
    ckpt["model"]["classifier.msb4.surplus.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint("lgce", tmp_path / "bad.pth")
    text = str(err.value)
    assert "bad.pth" in text
    assert "1 official keys not consumed: classifier.msb4.surplus.weight" in text
    assert "1 project weights not filled: classifier.msb1.msb.blocks.1.0.attn.qkv.weight" in text


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_forward_shape(tiny, size):
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, *size), ids, mask)
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()


def test_forward_with_text_equals_forward_and_broadcasts(tiny):
    x = torch.randn(3, 3, 64, 96)
    ids, mask = tiny.tokenize(["the small grey roof"])
    with torch.no_grad():
        full = tiny(x, ids.expand(3, -1), mask.expand(3, -1))
        cached = tiny.forward_with_text(x, tiny.encode_text(ids, mask))
    assert torch.allclose(full, cached, atol=1e-6)


def test_save_load_round_trip_bit_exact(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["arch"] == "lgce"
    loaded = load_model(out)
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 3, 64, 64)
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(tiny(x, ids, mask), loaded(x, ids, mask))


def test_same_seed_same_weights():
    a, b, c = (build_model("lgce-tiny", seed=s) for s in (7, 7, 8))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_gate_initialisation(tiny):
    """Default: trunc-normal gates (the published factory's effective init); ``zero``: both Linears at zero."""
    assert all(stage.res_gate[0].weight.abs().sum() > 0 for stage in tiny.backbone.layers)
    zero = build_model("lgce-tiny", seed=0, gate_init="zero")
    for stage in zero.backbone.layers:
        assert stage.res_gate[0].weight.eq(0).all() and stage.res_gate[2].weight.eq(0).all()


def test_padding_official_sentence_vector_averages_padding(tiny):
    """Official numerics (sentence_pool: all): appending padding changes the sentence vector and the output;
    the word-level path (PWAM) alone is padding invariant."""
    ids, mask = tiny.tokenize(PROMPTS)
    pad = torch.zeros((2, 12), dtype=torch.long)
    with torch.no_grad():
        short = tiny.encode_text(ids, mask)
        long = tiny.encode_text(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
        x = torch.randn(2, 3, 64, 64)
        a = tiny.forward_with_text(x, short)
        b = tiny.forward_with_text(x, long)
        assert not torch.allclose(sentence_vector(short, "all"), sentence_vector(long, "all"), atol=1e-5)
        assert torch.allclose(sentence_vector(short, "masked"), sentence_vector(long, "masked"), atol=1e-5)
        feats_a = tiny.backbone(x, short)
        feats_b = tiny.backbone(x, long)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(feats_a, feats_b, strict=True))
    assert not torch.allclose(a, b, atol=1e-7)


def test_padding_invariance_with_masked_pooling():
    model = build_model("lgce-tiny", seed=1, sentence_pool="masked")
    ids, mask = model.tokenize(PROMPTS)
    pad = torch.zeros((2, 12), dtype=torch.long)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(x, ids, mask)
        b = model(x, torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_unused_official_modules_do_not_affect_the_output(tiny):
    state = tiny.state_dict()
    for prefix in UNUSED_OFFICIAL_MODULES:
        assert any(k.startswith(prefix + ".") for k in state), prefix
    model = build_model("lgce-tiny", seed=0)
    x = torch.randn(1, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS[:1])
    with torch.no_grad():
        before = model(x, ids, mask)
        for name, param in model.named_parameters():
            if any(name.startswith(p + ".") for p in UNUSED_OFFICIAL_MODULES):
                param.add_(1.0)
        after = model(x, ids, mask)
    assert torch.equal(before, after)


def test_guide_tokens_change_the_output():
    model = build_model("lgce-tiny", seed=2)
    x = torch.randn(1, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS[:1])
    with torch.no_grad():
        before = model(x, ids, mask)
        model.classifier.lg_layer4.weight.mul_(10.0)
        after = model(x, ids, mask)
    assert (before - after).abs().max() > 1e-6

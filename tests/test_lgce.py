"""LGCE: strict conversion of the official layout, parameter counts, gate initialisation, the official sentence
pooling and the modules the official code never uses (the model contract: tests/test_model_contract.py)."""

from __future__ import annotations

import pytest
import torch

from helpers import official_checkpoint, read_manifest, synthetic_official_checkpoint
from rrsis_cli.models import build_model
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


def test_tiny_official_layout_gives_the_decoder_configuration(tmp_path):
    """The configuration read off a converted checkpoint's shapes (the weights themselves: the contract suite)."""
    torch.save(official_checkpoint(build_model("lgce-tiny", seed=3)), tmp_path / "tiny.pth")
    model = convert_checkpoint("lgce", tmp_path / "tiny.pth")
    assert model.config["decoder"]["msb_depths"] == [1, 2] and model.config["decoder"]["sentence_pool"] == "all"


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

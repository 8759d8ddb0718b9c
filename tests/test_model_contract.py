"""The model contract (DESIGN §3), one suite for every registered architecture: each ``*-tiny`` card and ``null``,
and the configuration switches of the tiny cards. What only one architecture does is tested in its own file.

Where an architecture differs, it says so on its class and the suite asserts what it says: ``padding_invariant``
(LGCE's official sentence pooling averages padding), ``unused_parameters()`` (weights the official layouts hold
but no output reads), ``official_layout`` (how ``rrsis convert`` reads its official checkpoints) and
``needs_weights`` (the null model: no learned parameter, so no gradient to check).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import official_checkpoint
from rrsis_cli.errors import ConversionError, ModelError
from rrsis_cli.models import build_model, list_cards, load_model, save_model
from rrsis_cli.models.base import ReferringSegmenter
from rrsis_cli.models.convert import convert_checkpoint
from rrsis_cli.models.registry import architecture_class, architectures
from rrsis_cli.train.loop import LossStep, TrainOptions

CARDS = sorted(card["name"] for card in list_cards() if card["name"].endswith("-tiny") or card["name"] == "null")
# Configuration switches of the tiny cards (build_model overrides): every switch keeps the contract too.
SWITCHES = {
    "crobim-tiny": [{"backbone__type": "convnext"}, {"capm__enabled": False}, {"text_passes": 1},
                    {"interaction": "pwam"}, {"scale_fusion": "concat", "adc": "residual"},
                    {"adc": "none", "mid__head": "token_max"}, {"refine_stride4": True, "lgfa__stride": 8},
                    {"lgfa__num_blocks": 2, "gamma_init": 0.5}, {"mid__order": "pixels_first"},
                    {"adc": "residual", "adc_lambda": 0.25}],
    "btdnet-tiny": [{"placement": "post"}, {"spatial_pool": "mean"}, {"background": "query"}, {"exchange": False},
                    {"update_text": False}, {"bsc__num_heads": 2}],
    "lgce-tiny": [{"sentence_pool": "masked"}],
}
VARIANTS = [(card, {}) for card in CARDS] + [(card, switch) for card, switches in SWITCHES.items() for switch in switches]
IDS = [card + "".join(f"-{k}={v}" for k, v in overrides.items()) for card, overrides in VARIANTS]
ARCH = {card["name"]: card["arch"] for card in list_cards()}
OFFICIAL = [card for card in CARDS if architecture_class(ARCH[card]).official_layout]
PROMPTS = ["the red car on the left", "a large white storage tank north of the road"]


pytestmark = pytest.mark.usefixtures("one_thread")


def build(card: str, overrides: dict, seed: int = 0) -> ReferringSegmenter:
    return build_model(card, seed=seed, **overrides)


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def variant(request):
    card, overrides = request.param
    return card, overrides, build(card, overrides)


def test_every_architecture_is_in_the_suite():
    assert {ARCH[card] for card in CARDS} == set(architectures())
    assert set(OFFICIAL) == {"lavt-tiny", "lgce-tiny", "rmsin-tiny"}  # `rrsis convert --arch`


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_construction_and_forward(variant, size):
    card, _, model = variant
    assert isinstance(model, ReferringSegmenter) and model.arch == ARCH[card] == model.config["arch"]
    assert not model.training and isinstance(model.text_encoder, torch.nn.Module)
    counts = model.parameter_counts()
    assert counts["total"] == counts["text_encoder"] + counts["vision_and_fusion"]
    ids, mask = model.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (2, model.max_tokens) and ids.dtype == torch.long
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size), ids, mask)
    assert out.shape == (2, 2, *size) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_state_dict_round_trip_through_safetensors_is_strict(variant, tmp_path):
    _, _, model = variant
    out = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == model.arch and config["format_version"] == 1
    loaded = load_model(out)
    assert type(loaded) is type(model) and not loaded.training and len(loaded.sha256) == 64
    state, back = model.state_dict(), loaded.state_dict()
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    assert torch.equal(loaded.tokenize(PROMPTS)[0], ids)
    with torch.no_grad():
        assert torch.equal(model(x, ids, mask), loaded(x, ids, mask))
    weights = load_file(out / "model.safetensors")
    dropped = next(iter(weights))
    save_file({k: v for k, v in weights.items() if k != dropped}, out / "model.safetensors")
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(out)


def test_text_encoded_once_serves_every_tile(variant):
    """``encode_text`` once, then ``forward_with_text`` on a batch of tiles == ``forward`` with the prompt repeated
    (a batch-1 text is broadcast), whatever the batch."""
    _, _, model = variant
    x = torch.randn(3, 3, 64, 96)
    ids, mask = model.tokenize(["the small grey roof"])
    with torch.no_grad():
        full = model(x, ids.expand(3, -1), mask.expand(3, -1))
        text = model.encode_text(ids, mask)
        tiles = model.forward_with_text(x, text)
        again = model.forward_with_text(x[1:], text)
    assert torch.allclose(full, tiles, atol=1e-6), float((full - tiles).abs().max())
    assert torch.allclose(tiles[1:], again, atol=1e-5)


def test_deterministic(variant):
    """Same seed: the same weights and, run twice, the same output to the bit; another seed: other weights."""
    card, overrides, model = variant
    twin, other = build(card, overrides, seed=0), build(card, overrides, seed=1)
    assert all(torch.equal(value, twin.state_dict()[key]) for key, value in model.state_dict().items())
    assert any(not torch.equal(value, other.state_dict()[key])
               for key, value in model.state_dict().items() if value.is_floating_point())
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(model(x, ids, mask), model(x, ids, mask))


def test_batch_samples_are_independent(variant):
    """A sample's output does not depend on the rest of its batch (eval mode)."""
    _, _, model = variant
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    with torch.no_grad():
        both = model(x, ids, mask)
        for i in range(2):
            alone = model(x[i:i + 1], ids[i:i + 1], mask[i:i + 1])
            assert torch.allclose(both[i:i + 1], alone, atol=1e-5), (i, float((both[i:i + 1] - alone).abs().max()))


def test_the_expression_and_its_padding(variant):
    """Another expression changes the output; appending padding tokens does not, unless the architecture says
    so (``padding_invariant``)."""
    _, _, model = variant
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    pad = torch.zeros((2, 12), dtype=torch.long)
    with torch.no_grad():
        a = model(x, ids, mask)
        padded = model(x, torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
        other = model(x, *model.tokenize(["a white storage tank", "the red car"]))
    assert (a - other).abs().max() > 1e-4
    assert torch.allclose(a, padded, atol=1e-5) is model.padding_invariant, float((a - padded).abs().max())


def test_gradients_reach_every_used_parameter(variant):
    """One training step's loss (``training_losses`` where the architecture defines it) gives every parameter a
    finite gradient, except those the architecture lists as unused, which get none."""
    card, overrides, _ = variant
    model = build(card, overrides).train()
    ids, mask = model.tokenize(PROMPTS)
    if not model.needs_weights:  # the null model: its output depends on no parameter, so no gradient can reach one
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            before = model.eval()(x, ids, mask)
            for param in model.parameters():
                param.add_(torch.randn_like(param))
            assert torch.equal(before, model(x, ids, mask)), card
        return
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:40, 8:48] = 1
    loss = LossStep(model, model.config.get("loss", TrainOptions(out_dir=".").loss))(
        torch.randn(2, 3, 64, 64), ids, mask, target)
    loss.backward()
    unused = model.unused_parameters()
    for name, param in model.named_parameters():
        if name.startswith(tuple(p + "." for p in unused)):
            assert param.grad is None, f"{name} is listed as unused but gets a gradient"
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(any(name.startswith(p + ".") for name, _ in model.named_parameters()) for p in unused), unused
    for part in (model.text_encoder, model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize("card", OFFICIAL)
def test_official_layout_converts_strictly(card, tmp_path):
    """``rrsis convert`` reads the architecture's official checkpoint layout (made here from the tiny model):
    every key consumed, every weight filled, bit-exact; a missing or extra key is an error naming both."""
    model = build_model(card, seed=4)
    checkpoint = official_checkpoint(model)
    torch.save(checkpoint, tmp_path / "official.pth")
    converted = convert_checkpoint(model.arch, tmp_path / "official.pth")
    assert converted.arch == model.arch
    state = converted.state_dict()
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    missing = next(k for k in checkpoint["model"] if k.startswith("backbone.layers.1."))
    checkpoint["model"].pop(missing)
    checkpoint["model"]["backbone.surplus.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(model.arch, tmp_path / "bad.pth")
    text = str(err.value)
    assert "bad.pth" in text and "1 official keys not consumed: backbone.surplus.weight" in text
    assert f"1 project weights not filled: {missing}" in text

"""RMSIN: strict conversion of the official layout, parameter count, rotated convolution, and the model
contract on the tiny card."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import read_manifest, synthetic_official_checkpoint
from rrsis_cli.errors import ConversionError
from rrsis_cli.models import build_model, load_model, save_model
from rrsis_cli.models.convert import convert_checkpoint
from rrsis_cli.models.rmsin import cim_tokens, stage4_size
from rrsis_cli.models.rotated_conv import AdaptiveRotatedConv2d, rotate_kernels, rotation_matrices

PROMPTS = ["the red car on the left", "a large white storage tank north of the road"]
MANIFEST = "rmsin-swin-b-w12.keys.tsv"


@pytest.fixture(scope="module")
def tiny():
    return build_model("rmsin-tiny", seed=0)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The official ``lavt_one`` layout (BERT inside as text_encoder.*), Swin-B window 12, converted once."""
    ckpt = synthetic_official_checkpoint(MANIFEST, seed=6)
    path = tmp_path_factory.mktemp("rmsin") / "rmsin_official.pth"
    torch.save(ckpt, path)
    return ckpt, convert_checkpoint("rmsin", path)


def test_official_checkpoint_converts_strictly(official):
    ckpt, model = official
    state = model.state_dict()
    assert set(state) == set(ckpt["model"])  # every official key consumed, every weight filled
    for key, value in ckpt["model"].items():
        assert torch.equal(state[key], value), key
    cfg = model.config
    assert cfg["arch"] == "rmsin" and cfg["backbone"]["window_size"] == 12
    assert cfg["cim"]["grid"] == [15, 15] and cfg["image_size"] == 480
    assert cfg["decoder"]["kernel_number"] == 1


def test_official_parameter_count_and_shapes(official):
    model = official[1]
    assert model.parameter_counts()["total"] == 240_037_163
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: s for k, s, _ in read_manifest(MANIFEST)}


def test_official_sizes_are_derived_from_the_configuration():
    assert stage4_size(480) == 15 and cim_tokens((15, 15)) == 314  # hard-coded officially
    assert stage4_size(128) == 4 and cim_tokens((4, 4)) == 16 + 4 + 4


def test_missing_and_extra_keys_raise_conversion_error(tmp_path):
    ckpt = {"model": build_model("rmsin-tiny", seed=3).state_dict()}
    ckpt["model"].pop("backbone.layers.2.visual_gate.0.weight")
    ckpt["model"]["backbone.cim.surplus.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint("rmsin", tmp_path / "bad.pth")
    text = str(err.value)
    assert "bad.pth" in text
    assert "1 official keys not consumed: backbone.cim.surplus.weight" in text
    assert "1 project weights not filled: backbone.layers.2.visual_gate.0.weight" in text


def test_tiny_official_layout_round_trips(tmp_path):
    state = build_model("rmsin-tiny", seed=4).state_dict()
    torch.save({"model": state}, tmp_path / "tiny.pth")
    model = convert_checkpoint("rmsin", tmp_path / "tiny.pth")
    assert model.config["cim"]["grid"] == [4, 4] and model.config["decoder"]["kernel_number"] == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_rotation_by_zero_is_the_identity():
    assert torch.equal(rotation_matrices(torch.zeros(2, 3)), torch.eye(9).expand(2, 3, 9, 9))
    theta = torch.tensor([[0.3, -0.3]])
    m = rotation_matrices(theta)
    assert torch.allclose(m.sum(-1), torch.ones(1, 2, 9), atol=1e-6)  # bilinear weights sum to one
    assert m[0, 0, 4, 4] == 1 and m[0, 1, 4, 4] == 1  # the centre tap is fixed


def test_adaptive_rotated_conv_is_a_per_sample_convolution():
    torch.manual_seed(0)
    conv = AdaptiveRotatedConv2d(6, 5, kernel_number=2).eval()
    x = torch.randn(3, 6, 9, 7)
    with torch.no_grad():
        out = conv(x)
        alphas, angles = conv.rounting_func(x)
        assert (angles.abs() < 40 / 180 * torch.pi).all()
        for i in range(3):
            w = rotate_kernels(conv.weight, alphas[i:i + 1], angles[i:i + 1])
            assert torch.allclose(out[i:i + 1], F.conv2d(x[i:i + 1], w, padding=1), atol=1e-5)
        same = rotate_kernels(conv.weight, torch.ones(1, 2), torch.zeros(1, 2))
    assert torch.allclose(same, conv.weight.sum(0), atol=1e-6)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (128, 128)])
def test_forward_shape(tiny, size):
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, *size), ids, mask)
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()


def test_forward_with_text_equals_forward_and_broadcasts(tiny):
    x = torch.randn(3, 3, 128, 96)
    ids, mask = tiny.tokenize(["the small grey roof"])
    with torch.no_grad():
        full = tiny(x, ids.expand(3, -1), mask.expand(3, -1))
        cached = tiny.forward_with_text(x, tiny.encode_text(ids, mask))
    assert torch.allclose(full, cached, atol=1e-6)


def test_batch_samples_are_independent(tiny):
    """Per-sample rotated kernels: a sample's output does not depend on the rest of the batch."""
    x = torch.randn(2, 3, 128, 128)
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        both = tiny(x, ids, mask)
        first = tiny(x[:1], ids[:1], mask[:1])
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_padding_invariance(tiny):
    ids, mask = tiny.tokenize(PROMPTS)
    pad = torch.zeros((2, 12), dtype=torch.long)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a = tiny(x, ids, mask)
        b = tiny(x, torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_save_load_round_trip_bit_exact(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "rmsin" and config["loss"]["type"] == "ce_dice"
    loaded = load_model(out)
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 3, 128, 128)
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        assert torch.equal(tiny(x, ids, mask), loaded(x, ids, mask))


def test_same_seed_same_weights():
    a, b, c = (build_model("rmsin-tiny", seed=s) for s in (7, 7, 8))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_official_card_loss():
    from rrsis_cli.models.registry import config_for

    cfg = config_for("rmsin-swin-b")
    assert cfg["loss"] == {"type": "ce_dice", "class_weights": [0.9, 1.1], "ce_weight": 0.9, "dice_weight": 0.1}
    assert cfg["cim"]["grid"] == [15, 15]

"""RMSIN: strict conversion of the official layout, parameter count, the CIM sizes and the rotated convolution
(the model contract: tests/test_model_contract.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import official_checkpoint, read_manifest, synthetic_official_checkpoint
from rrsis_cli.models import build_model
from rrsis_cli.models.convert import convert_checkpoint
from rrsis_cli.models.rmsin import cim_tokens, stage4_size
from rrsis_cli.models.rotated_conv import AdaptiveRotatedConv2d, rotate_kernels, rotation_matrices

MANIFEST = "rmsin-swin-b-w12.keys.tsv"


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


def test_tiny_official_layout_gives_the_cim_grid_and_kernels(tmp_path):
    """The configuration read off a converted checkpoint's shapes (the weights themselves: the contract suite)."""
    torch.save(official_checkpoint(build_model("rmsin-tiny", seed=4)), tmp_path / "tiny.pth")
    model = convert_checkpoint("rmsin", tmp_path / "tiny.pth")
    assert model.config["cim"]["grid"] == [4, 4] and model.config["decoder"]["kernel_number"] == 2


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


def test_official_card_loss():
    from rrsis_cli.models.registry import config_for

    cfg = config_for("rmsin-swin-b")
    assert cfg["loss"] == {"type": "ce_dice", "class_weights": [0.9, 1.1], "ce_weight": 0.9, "dice_weight": 0.1}
    assert cfg["cim"]["grid"] == [15, 15]

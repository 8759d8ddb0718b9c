"""BTDNet: its switches, module shapes (BSC, T-BTD, D-MOLS), the joint prediction of the
two streams, the training losses, the full configuration's size and a learned language-dependent task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import read_manifest
from rrsis_cli.models import build_model, load_model
from rrsis_cli.models.btdnet import (
    BidirectionalSpatialCorrelation,
    BSCTrace,
    DMOLSHeads,
    TwinStreamDecoder,
    bsc_contrastive_loss,
)
from rrsis_cli.models.registry import config_for
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import Trainer, TrainOptions
from synthetic import BLIND_MIOU_BOUND, make_samples

PROMPTS = ["the red car on the left", "a large white storage tank north of the road"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return build_model("btdnet-tiny", seed=0)


def _target(b: int, h: int, w: int) -> torch.Tensor:
    target = torch.zeros(b, h, w, dtype=torch.long)
    target[:, h // 4: h // 2, w // 8: w // 2] = 1
    return target


# ------------------------------------------------------------------------------------------- contract


def test_switches_change_the_computation():
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for switch in ({}, {"placement": "post"}, {"background": "query"}, {"bsc__num_heads": 2}):
        model = build_model("btdnet-tiny", seed=2, **switch)
        with torch.no_grad():
            outs.append(model(x, *model.tokenize(["the red square"])))
    assert all((outs[0] - out).abs().max() > 1e-5 for out in outs[1:])


def test_invalid_switch_values_raise():
    for bad in ({"placement": "middle"}, {"background": "nothing"}, {"spatial_pool": "min"}, {"dmols__loss": "l1"}):
        with pytest.raises(ValueError, match="must be one of"):
            build_model("btdnet-tiny", **bad)
    with pytest.raises(ValueError, match="dmols.level"):
        build_model("btdnet-tiny", level=5)
    with pytest.raises(ValueError, match="bsc.num_heads"):
        build_model("btdnet-tiny", bsc__num_heads=3)  # does not divide the 16-wide first level


def test_bsc_heads_and_the_dmols_loss_form_are_card_switches():
    """bsc.num_heads and dmols.loss are read from the configuration (and named in every card); one head is the
    single cosine correlation; the l2 form gives other reconstruction terms than 1 - cosine."""
    for card in ("btdnet-swin-b", "btdnet-tiny"):
        cfg = config_for(card)
        assert cfg["bsc"]["num_heads"] == 1 and cfg["dmols"]["loss"] == "cosine", card
        assert cfg["aux_losses"]["reconstruction"] == 0.1 and cfg["dmols"]["level"] == 3, card
        assert cfg["decoder"]["background"] == "complement", card
    heads = build_model("btdnet-tiny", seed=0, bsc__num_heads=4)
    assert all(stage.bsc.num_heads == 4 for stage in heads.backbone.layers)
    x = torch.randn(2, 3, 64, 64)
    ids, mask = heads.tokenize(PROMPTS)
    target = _target(2, 64, 64)
    cosine = _losses(build_model("btdnet-tiny", seed=0).train(), x, ids, mask, target)
    l2 = _losses(build_model("btdnet-tiny", seed=0, dmols__loss="l2").train(), x, ids, mask, target)
    assert torch.equal(cosine["target_dice"], l2["target_dice"])  # same model, same pass
    assert not torch.allclose(cosine["dmols_vision"], l2["dmols_vision"])
    assert torch.isfinite(l2["dmols_vision"]) and l2["dmols_text"] > 0


# ------------------------------------------------------------------------------------------- modules

def test_bsc_shapes_and_padded_words_are_ignored():
    torch.manual_seed(0)
    bsc = BidirectionalSpatialCorrelation(24, 32, dim=16)
    x, words = torch.randn(2, 12, 24), torch.randn(2, 5, 32)
    mask = torch.ones(2, 5, 1)
    mask[1, 3:] = 0
    x2, c, words2, trace = bsc(x, words, mask)
    assert x2.shape == (2, 12, 24) and c.shape == (2, 12, 1) and words2.shape == (2, 5, 32)
    assert trace.visual.shape == (2, 12, 16) and trace.sentence.shape == (2, 16)
    assert ((c > 0) & (c < 1)).all()
    assert torch.allclose(trace.visual.norm(dim=-1), torch.ones(2, 12), atol=1e-5)
    noisy = words.clone()
    noisy[1, 3:] = 100 * torch.randn(2, 32)  # different padded-word features
    y2, d, noisy2, _ = bsc(x, noisy, mask)
    assert torch.allclose(x2, y2, atol=1e-6) and torch.allclose(c, d, atol=1e-6)
    assert torch.allclose(words2[:, :3], noisy2[:, :3], atol=1e-6)
    assert not torch.allclose(words2, words)  # language <- vision: the words are updated


def test_bsc_text_update_switch():
    bsc = BidirectionalSpatialCorrelation(8, 8, update_text=False)
    words = torch.randn(1, 4, 8)
    assert torch.equal(bsc(torch.randn(1, 6, 8), words, torch.ones(1, 4, 1))[2], words)


@pytest.mark.parametrize("mode", ["complement", "query"])
def test_twin_stream_decoder_shapes(mode):
    channels = (8, 16, 32, 64)
    decoder = TwinStreamDecoder(channels, 32, {"hidden": 12, "background": mode}).eval()
    feats = [torch.randn(2, c, 32 // 2 ** i, 24 // 2 ** i) for i, c in enumerate(channels)]
    maps = [torch.rand(2, 1, 32 // 2 ** i, 24 // 2 ** i) for i in range(4)]
    with torch.no_grad():
        z_b, z_t = decoder(feats, maps, torch.randn(2, 32))
    assert z_b.shape == z_t.shape == (2, 1, 32, 24)
    assert not torch.allclose(z_b, z_t)
    t_in, b_in = decoder.stream_inputs(feats, maps)
    assert torch.allclose(t_in[0], feats[0] * (1 + maps[0]))
    if mode == "complement":  # the background stream weights the features by the complement of the map
        assert torch.allclose(b_in[0], feats[0] * (1 + (1 - maps[0])))


def test_dmols_head_shapes():
    heads = DMOLSHeads(48, 32, hidden=20)
    vis, txt = heads(torch.randn(3, 48))
    assert vis.shape == (3, 48) and txt.shape == (3, 32)


def test_bsc_contrastive_loss_prefers_an_aligned_target():
    """Lower when the sentence matches the target pixels than when it matches the background."""
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, :8, :8] = 1
    fg, bg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    grid = target[0].bool().flatten()
    visual = torch.where(grid[:, None], fg, bg)[None]  # (1, 256, 2)

    def loss(sentence):
        return float(bsc_contrastive_loss([BSCTrace(visual, sentence[None], torch.tensor(10.0), (16, 16))], target))

    assert loss(fg) < 0.01 < 5 < loss(bg)
    empty = torch.zeros(1, 16, 16, dtype=torch.long)  # no target: no term (0, not NaN)
    assert float(bsc_contrastive_loss([BSCTrace(visual, fg[None], torch.tensor(10.0), (16, 16))], empty)) == 0.0


def test_dmols_masking(tiny):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 96) + 5
    ids, mask = tiny.tokenize(["the red square next to the large blue square near the grey road"] * 4)
    pixels, masked_ids = tiny.mask_inputs(x, ids, mask)
    zeroed = (pixels == 0).all(1)  # (B, H, W)
    blocks = zeroed.reshape(4, 4, 16, 6, 16).float().mean((2, 4))
    assert set(blocks.unique().tolist()) <= {0.0, 1.0}  # whole 16 px patches
    assert 0.1 < float(blocks.mean()) < 0.5  # about 30 %
    changed = masked_ids != ids
    assert (masked_ids[changed] == 103).all() and changed.any()
    assert not changed[:, 0].any() and not changed[mask == 0].any()  # [CLS] and padding untouched
    n = int(mask[0].sum())
    assert not changed[:, n - 1].any()  # [SEP]


# ------------------------------------------------------------------------------------ joint prediction

def test_joint_logits_are_the_two_streams_as_a_product_of_experts(tiny):
    """Channel 0 is the background stream, channel 1 the target stream; the softmax of the pair equals the
    product of the streams' beliefs a (1 - b) / (a (1 - b) + b (1 - a)), so the two probabilities sum to one and
    each stream's vote counts symmetrically."""
    x = torch.randn(2, 3, 64, 64)
    ids, mask = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        out = tiny.run(x, tiny.encode_text(ids, mask))
        logits = tiny(x, ids, mask)
    assert torch.equal(logits[:, :1], out.z_b) and torch.equal(logits[:, 1:], out.z_t)
    a, b = torch.sigmoid(out.z_t.double()), torch.sigmoid(out.z_b.double())
    expert = a * (1 - b) / (a * (1 - b) + b * (1 - a))
    prob = logits.double().softmax(1)
    assert torch.allclose(prob[:, 1:], expert, atol=1e-9)
    assert torch.allclose(prob.sum(1), torch.ones_like(prob[:, 0]), atol=1e-12)


# ------------------------------------------------------------------------------------------ training

def _losses(model, x, ids, mask, target, seed=0):
    torch.manual_seed(seed)  # same D-MOLS masks
    return model.training_losses(x, ids, mask, target)


def test_training_losses_are_finite_weighted_and_follow_the_target():
    model = build_model("btdnet-tiny", seed=0).train()
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    target = _target(2, 64, 64)
    terms = _losses(model, x, ids, mask, target)
    names = {"target_dice", "background_dice", "bsc_contrastive", "dmols_vision", "dmols_text"}
    assert set(terms) == {"logits"} | names
    assert terms["logits"].shape == (2, 2, 64, 64)
    assert all(torch.isfinite(terms[k]) and terms[k].ndim == 0 and terms[k] > 0 for k in names)
    doubled = build_model("btdnet-tiny", seed=0, aux_losses={k: 2 * v for k, v in model.aux_weights.items()})
    twice = _losses(doubled.train(), x, ids, mask, target)
    for k in names:
        assert torch.allclose(twice[k], 2 * terms[k], rtol=1e-4), k
    other = _losses(model, x, ids, mask, torch.flip(target, dims=(1, 2)))
    for k in names:
        assert not torch.allclose(other[k], terms[k]), k
    assert torch.equal(_losses(model, x, ids, mask, target)["dmols_text"], terms["dmols_text"])
    off = {"target_dice": 0.0, "background_dice": 0.0, "bsc_contrastive": 0.0, "reconstruction": 0.0}
    none = build_model("btdnet-tiny", seed=0, aux_losses=off).eval()
    only = none.training_losses(x, ids, mask, target)
    assert set(only) == {"logits"}
    with torch.no_grad():
        assert torch.allclose(only["logits"], none(x, ids, mask), atol=1e-6)


def test_gradients_reach_the_reconstruction_heads_and_forward_does_not_use_them():
    model = build_model("btdnet-tiny", seed=0).train()
    x = torch.randn(2, 3, 64, 64)
    ids, mask = model.tokenize(PROMPTS)
    terms = _losses(model, x, ids, mask, _target(2, 64, 64))
    (terms["dmols_vision"] + terms["dmols_text"]).backward()
    for name, p in model.dmols.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.backbone.layers[2].bsc.vis_proj.weight.grad.abs().sum() > 0  # the masked pass trains the encoder
    assert model.decoder.target.conv1_1.weight.grad is None  # the decoder is not part of D-MOLS
    model.eval()
    with torch.no_grad():
        before = model(x, ids, mask)
        for p in model.dmols.parameters():
            p.add_(torch.randn_like(p))
        assert torch.equal(model(x, ids, mask), before)
    assert model.inference_parameter_count() == model.parameter_counts()["total"] - sum(
        p.numel() for p in model.dmols.parameters())


def test_full_configuration_parameter_count_and_swin_keys():
    """btdnet-swin-b: recorded parameter counts, and Swin weights laid out like the official Swin-B (window 12),
    so ``--backbone-weights`` loads an ImageNet release."""
    model = build_model("btdnet-swin-b")
    counts = model.parameter_counts()
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("text_encoder", "backbone", "decoder", "dmols")}
    bsc = sum(p.numel() for stage in model.backbone.layers for p in stage.bsc.parameters())
    assert counts["text_encoder"] == parts["text_encoder"] == 108_891_648
    assert counts["total"] == sum(parts.values())
    assert (parts["backbone"], bsc, parts["decoder"], parts["dmols"]) == (
        92_623_612, 5_743_236, 17_114_632, 1_181_952)
    assert counts["total"] == 219_811_844 and model.inference_parameter_count() == 218_629_892
    ours = {k.removeprefix("backbone."): tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith("backbone.") and (".blocks." in k or ".downsample." in k or "patch_embed." in k)}
    official = {k.removeprefix("backbone."): s for k, s, _ in read_manifest("lavt-swin-b-w12.keys.tsv")
                if k.startswith("backbone.") and (".blocks." in k or ".downsample." in k or "patch_embed." in k)}
    assert ours == official


# ------------------------------------------------------------------------------------------ learning

def _wrap(model, samples):
    cfg = model.config
    return ReferringTrainSet(samples, lambda s: s, 64, cfg["mean"], cfg["std"], model.tokenizer,
                             int(cfg["max_tokens"]))


def _miou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).mean())


def test_tiny_btdnet_learns_a_language_dependent_task_with_dmols(tmp_path):
    """Red/blue squares (synthetic.py): an expression-blind model scores at most mIoU 0.5. Trained through the
    Trainer (joint CE + stream Dice + contrastive + D-MOLS); measured: mIoU about 0.88 after 5 epochs."""
    model = build_model("btdnet-tiny", seed=0)
    calls = []
    original = model.reconstruction_losses

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.reconstruction_losses = counted
    val = _wrap(model, make_samples(24, seed=1))
    opts = TrainOptions(out_dir=tmp_path / "run", epochs=5, batch_size=8, lr=1e-3, loss=model.config["loss"])
    result = Trainer(model, _wrap(model, make_samples(128, seed=0)), val, opts).run()
    final = result["history"][-1]
    assert len(calls) == result["step"] == 160  # D-MOLS ran at every step
    assert final["mIoU"] > BLIND_MIOU_BOUND + 0.3, final
    assert final["oIoU"] > 0.75, final
    # The two streams learned complementary masks: each alone solves the task, and they agree.
    batch = {k: torch.stack([val[i][k] for i in range(len(val))]) for k in ("pixel_values", "input_ids",
                                                                           "attention_mask", "mask")}
    model.eval()
    with torch.no_grad():
        out = model.run(batch["pixel_values"], model.encode_text(batch["input_ids"], batch["attention_mask"]))
    gt = batch["mask"].bool()
    target_alone, background_alone = out.z_t[:, 0] > 0, out.z_b[:, 0] < 0
    assert _miou(target_alone, gt) > BLIND_MIOU_BOUND + 0.25
    assert _miou(background_alone, gt) > BLIND_MIOU_BOUND + 0.25
    assert float((target_alone == background_alone).float().mean()) > 0.95


def test_btdnet_trains_through_the_registry(tmp_path):
    """Two Trainer steps on the tiny card with the card's losses; the checkpoint loads and the D-MOLS heads moved."""
    model = build_model("btdnet-tiny", seed=0)
    cfg = model.config
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = TrainOptions(out_dir=tmp_path / "btd", epochs=1, batch_size=4, lr=1e-3, loss=cfg.get("loss"))
    result = Trainer(model, _wrap(model, make_samples(4, seed=0)), _wrap(model, make_samples(2, seed=1)), opts).run()
    assert result["step"] == 2 and np.isfinite(result["history"][-1]["train_loss"])
    trained = load_model(tmp_path / "btd" / "last")
    assert trained.arch == "btdnet"
    state = trained.state_dict()
    assert any(not torch.equal(before[k], state[k]) for k in state if k.startswith("dmols."))
    assert any(not torch.equal(before[k], state[k]) for k in state if k.startswith("decoder.background."))


def test_backbone_loads_a_swin_release(tmp_path):
    """``models init --backbone-weights``: the Swin part takes an official-layout ImageNet release."""
    from rrsis_cli.models.init import init_model

    source = build_model("btdnet-tiny", seed=5)
    release = {k.removeprefix("backbone."): v for k, v in source.state_dict().items()
               if k.startswith("backbone.") and ".bsc." not in k and not k.startswith("backbone.norm")}
    release["head.weight"] = torch.zeros(10, 128)
    torch.save({"model": release}, tmp_path / "swin.pth")
    model = init_model("btdnet-tiny", backbone_weights=tmp_path / "swin.pth", seed=0)
    state = model.state_dict()
    assert torch.equal(state["backbone.layers.2.blocks.1.attn.qkv.weight"],
                       source.state_dict()["backbone.layers.2.blocks.1.attn.qkv.weight"])
    assert not torch.equal(state["backbone.layers.2.bsc.vis_proj.weight"],
                           source.state_dict()["backbone.layers.2.bsc.vis_proj.weight"])

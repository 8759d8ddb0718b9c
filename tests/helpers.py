"""Shared test helpers: synthetic official-layout checkpoints from the key manifests."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from rrsis_cli.models.swin import relative_position_index

REFERENCE = Path(__file__).parent / "data" / "reference"


def read_manifest(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (REFERENCE / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").replace(" ", "").split(",") if d)
        rows.append((key, dims, dtype))
    return rows


def synthetic_tensor(key: str, shape: tuple[int, ...], dtype: str, gen: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        if key.endswith("relative_position_index"):
            return relative_position_index(math.isqrt(shape[0]))
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    return torch.randn(shape, generator=gen) * 0.02


def synthetic_official_checkpoint(manifest: str, seed: int = 0) -> dict:
    """``{'model': ..., ['bert_model': ...], 'args': ..., 'epoch': ...}`` with random tensors of the listed shapes."""
    gen = torch.Generator().manual_seed(seed)
    model, bert = {}, {}
    for key, shape, dtype in read_manifest(manifest):
        target, name = (bert, key[len("bert_model/"):]) if key.startswith("bert_model/") else (model, key)
        target[name] = synthetic_tensor(name, shape, dtype, gen)
    ckpt = {"model": model, "epoch": 39, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(swin_type="base", window12=True, lr=5e-5)}
    if bert:
        ckpt["bert_model"] = bert
    return ckpt


def official_checkpoint(model, layout: str | None = None) -> dict:
    """``model``'s weights as its official training code saves them (``model.official_layout``, or ``layout``):
    ``{'model': ..., 'bert_model': ...}`` with BERT outside, ``{'model': ...}`` with ``text_encoder.*`` inside."""
    state = model.state_dict()
    if (layout or model.official_layout) == "text_encoder":
        return {"model": state}
    prefix = "text_encoder."
    return {"model": {k: v for k, v in state.items() if not k.startswith(prefix)},
            "bert_model": {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}}


def pair_dir(out: str | Path, scene: str | Path, prompt: str, manifest: str = "manifest.json") -> Path:
    """The output directory of (scene, prompt), looked up in the run's manifest as a user would."""
    import json

    results = json.loads((Path(out) / manifest).read_text())["results"]
    found = [r["output_dir"] for r in results if Path(r["scene"]) == Path(scene) and r["prompt"] == prompt]
    assert len(found) == 1, f"{scene} / {prompt!r}: {len(found)} results in {out}/{manifest}"
    return Path(out) / found[0]

"""Reading checkpoints released by other code: official Swin ImageNet releases and official LAVT-family models.

Files are read with ``torch.load(..., weights_only=True)``; the ``args`` entry of official training checkpoints is
an ``argparse.Namespace``, which is the only extra class allowed.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rrsis_cli.errors import ConversionError, ModelError
from rrsis_cli.models.base import ReferringSegmenter


def load_torch_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (plus ``argparse.Namespace``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("checkpoint file not found", path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise ModelError(f"refused to load (weights_only=True): {first}", path) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ModelError(f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(obj, dict):
        raise ModelError(f"expected a dict checkpoint, got {type(obj).__name__}", path)
    return obj


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """Bicubic resize of a (2w'-1)^2 x heads relative-position table to window ``window``."""
    old = int(math.isqrt(table.shape[0]))
    new = 2 * window - 1
    if old == new:
        return table
    grid = table.T.reshape(1, table.shape[1], old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new * new).T.contiguous()


SWIN_RELEASE_IGNORED = ("head.", "norm.", "absolute_pos_embed")


def load_swin_release(model: ReferringSegmenter, path: str | Path) -> dict[str, list[str]]:
    """Copy an official Swin ImageNet release (``{'model': {patch_embed.*, layers.N.blocks.M.*, ...}}``) into
    ``model.backbone``. The classification head and final norm are ignored; relative-position tables of another
    window size are resized bicubically; ``attn_mask`` buffers are skipped. Every backbone Swin weight
    (patch embedding, blocks, patch merging) must be found, else a :class:`ConversionError` lists the gaps.
    A backbone with ``type: convnext`` (CroBIM) takes an official ConvNeXt release the same way: every
    ``downsample_layers.*`` and ``stages.*`` weight must be found.
    """
    ckpt = load_torch_checkpoint(path)
    state = ckpt.get("model", ckpt.get("state_dict", ckpt))
    own = model.backbone.state_dict()
    backbone_cfg = model.config["backbone"]
    if backbone_cfg.get("type", "swin") == "convnext":
        targets = {k for k in own if k.startswith(("downsample_layers.", "stages."))}
    else:
        targets = {k for k in own if k.startswith("patch_embed.") or ".blocks." in k or ".downsample." in k}
    window = int(backbone_cfg.get("window_size", 0))
    loaded, ignored, mismatched = [], [], []
    new_state = {}
    for key, value in state.items():
        if key.startswith(SWIN_RELEASE_IGNORED) or key.endswith("attn_mask"):
            ignored.append(key)
            continue
        if key not in own:
            ignored.append(key)
            continue
        if key.endswith("relative_position_bias_table"):
            value = resize_bias_table(value, window)
        if key.endswith("relative_position_index"):
            ignored.append(key)  # recomputed for our window size
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            mismatched.append(f"{key} {tuple(value.shape)}!={tuple(own[key].shape)}")
            continue
        new_state[key] = value
        loaded.append(key)
    missing = sorted(k for k in targets - set(loaded) if not k.endswith("relative_position_index"))
    if missing or mismatched:
        raise ConversionError(
            f"Swin checkpoint does not fit the {model.config.get('name')} backbone: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3])}); "
            f"{len(mismatched)} shape mismatches (e.g. {', '.join(mismatched[:3])})", path)
    model.backbone.load_state_dict(new_state, strict=False)
    return {"loaded": loaded, "ignored": ignored}

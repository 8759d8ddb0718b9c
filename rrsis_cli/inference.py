"""Running a model on batches: device choice, precision (autocast) rules, inference mode, the batched forward.

One place for what predict, scene grounding and bench (and evaluation) need:

* ``pick_device("auto")`` is the first CUDA device when there is one, else the CPU.
* ``resolve_precision("auto", device)`` is bf16 autocast on CUDA (the GPU default: tensor cores, no loss
  scaling) and fp32 on the CPU (autocast there is slower than fp32 and changes results); an explicit
  ``fp16``/``bf16`` only applies on CUDA.
* :func:`prepare_model` puts a model in eval mode on its device, channels-last on CUDA (the layout convolutions
  and cuDNN prefer), TF32 matmuls allowed, and compiles it with ``torch.compile`` when asked (falling back to
  eager with a warning when compilation fails).
* :func:`foreground_probability` runs one batch and returns the foreground probability, as float32 on the CPU
  (and as float16 from CUDA, halving the device→host copy; blending is done on the host in float32).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from rrsis_cli import console
from rrsis_cli.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: ``auto`` is bf16 on CUDA and fp32 elsewhere; reduced precision applies on
    CUDA only."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        return "fp32"
    return "bf16" if precision == "auto" else precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    if precision in AUTOCAST_DTYPES and device.type == "cuda":
        return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def prepare_model(model, device: torch.device, compile_model: bool = False):
    """Eval mode on ``device``; on CUDA channels-last and TF32; ``torch.compile`` when asked (eager when it
    fails)."""
    model.eval()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        model.to(memory_format=torch.channels_last)
    if compile_model:
        try:
            model.forward_with_text = torch.compile(model.forward_with_text)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds; eager always works
            console.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly")
    return model


def normalise_on_device(tiles: torch.Tensor, config: dict) -> torch.Tensor:
    """(B, 3, H, W) tiles in [0, 1] -> the model's normalised input, on the tiles' device."""
    mean = torch.tensor(config["mean"], device=tiles.device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=tiles.device).view(1, 3, 1, 1)
    return (tiles - mean) / std


def foreground_probability(model, text, tiles: list[np.ndarray] | np.ndarray, device: torch.device,
                           precision: str) -> np.ndarray:
    """Foreground probability (B, H, W) float32 of a batch of (3, H, W) tiles in [0, 1] (numpy, host)."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles) if isinstance(tiles, list) else tiles))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    x = normalise_on_device(batch, model.config)
    with torch.inference_mode(), autocast(device, precision):
        logits = model.forward_with_text(x, text)
    prob = logits.float().softmax(1)[:, 1]
    if device.type == "cuda":
        return prob.half().cpu().numpy().astype(np.float32)
    return prob.numpy()


def infer(model, text, tiles: list[np.ndarray], device: torch.device, precision: str) -> np.ndarray:
    """Foreground probability (B, H, W) of tiles in [0, 1] with ``precision`` resolved for ``device``
    (``auto``: bf16 on CUDA, fp32 on the CPU)."""
    return foreground_probability(model, text, tiles, device, resolve_precision(precision, device))


def forward_logits(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   device: torch.device, precision: str) -> torch.Tensor:
    """(B, 2, H, W) float32 logits on the CPU of a normalised batch, each sample with its own expression (the full
    forward: evaluation and training's validation). ``precision`` as :func:`resolve_precision` returns it."""
    with torch.inference_mode(), autocast(device, precision):
        logits = model(pixel_values.to(device), input_ids.to(device), attention_mask.to(device))
    return logits.float().cpu()

"""Running a model on batches: device choice, precision (autocast) rules, inference mode, the batched forward.

One place for what predict, scene grounding and bench (and evaluation) need:

* ``pick_device("auto")`` is the first CUDA device when there is one, else the CPU.
* ``resolve_precision("auto", device)`` is bf16 autocast on CUDA (the GPU default: tensor cores, no loss
  scaling) and fp32 on the CPU (autocast there is slower than fp32 and changes results); an explicit
  ``fp16``/``bf16`` only applies on CUDA.
* :func:`prepare_model` puts a model in eval mode on its device, channels-last on CUDA (the layout convolutions
  and cuDNN prefer), TF32 matmuls allowed, and compiles it with ``torch.compile`` when asked (falling back to
  eager with a warning when compilation fails).
* :class:`BatchNormaliser` turns a batch of raw tiles (the scene's dtype) into the model's input on the device,
  and :func:`forward_probability` runs it (predict's tile pipeline).
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


# torch's uint16/uint32 are "shell" dtypes with few kernels on accelerators: they travel as the signed type of the
# same width (a free view) and are widened on the device, where the mask restores the unsigned value exactly.
WIDER = {torch.uint16: (torch.int16, torch.int32, 0xFFFF), torch.uint32: (torch.int32, torch.int64, 0xFFFFFFFF)}


def unsigned_to_float(x: torch.Tensor, raw_dtype: torch.dtype) -> torch.Tensor:
    """``x`` (on any device; for uint16/uint32 tiles the signed view of the raw values) as float32 values of the
    raw dtype: a uint16 65535 that travelled as int16 -1 is 65535.0 again."""
    if raw_dtype not in WIDER:
        return x.float()
    _, wide, mask = WIDER[raw_dtype]
    return x.to(wide).bitwise_and_(mask).float()


class BatchNormaliser:
    """Raw tiles -> the model's input, for a whole batch in one pass on the device.

    A batch arrives as (B, C, H, W) in the scene's own dtype (uint8, uint16, ...: a quarter of float32's bytes
    for uint8 to copy to the device). On the device it becomes exactly what :meth:`SceneReader.normalise
    <rrsis_cli.scene.SceneReader.normalise>` followed by :func:`normalise_on_device` give, with the same float32
    operations in the same order: ``clip(x, lo, hi)``, ``- lo``, ``/ (hi - lo)``, NaN → 0, one band repeated to
    three, ``- mean``, ``/ std``. Steps that are the identity to the bit are skipped (the clip of a uint8 scene to
    0..255, ``- 0``, ``- 0`` and ``/ 1`` of a card with mean 0 and std 1). On the CPU the float batch is one
    buffer reused from batch to batch (no page faults for a fresh 25 MB array per batch); it is valid until the
    next call."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, dtype: np.dtype, config: dict, device: torch.device):
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        self.device = device
        self.channels = len(lo)
        dtype = np.dtype(dtype)
        whole_range = dtype.kind in "ui" and bool(np.all(lo <= np.iinfo(dtype).min)
                                                  and np.all(hi >= np.iinfo(dtype).max))
        self.clip = not whole_range
        self.nan = dtype.kind == "f"
        self.lo = self._column(lo) if self.clip or np.any(lo != 0) else None
        self.hi = self._column(hi)
        self.span = self._column(hi - lo)
        mean, std = (np.asarray(config[k], np.float32) for k in ("mean", "std"))
        self.mean = None if np.all(mean == 0) else self._column(mean, 3)
        self.std = None if np.all(std == 1) else self._column(std, 3)
        self._buffer: torch.Tensor | None = None

    def _column(self, values: np.ndarray, channels: int | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, np.float32)).view(1, channels or self.channels, 1, 1) \
            .to(self.device)

    def _float(self, raw: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            return unsigned_to_float(raw.to(self.device, non_blocking=True) if raw.dtype not in WIDER else
                                     raw.view(WIDER[raw.dtype][0]).to(self.device, non_blocking=True), raw.dtype)
        if self._buffer is None or self._buffer.shape != raw.shape:
            self._buffer = torch.empty(raw.shape, dtype=torch.float32)
        return self._buffer.copy_(raw)

    def __call__(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw values (numpy or a pinned tensor) -> (B, 3, H, W) float32 model input on the device."""
        x = self._float(torch.as_tensor(raw))
        if self.clip:
            torch.clamp(x, self.lo, self.hi, out=x)
        if self.lo is not None:
            x.sub_(self.lo)
        x.div_(self.span)
        if self.nan:
            torch.nan_to_num(x, nan=0.0, out=x)
        x = x[:, :1].expand(-1, 3, -1, -1).contiguous() if self.channels < 3 else x[:, :3]
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def forward_probability(model, text, x: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    """Foreground probability (B, H, W) of a normalised batch on the device, back on the host: float32 from the
    CPU (a view of the softmax, no copy), float16 from CUDA (half the device→host bytes) widened to float32."""
    with torch.inference_mode(), autocast(device, precision):
        logits = model.forward_with_text(x, text)
    prob = logits.float().softmax(1)[:, 1]
    if device.type == "cuda":
        return prob.half().cpu().numpy().astype(np.float32)
    return prob.numpy()


def foreground_probability(model, text, tiles: list[np.ndarray] | np.ndarray, device: torch.device,
                           precision: str) -> np.ndarray:
    """Foreground probability (B, H, W) float32 of a batch of (3, H, W) tiles in [0, 1] (numpy, host)."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(tiles) if isinstance(tiles, list) else tiles))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    x = normalise_on_device(batch, model.config)
    return forward_probability(model, text, x, device, precision)


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

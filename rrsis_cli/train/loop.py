"""The training loop: AdamW + poly schedule, AMP, gradient accumulation/clipping, DDP, exact resume.

Layout of ``OUT``::

    OUT/last/            model directory of the latest step + training_state.pt (optimizer, step, epoch,
                         position in the epoch, RNG states, best score; plain tensors, weights_only loadable)
    OUT/best/            model directory with the best validation score (``best_metric``)
    OUT/metrics.csv      one row per validation (epoch, step, train loss, lr, oIoU, mIoU, Pr@X, seconds)
    OUT/curves.png       loss and validation curves
    OUT/train_config.json  the resolved options

Global batch = ``batch_size`` x world size x ``grad_accum``. The learning rate is used as given (recipes state
theirs for their global batch); ``scale_lr=True`` scales it linearly with global batch / recipe batch.

Device and precision follow :mod:`rrsis_cli.inference`, as in predict and evaluate: ``auto`` is the GPU when
there is one; ``bf16``/``fp16`` autocast applies on CUDA only (the CPU trains in fp32), fp16 with loss scaling.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import random
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from rrsis_cli import console, inference
from rrsis_cli.errors import OutputError, RrsisError, UsageError
from rrsis_cli.metrics import summarize_iu
from rrsis_cli.models.base import ReferringSegmenter
from rrsis_cli.models.io import save_model
from rrsis_cli.train.data import EpochSampler, ReferringTrainSet
from rrsis_cli.train.losses import segmentation_loss
from rrsis_cli.train.schedule import parameter_groups, poly_lr_factor

STATE_FILE = "training_state.pt"


@dataclass
class TrainOptions:
    out_dir: Path
    epochs: int = 40
    max_steps: int | None = None
    limit_batches: int | None = None
    val_limit_batches: int | None = None
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.01
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_accum: int = 1
    clip_grad: float | None = None
    precision: str = "fp32"
    device: str = "auto"
    compile: bool = False
    seed: int = 0
    text_layers: int | None = None
    text_dropout: bool = True  # False: the text encoder runs in eval mode (LAVT/LGCE: BERT outside the model)
    amsgrad: bool = False
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP, as the official scripts (CUDA only)
    occlusion_prob: float = 0.0  # share of training refs in RMSIN's fixed occluded subset (0.2 officially)
    occlusion: dict = field(default_factory=dict)  # box parameters over rrsis_cli.train.data.OFFICIAL_OCCLUSION
    occlusion_seed: int | None = None  # seed of the subset draw (default: seed)
    loss: dict = field(default_factory=lambda: {"type": "weighted_ce", "class_weights": [0.9, 1.1]})
    best_metric: str = "mIoU"
    num_workers: int = 0
    resume: bool = False
    scale_lr: bool = False
    recipe_batch: int = 8
    overwrite: bool = False


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created_group: bool = False  # init_distributed created the process group: leave_distributed destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), created)


def leave_distributed(info: DistInfo) -> None:
    """Destroy the process group :func:`init_distributed` created (a group the caller created is left alone).

    Called on success and on error, while the interpreter is fully alive. Left to the interpreter's exit, a gloo
    worker thread that was still releasing the last collective's tensors needed the GIL after finalization had
    begun, and the finalizing interpreter ended that thread: "terminate called without an active exception",
    SIGABRT, a failed torchrun job although training had finished. Destroying the group joins its worker threads
    first (with the GIL released, so they can finish). No barrier: nothing collective follows the last
    validation, gloo's destroy is local, and on the error path a barrier would wait for the rank that failed.
    The caller must drop its own references to the group first (the DDP wrapper): the group's threads are
    joined only when its last reference goes."""
    if info.created_group and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(spec: str, info: DistInfo) -> torch.device:
    """:func:`rrsis_cli.inference.pick_device`, with ``cuda`` meaning this process's GPU under multi-GPU DDP."""
    if spec in ("auto", "cuda") and info.world > 1 and torch.cuda.is_available():
        spec = f"cuda:{info.local_rank}"
    return inference.pick_device(spec)


def sync_batchnorm(model: ReferringSegmenter, info: DistInfo, device: torch.device,
                   enabled: bool = True) -> ReferringSegmenter:
    """BatchNorm -> SyncBatchNorm when several CUDA processes train (the official scripts convert the model
    always; with one process that is plain BatchNorm). SyncBatchNorm does not run on CPU, so gloo runs keep
    per-process statistics. State-dict keys are unchanged."""
    if enabled and info.world > 1 and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG as plain tensors (loadable with ``torch.load(weights_only=True)``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
             "python_state": torch.tensor(py_state, dtype=torch.int64),
             "python_extra": torch.tensor([version, math.nan if gauss is None else gauss], dtype=torch.float64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    version, gauss = state["python_extra"].tolist()
    random.setstate((int(version), tuple(state["python_state"].tolist()), None if math.isnan(gauss) else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class LossStep(torch.nn.Module):
    """Forward + loss as one module, so DDP/compile wrap the whole step. A model may define
    ``training_losses(pixel_values, input_ids, attention_mask, target) -> {"logits": ..., name: scalar, ...}``
    to add auxiliary terms (already weighted) to the card's segmentation loss."""

    def __init__(self, model: ReferringSegmenter, loss_spec: dict):
        super().__init__()
        self.model = model
        self.loss_spec = loss_spec

    def forward(self, pixels, ids, attn, target):
        hook = getattr(self.model, "training_losses", None)
        extra: dict[str, torch.Tensor] = {}
        if hook is not None:
            extra = dict(hook(pixels, ids, attn, target))
            logits = extra.pop("logits")
        else:
            logits = self.model(pixels, ids, attn)
        loss = segmentation_loss(logits.float(), target, self.loss_spec)
        for value in extra.values():
            loss = loss + value.float()
        return loss


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def validate(model: ReferringSegmenter, loader: DataLoader, device: torch.device, precision: str,
             limit: int | None, info: DistInfo) -> dict[str, float]:
    """Official protocol at the training input size: argmax, IoU 0 on empty union, Pr@X with >=. ``precision`` is
    resolved (:func:`rrsis_cli.inference.resolve_precision`)."""
    model.eval()
    inters, unions = [], []
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        logits = inference.forward_logits(model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                          device, precision)
        pred = logits.argmax(1).bool()
        gt = batch["mask"].bool()
        inters.append((pred & gt).flatten(1).sum(1))
        unions.append((pred | gt).flatten(1).sum(1))
    inter = torch.cat(inters) if inters else torch.zeros(0, dtype=torch.long)
    union = torch.cat(unions) if unions else torch.zeros(0, dtype=torch.long)
    if info.world > 1:
        inter, union = _gather(inter, info), _gather(union, info)
    return summarize_iu(inter.numpy(), union.numpy())


def _gather(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(info.world)]
    dist.all_gather(sizes, torch.tensor([values.numel()]))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype)
    padded[: values.numel()] = values
    out = [torch.zeros(longest, dtype=values.dtype) for _ in range(info.world)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes, strict=True)])


class Trainer:
    """Runs one training job; see the module docstring for what it writes."""

    def __init__(self, model: ReferringSegmenter, train_set: ReferringTrainSet, val_set: ReferringTrainSet | None,
                 options: TrainOptions):
        self.options = options
        self.info = init_distributed("cuda" if options.device.startswith("cuda") or
                                     (options.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.ddp: weakref.ref | None = None  # the DDP wrapper, while it lives
        try:
            self.build(model, train_set, val_set)
        except BaseException:
            self.leave_process_group()
            raise

    def build(self, model: ReferringSegmenter, train_set: ReferringTrainSet,
              val_set: ReferringTrainSet | None) -> None:
        options = self.options
        self.device = pick_device(options.device, self.info)
        self.precision = inference.resolve_precision(options.precision, self.device)  # reduced on CUDA only
        self.model = sync_batchnorm(model, self.info, self.device, options.sync_bn).to(self.device).train()
        self.train_set, self.val_set = train_set, val_set
        self.out = Path(options.out_dir)
        world_batch = options.batch_size * self.info.world * options.grad_accum
        self.lr = options.lr * (world_batch / options.recipe_batch if options.scale_lr else 1.0)
        self.sampler = EpochSampler(len(train_set), options.seed, self.info.rank, self.info.world)
        self.batches_per_epoch = len(self.sampler) // options.batch_size
        if options.limit_batches is not None:
            self.batches_per_epoch = min(self.batches_per_epoch, options.limit_batches)
        if self.batches_per_epoch == 0:
            raise UsageError(f"the training split has {len(train_set)} samples: fewer than one batch of "
                             f"{options.batch_size} per process")
        self.steps_per_epoch = max(1, self.batches_per_epoch // options.grad_accum)
        self.total_steps = self.steps_per_epoch * options.epochs
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, options.weight_decay, options.text_layers),
                                           lr=self.lr, weight_decay=options.weight_decay, amsgrad=options.amsgrad)
        self.text_frozen = not any(p.requires_grad for p in self.model.text_encoder.parameters())
        self.train_mode()
        self.scaler = torch.amp.GradScaler(enabled=self.precision == "fp16")
        step: torch.nn.Module = LossStep(self.model, options.loss)
        if self.info.world > 1:
            step = torch.nn.parallel.DistributedDataParallel(
                step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
            self.ddp = weakref.ref(step)
        self.loss_step: torch.nn.Module | None = torch.compile(step) if options.compile else step
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best = -math.inf
        self.history: list[dict[str, Any]] = []

    def train_mode(self) -> None:
        """Training mode, except the text encoder when it is fully frozen or ``text_dropout`` is off: it then
        stays in eval mode (no dropout). The official LAVT/LGCE scripts keep BERT outside the model, loaded by
        ``from_pretrained`` (which sets eval mode) and never switched to training mode; RMSIN's BERT is inside
        the model and trains with dropout."""
        self.model.train()
        if self.text_frozen or not self.options.text_dropout:
            self.model.text_encoder.eval()

    # ------------------------------------------------------------------------------------------ state
    def prepare_output(self) -> None:
        if not self.info.is_main:
            return
        if self.out.exists() and any(self.out.iterdir()) and not (self.options.resume or self.options.overwrite):
            raise OutputError("exists and is not empty (use --resume to continue or --overwrite)", self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output directory: {exc.strerror}", self.out) from exc
        opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        (self.out / "train_config.json").write_text(json.dumps(
            {"options": opts, "world_size": self.info.world, "global_batch": self.options.batch_size *
             self.info.world * self.options.grad_accum, "effective_lr": self.lr,
             "total_steps": self.total_steps, "model": self.model.config}, indent=2, default=str) + "\n")

    def training_state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best": self.best, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(), "world": self.info.world, "history": json.dumps(self.history)}

    def save_checkpoint(self, which: str) -> None:
        if not self.info.is_main:
            return
        target = self.out / which
        save_model(self.model, target, overwrite=True)
        if which == "last":
            tmp = target / (STATE_FILE + ".tmp")
            torch.save(self.training_state(), tmp)
            os.replace(tmp, target / STATE_FILE)

    def load_checkpoint(self) -> None:
        from safetensors.torch import load_file

        last = self.out / "last"
        if not (last / STATE_FILE).is_file():
            raise UsageError("nothing to resume: no last/training_state.pt", self.out)
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
        if int(state["world"]) != self.info.world:
            raise UsageError(f"resume needs the same number of processes ({state['world']}), got {self.info.world}",
                             self.out)
        self.model.load_state_dict(load_file(str(last / "model.safetensors")), strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.best = int(state["batch_in_epoch"]), float(state["best"])
        self.history = json.loads(state["history"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------------------- loop
    def loader(self) -> DataLoader:
        # Own generators: creating a DataLoader iterator must not consume the global RNG (exact resume).
        self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.options.batch_size)
        return DataLoader(self.train_set, batch_size=self.options.batch_size, sampler=self.sampler,
                          num_workers=self.options.num_workers, collate_fn=collate, drop_last=True,
                          generator=torch.Generator().manual_seed(self.options.seed + self.epoch))

    def val_loader(self) -> DataLoader | None:
        if self.val_set is None or len(self.val_set) == 0:
            return None
        sampler = EpochSampler(len(self.val_set), 0, self.info.rank, self.info.world, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.options.batch_size, sampler=sampler,
                          num_workers=self.options.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.options.seed))

    def set_lr(self) -> float:
        lr = self.lr * poly_lr_factor(self.step, self.total_steps, self.options.poly_power, self.options.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tensors = [batch[k].to(self.device, non_blocking=True)
                   for k in ("pixel_values", "input_ids", "attention_mask", "mask")]
        with inference.autocast(self.device, self.precision):
            return self.loss_step(*tensors)

    def leave_process_group(self) -> None:
        """Drop the DDP wrapper, then destroy the group this trainer created (:func:`leave_distributed`); a
        trainer that created a group cannot run again afterwards.

        The wrapper must be gone first: its reducer holds the group, and a group destroyed later by the reducer's
        destructor joins gloo's threads while holding the GIL, which one of them may need (to release the last
        collective's tensors): a deadlock at exit. So while the wrapper lives on (something else references it)
        the group is left to interpreter exit."""
        if not self.info.created_group:
            return
        self.loss_step = None
        if self.ddp is not None and self.ddp() is not None:
            gc.collect()  # reference cycles
        if self.ddp is not None and self.ddp() is not None:
            console.warn("the DDP wrapper outlives training: its process group is left to the interpreter's exit")
            return
        leave_distributed(self.info)

    def run(self) -> dict[str, Any]:
        """Train, then leave the process group this trainer created, also when training fails."""
        try:
            return self.fit()
        finally:
            self.leave_process_group()

    def fit(self) -> dict[str, Any]:
        opts = self.options
        self.prepare_output()
        if opts.resume and (self.out / "last" / STATE_FILE).is_file():
            self.load_checkpoint()
            console.info(f"resuming at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        else:
            seed_everything(opts.seed + self.info.rank)
        limit = opts.max_steps if opts.max_steps is not None else self.total_steps
        val_loader = self.val_loader()
        bar = self._progress(limit)
        started, seen = time.perf_counter(), 0
        running = []
        try:
            while self.step < limit and self.epoch < opts.epochs:
                accum = 0
                for batch in self.loader():
                    if self.batch_in_epoch >= self.batches_per_epoch or self.step >= limit:
                        break
                    lr = self.set_lr()
                    loss = self.compute_loss(batch) / opts.grad_accum
                    self.scaler.scale(loss).backward()
                    accum += 1
                    self.batch_in_epoch += 1
                    running.append(float(loss.detach()) * opts.grad_accum)
                    seen += batch["pixel_values"].shape[0] * self.info.world
                    if accum < opts.grad_accum:
                        continue
                    accum = 0
                    if opts.clip_grad:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), opts.clip_grad)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{running[-1]:.4f}", lr=f"{lr:.2e}",
                                        img_s=f"{seen / (time.perf_counter() - started):.1f}")
                    if self.step >= limit:
                        break
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.end_epoch(val_loader, running, lr)
                    running = []
            if self.batch_in_epoch > 0 and running:
                self.record(None, running, self.optimizer.param_groups[0]["lr"], validated=False)
            self.save_checkpoint("last")
        except torch.cuda.OutOfMemoryError as exc:
            raise RrsisError(f"out of GPU memory at batch size {opts.batch_size} on {self.device}: try "
                             f"--batch-size {max(1, opts.batch_size // 2)} with --grad-accum "
                             f"{opts.grad_accum * 2}") from exc
        finally:
            if bar is not None:
                bar.close()
        if self.info.is_main:
            self.write_curves()
        return {"step": self.step, "epoch": self.epoch, "best": self.best, "history": self.history}

    def end_epoch(self, val_loader: DataLoader | None, running: list[float], lr: float) -> None:
        metrics = None
        if val_loader is not None:
            metrics = validate(self.model, val_loader, self.device, self.precision,
                               self.options.val_limit_batches, self.info)
            self.train_mode()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.record(metrics, running, lr, validated=metrics is not None)
        score = (metrics or {}).get(self.options.best_metric)
        if score is not None and score > self.best:
            self.best = score
            self.save_checkpoint("best")
        self.save_checkpoint("last")

    def record(self, metrics: dict | None, running: list[float], lr: float, validated: bool) -> None:
        row = {"epoch": self.epoch, "step": self.step, "train_loss": float(np.mean(running)) if running else None,
               "lr": lr, **(metrics or {})}
        self.history.append(row)
        if not self.info.is_main:
            return
        path = self.out / "metrics.csv"
        columns = ["epoch", "step", "train_loss", "lr", "oIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8",
                   "Pr@0.9", "n_samples"]
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if validated:
            console.info(f"epoch {self.epoch} step {self.step}: loss {row['train_loss']:.4f} "
                         f"mIoU {row.get('mIoU', float('nan')):.4f} oIoU {row.get('oIoU', float('nan')):.4f}")
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
        except ImportError:
            return
        writer = SummaryWriter(str(self.out / "tensorboard"))
        for key, value in row.items():
            if isinstance(value, float):
                writer.add_scalar(key, value, self.step)
        writer.close()

    def write_curves(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.history if r.get("train_loss") is not None]
        if not rows:
            return
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ax[0].plot([r["step"] for r in rows], [r["train_loss"] for r in rows], marker="o")
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("train loss")
        val = [r for r in rows if "mIoU" in r]
        for key in ("mIoU", "oIoU"):
            ax[1].plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=key)
        ax[1].set_xlabel("step")
        ax[1].set_ylim(0, 1)
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=100)
        plt.close(fig)

    def _progress(self, total: int):
        if not (self.info.is_main and console.progress_enabled()):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step, desc="train", unit="step")

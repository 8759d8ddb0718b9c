"""``rrsis train``: fit a model on RefSegRS / RRSIS-D / RISBench / folder data (one GPU, or torchrun DDP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rrsis_cli import console
from rrsis_cli.cli.base import EXIT_CODES_HELP, given_by_user, option_values
from rrsis_cli.cli.options import ConfigOption, DeviceOption, PrecisionOption, batch_size_option

EPILOG = ("Multi-GPU: torchrun --nproc_per_node 4 -m rrsis_cli train ... (global batch = batch size x processes x "
          "grad-accum; the lr is used as given unless --scale-lr). " + EXIT_CODES_HELP)


def train(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help="Dataset format: refsegrs, rrsisd, risbench, folder.",
                                                   rich_help_panel="Data")] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset root directory.", rich_help_panel="Data")] = None,
    train_split: Annotated[str | None, typer.Option(help="Training split.", show_default="train",
                                                   rich_help_panel="Data")] = None,
    val_split: Annotated[str | None, typer.Option(help="Validation split; 'none' to skip.", show_default="val",
                                                     rich_help_panel="Data")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Zoo card (random init) or model directory "
                                              "(start from its weights).", rich_help_panel="Model")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Local BERT-like directory or pkg:NAME (cards only).",
                                                        rich_help_panel="Model")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="Official Swin ImageNet checkpoint (cards only).",
                                                            rich_help_panel="Model")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (best/, last/, metrics.csv).",
                                                rich_help_panel="Output")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.", show_default="card recipe",
                                              rich_help_panel="Recipe")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps (smoke runs).",
                                                     rich_help_panel="Recipe")] = None,
    limit_batches: Annotated[int | None, typer.Option(help="At most N batches per epoch.",
                                                         rich_help_panel="Recipe")] = None,
    val_limit_batches: Annotated[int | None, typer.Option(help="At most N validation batches.",
                                                             rich_help_panel="Recipe")] = None,
    batch_size: Annotated[int | None, batch_size_option("Samples (per process)", show_default="card recipe",
                                                        rich_help_panel="Recipe")] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate.", show_default="card recipe",
                                                rich_help_panel="Recipe")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.",
                                                       show_default="card recipe, else 0.01",
                                                       rich_help_panel="Recipe")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warm-up steps.", show_default="card recipe, else 0",
                                                     rich_help_panel="Recipe")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.",
                                                   show_default="card recipe, else 1", rich_help_panel="Recipe")] = None,
    clip_grad: Annotated[float | None, typer.Option(help="Clip the gradient norm to this value.",
                                                    show_default="card recipe, else no clipping",
                                                    rich_help_panel="Recipe")] = None,
    text_layers: Annotated[int | None, typer.Option(help="Train only the first K text-encoder layers (0 = frozen).",
                                                    show_default="card recipe, else all",
                                                    rich_help_panel="Recipe")] = None,
    occlusion_prob: Annotated[float | None, typer.Option(help="Share of training refs that get RMSIN's black boxes "
                                                         "(a fixed subset; RMSIN cards: 0.2).",
                                                         show_default="card recipe, else 0",
                                                         rich_help_panel="Recipe")] = None,
    best_metric: Annotated[str | None, typer.Option(help="Validation metric that selects best/.",
                                                    show_default="card recipe, else mIoU",
                                                    rich_help_panel="Recipe")] = None,
    scale_lr: Annotated[bool | None, typer.Option("--scale-lr", help="Scale the lr linearly with the global "
                                                     "batch / 8.", rich_help_panel="Recipe")] = None,
    precision: PrecisionOption = "fp32",
    device: DeviceOption = "auto",
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile the training step.",
                                                    rich_help_panel="Compute")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.", show_default="0",
                                                       rich_help_panel="Compute")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation and data order.", show_default="0",
                                                rich_help_panel="Compute")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Continue from OUT/last exactly.",
                                                   rich_help_panel="Output")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="Start over in a non-empty OUT.",
                                                      rich_help_panel="Output")] = None,
    config: ConfigOption = None,
) -> None:
    """Train a model on RefSegRS / RRSIS-D / RISBench / folder data; writes OUT/best, OUT/last, OUT/metrics.csv."""
    values = option_values(locals(), "ctx", "config")
    from rrsis_cli.errors import UsageError
    from rrsis_cli.train.run import run_training
    from rrsis_cli.yaml_config import merge_options

    opts = merge_options(config, given_by_user(ctx, values))
    missing = [name for name in ("dataset", "root", "model", "out") if not opts.get(name)]
    if missing:
        raise UsageError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    val = opts.pop("val_split", "val")
    result = run_training(opts.pop("dataset"), opts.pop("root"), opts.pop("model"), opts.pop("out"),
                          train_split=opts.pop("train_split", "train"),
                          val_split=None if str(val).lower() == "none" else val,
                          text_encoder=opts.pop("text_encoder", None),
                          backbone_weights=opts.pop("backbone_weights", None), **opts)
    console.info(f"finished at step {result['step']} (epoch {result['epoch']}); best {result['best']:.4f}")



"""``rrsis train``: resolve the model and the recipe, open the dataset splits, run the :class:`Trainer`.

Recipe defaults come from the model card's ``training:`` section (LAVT family: AdamW without AMSGrad, weight
decay 0.01 except backbone norms and position tables, BERT layers 0-9, lr 5e-5 / 3e-5 per dataset via
``lr_by_dataset``, poly 0.9 per iteration, 40 epochs, batch 8, best checkpoint by oIoU; RMSIN adds the
occlusion of 20 % of the training refs) and its ``loss:`` section; a YAML config file and then command-line
flags override them. Every card states where each value comes from and what differs from the official code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrsis_cli import console
from rrsis_cli.errors import DatasetError, UsageError
from rrsis_cli.models import ReferringSegmenter, init_model, is_model_dir, load_model
from rrsis_cli.train.data import ReferringTrainSet
from rrsis_cli.train.loop import Trainer, TrainOptions

RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "poly_power", "warmup_steps", "text_layers",
               "text_dropout", "amsgrad", "sync_bn", "occlusion_prob", "occlusion", "occlusion_seed", "grad_accum",
               "clip_grad", "best_metric")


def resolve_model(model: str, text_encoder: str | None, backbone_weights: str | None,
                  seed: int) -> ReferringSegmenter:
    """A model directory (start from its weights) or a card (random init + optional pretrained parts)."""
    if is_model_dir(model):
        if text_encoder or backbone_weights:
            raise UsageError("--text-encoder/--backbone-weights apply to a card, not to a model directory", model)
        return load_model(model)
    return init_model(model, text_encoder=text_encoder, backbone_weights=backbone_weights, seed=seed)


def recipe_defaults(config: dict[str, Any], dataset_format: str) -> dict[str, Any]:
    recipe = dict(config.get("training", {}) or {})
    by_dataset = recipe.pop("lr_by_dataset", {}) or {}
    if dataset_format in by_dataset:
        recipe["lr"] = by_dataset[dataset_format]
    if "optimizer" in recipe and recipe.pop("optimizer") != "adamw":
        console.warn("only AdamW is implemented; the card's optimizer entry is ignored")
    out = {k: recipe[k] for k in RECIPE_KEYS if k in recipe}
    if "loss" in config:
        out["loss"] = config["loss"]
    return out


def training_split(dataset_format: str, root: str | Path, split: str, model: ReferringSegmenter, seed: int,
                   occlusion_prob: float = 0.0, occlusion: dict | None = None,
                   occlusion_seed: int | None = None) -> ReferringTrainSet:
    from rrsis_cli.data import open_dataset

    dataset = open_dataset(dataset_format, root, split)
    if len(dataset) == 0:
        raise DatasetError(f"split {split!r} is empty", root)
    cfg = model.config
    return ReferringTrainSet(dataset.samples, dataset.load_training_sample, int(cfg["image_size"]), cfg["mean"],
                             cfg["std"], model.tokenizer, int(cfg["max_tokens"]), occlusion_prob, seed, occlusion,
                             occlusion_seed)


def run_training(dataset_format: str, root: str | Path, model: str, out_dir: str | Path,
                 train_split: str = "train", val_split: str | None = "val", text_encoder: str | None = None,
                 backbone_weights: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train ``model`` (card or model directory) on ``root``; ``overrides`` are :class:`TrainOptions` fields."""
    unknown = set(overrides) - set(TrainOptions.__dataclass_fields__)
    if unknown:
        raise UsageError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    seed = int(overrides.get("seed", 0))
    net = resolve_model(model, text_encoder, backbone_weights, seed)
    options = {**recipe_defaults(net.config, dataset_format), **overrides, "out_dir": Path(out_dir)}
    opts = TrainOptions(**options)
    train_set = training_split(dataset_format, root, train_split, net, seed, opts.occlusion_prob, opts.occlusion,
                               opts.occlusion_seed)
    val_set = training_split(dataset_format, root, val_split, net, seed) if val_split else None
    console.info(f"training {net.config.get('name', net.arch)} on {dataset_format}:{train_split} "
                 f"({len(train_set)} samples), validating on {val_split} ({len(val_set) if val_set else 0})")
    return Trainer(net, train_set, val_set, opts).run()

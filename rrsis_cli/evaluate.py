"""``rrsis evaluate``: a model (or saved predictions) on a dataset split, and scene masks against ground truth.

Dataset evaluation follows the official protocol by default (DESIGN §5): image resized bilinearly to the
model's input size and normalised, argmax of the two logits, ground truth resized (nearest) to the same size
and scored there. ``protocol="native"`` upsamples the logits to the original size instead.

Scene evaluation aligns by georeference: ground-truth vectors are reprojected to each prediction's CRS and
rasterised onto its grid window by window (bounded memory); nodata (255) pixels are excluded.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rrsis_cli import console
from rrsis_cli.errors import InputError, OutputError, UsageError
from rrsis_cli.metrics import MetricAccumulator, intersection_union
from rrsis_cli.train.data import resize_image, resize_mask

PROTOCOLS = ("official", "native")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory: {exc.strerror}", out) from exc
    return out


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)


def _predict_batch(model, images: list[np.ndarray], expressions: list[str], size: int, protocol: str,
                   device: torch.device) -> list[np.ndarray]:
    cfg = model.config
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    pixels = torch.stack([(resize_image(im, size) - mean) / std for im in images]).to(device)
    ids, mask = model.tokenize(expressions)
    with torch.inference_mode():
        logits = model(pixels, ids.to(device), mask.to(device)).float().cpu()
    if protocol == "official":
        return [lg.argmax(0).numpy().astype(bool) for lg in logits]
    return [F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=True)[0].argmax(0)
            .numpy().astype(bool) for lg, im in zip(logits, images, strict=True)]


def evaluate_dataset(model, dataset, out_dir: str | Path, protocol: str = "official", empty_union: str = "zero",
                     strict: bool = False, batch_size: int = 8, device: str = "cpu",
                     image_size: int | None = None) -> dict[str, Any]:
    """Score every (image, expression) sample of ``dataset`` (see ``rrsis_cli.data``); writes
    ``metrics.json`` and ``per_sample.csv`` in ``out_dir`` and returns the summary."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    out = _prepare_out(out_dir)
    dev = torch.device(device)
    model = model.to(dev).eval()
    size = int(image_size or (480 if protocol == "official" and "image_size" not in model.config
                              else model.config["image_size"]))
    acc = MetricAccumulator(empty_union, strict)
    rows: list[dict[str, Any]] = []
    samples = list(dataset.samples)
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        loaded = [dataset.load_training_sample(s) for s in batch]
        preds = _predict_batch(model, [im for im, _, _ in loaded], [e for _, _, e in loaded], size, protocol, dev)
        for sample, (_, gt, expression), pred in zip(batch, loaded, preds, strict=True):
            target = resize_mask(gt, size).numpy().astype(bool) if protocol == "official" else gt
            inter, union = intersection_union(pred, target)
            iou = acc.add(inter, union, sample.category)
            rows.append({"id": sample.id, "expression": expression, "category": sample.category or "",
                         "I": inter, "U": union, "IoU": iou})
    summary: dict[str, Any] = acc.summary()
    summary.update({"protocol": protocol, "scored_at": size if protocol == "official" else "native",
                    "empty_union": empty_union, "strict": strict, "dataset": dataset.format,
                    "split": dataset.split, "root": str(dataset.root),
                    "model": model.config.get("name"), "model_sha256": getattr(model, "sha256", None),
                    "per_category": acc.by_group()})
    _atomic_write(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    _write_rows(out / "per_sample.csv", rows)
    return summary


# ----------------------------------------------------------------------------------------------- scenes
def _rasterize_gt(gt_frame, dataset, window) -> np.ndarray:
    from rasterio.features import rasterize

    transform = dataset.window_transform(window)
    shapes = [g for g in gt_frame.geometry if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros((int(window.height), int(window.width)), bool)
    return rasterize(shapes, out_shape=(int(window.height), int(window.width)), transform=transform,
                     fill=0, default_value=1, dtype="uint8").astype(bool)


def score_scene(pred_path: str | Path, gt_path: str | Path) -> dict[str, Any]:
    """I, U, TP/FP/FN of one prediction mask (1 target, 0 background, 255 nodata) against GT vectors."""
    import geopandas as gpd
    import rasterio

    try:
        dataset = rasterio.open(pred_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read prediction mask: {exc}", pred_path) from exc
    try:
        frame = gpd.read_file(gt_path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types
        raise InputError(f"cannot read ground-truth vectors: {exc}", gt_path) from exc
    with dataset:
        if frame.crs is not None and dataset.crs is not None:
            frame = frame.to_crs(dataset.crs)
        tp = fp = fn = 0
        for _, window in dataset.block_windows(1):
            pred = dataset.read(1, window=window)
            valid = pred != 255
            gt = _rasterize_gt(frame, dataset, window)
            p = (pred == 1) & valid
            g = gt & valid
            tp += int((p & g).sum())
            fp += int((p & ~g).sum())
            fn += int((~p & g).sum())
    return {"pred": str(pred_path), "gt": str(gt_path), **scores(tp, fp, fn)}


def scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Pixel counts and IoU, precision, recall, F1 (0 where undefined)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"TP": tp, "FP": fp, "FN": fn, "IoU": tp / (tp + fp + fn) if tp + fp + fn else 0.0,
            "precision": precision, "recall": recall,
            "F1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def evaluate_scenes(pairs: list[tuple[Path, Path]], out_dir: str | Path) -> dict[str, Any]:
    """Per-scene scores and totals (ΣI/ΣU etc.) written to ``metrics.json`` and ``per_scene.csv``."""
    out = _prepare_out(out_dir)
    if not pairs:
        raise UsageError("no (prediction, ground truth) pairs to evaluate")
    rows = [score_scene(p, g) for p, g in pairs]
    summary = {**scores(*(sum(r[k] for r in rows) for k in ("TP", "FP", "FN"))), "n_scenes": len(rows),
               "scenes": rows}
    precision, recall = summary["precision"], summary["recall"]
    _atomic_write(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    _write_rows(out / "per_scene.csv", rows)
    console.info(f"{len(rows)} scene(s): IoU {summary['IoU']:.4f} precision {precision:.4f} "
                 f"recall {recall:.4f} F1 {summary['F1']:.4f}")
    return summary


def _files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("not found", path)
    return sorted(p for pattern in patterns for p in path.rglob(pattern))


def pair_scenes(pred: str | Path, gt: str | Path) -> list[tuple[Path, Path]]:
    """Match prediction masks to ground-truth vector files: one file each, or by name — a GT file stem equal to
    the mask's stem, its prompt folder (``OUT/<scene>/<prompt>/mask.tif``) or its scene folder."""
    preds = _files(Path(pred), ("*.tif", "*.tiff"))
    gts = _files(Path(gt), ("*.geojson", "*.gpkg", "*.json", "*.fgb", "*.shp"))
    if len(preds) == 1 and len(gts) == 1:
        return [(preds[0], gts[0])]
    by_stem = {g.stem: g for g in gts}
    pairs, unmatched = [], []
    for p in preds:
        keys = (p.stem, p.parent.name, p.parent.parent.name)
        match = next((by_stem[k] for k in keys if k in by_stem), None)
        (pairs.append((p, match)) if match else unmatched.append(p))
    if unmatched:
        console.warn(f"{len(unmatched)} prediction(s) without ground truth, e.g. {unmatched[0]}")
    return pairs

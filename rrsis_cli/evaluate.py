"""``rrsis evaluate``: a model (or saved predictions) on a dataset split, and scene masks against ground truth.

Dataset evaluation follows the official protocol by default (DESIGN §5): image resized bilinearly to the
model's input size and normalised, argmax of the two logits, ground truth resized (nearest) to the same size
and scored there. ``protocol="native"`` upsamples the logits to the original size instead.

Scene evaluation scores on the prediction's grid, window by window (bounded memory). Ground-truth vectors are
reprojected to the prediction's CRS and rasterised onto its grid (pixel centres). Ground-truth rasters in any CRS
and resolution are reprojected onto the prediction's grid with nearest-neighbour resampling (a WarpedVRT): each
prediction pixel takes the label of the ground-truth pixel under its centre, so labels stay 0/1 and neither
grid's pixel size biases the areas. Excluded from every count: prediction nodata (255, or its own nodata/mask),
ground-truth nodata (its nodata value, internal mask or alpha band, by GDAL's convention, see
:func:`rrsis_cli.scene.valid_mask`), prediction pixels outside the ground truth's extent (unknown truth), and
ground truth outside the prediction's extent (nothing was predicted there).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rrsis_cli import console
from rrsis_cli.data.transforms import resize_image, resize_mask
from rrsis_cli.errors import InputError, OutputError, UsageError
from rrsis_cli.inference import forward_logits, normalise_on_device, pick_device, resolve_precision
from rrsis_cli.inputs import strip_key_hash
from rrsis_cli.metrics import MetricAccumulator, intersection_union
from rrsis_cli.scene import mask_kind, valid_mask

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


def _predict_batch(model, images: list[np.ndarray], expressions: list[str], size: int, device: torch.device,
                   precision: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks at the scoring size (argmax of the ``size``² logits) and at each image's own size (logits
    upsampled bilinearly, align_corners=True, then argmax) for one batch. ``precision`` is resolved
    (:func:`rrsis_cli.inference.resolve_precision`)."""
    pixels = normalise_on_device(torch.stack([resize_image(im, size) for im in images]).to(device), model.config)
    ids, mask = model.tokenize(expressions)
    logits = forward_logits(model, pixels, ids, mask, device, precision)
    at_size = [lg.argmax(0).numpy().astype(bool) for lg in logits]
    native = [F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=True)[0].argmax(0)
              .numpy().astype(bool) for lg, im in zip(logits, images, strict=True)]
    return at_size, native


def read_prediction(folder: Path, sample_id: str) -> np.ndarray:
    """``folder/<sample_id>.png|.tif|.tiff`` as a boolean mask (non-zero = target)."""
    from rrsis_cli.data.common import find_file, read_mask

    path = find_file(folder, sample_id)
    if path is None:
        raise InputError(f"no prediction for sample {sample_id}", folder)
    return read_mask(path, 0)


def _check_predictions(folder: Path, samples: list) -> None:
    from rrsis_cli.data.common import find_file

    if not folder.is_dir():
        raise InputError("predictions folder not found", folder)
    missing = [s.id for s in samples if find_file(folder, s.id) is None]
    if missing:
        raise InputError(f"{len(missing)} of {len(samples)} predictions missing (expected <sample_id>.png or "
                         f".tif), e.g. {', '.join(missing[:5])}", folder)


def _save_mask(folder: Path, sample_id: str, mask: np.ndarray) -> None:
    from PIL import Image

    tmp = folder / f".{sample_id}.png.tmp"
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    os.replace(tmp, folder / f"{sample_id}.png")


def _scored_pairs(model, dataset, samples: list, size: int, protocol: str, batch_size: int,
                  device: torch.device, precision: str, predictions: Path | None, save_dir: Path | None):
    """(sample, prediction, ground truth) at the scoring resolution, batch by batch."""
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        if predictions is not None:  # saved masks: only the ground truth is read, never the images
            gts = [dataset.load_mask(s) for s in batch]
            native = [read_prediction(predictions, s.id) for s in batch]
            for s, pred, gt in zip(batch, native, gts, strict=True):
                if pred.shape != gt.shape:
                    raise InputError(f"prediction for {s.id} is {pred.shape[1]}x{pred.shape[0]}, the image is "
                                     f"{gt.shape[1]}x{gt.shape[0]} (save predictions at the original size)",
                                     predictions)
            at_size = [resize_mask(p, size).numpy().astype(bool) for p in native]
        else:
            loaded = [dataset.load_sample(s) for s in batch]
            gts = [gt for _, gt in loaded]
            at_size, native = _predict_batch(model, [im for im, _ in loaded], [s.expression for s in batch], size,
                                             device, precision)
            if save_dir is not None:
                for s, pred in zip(batch, native, strict=True):
                    _save_mask(save_dir, s.id, pred)
        for s, small, full, gt in zip(batch, at_size, native, gts, strict=True):
            if protocol == "official":
                yield s, small, resize_mask(gt, size).numpy().astype(bool)
            else:
                yield s, full, gt


def _attribute(sample) -> str | None:
    return sample.extra.get("attribute") or sample.extra.get("type") or None


def evaluate_dataset(model, dataset, out_dir: str | Path, protocol: str = "official", empty_union: str = "zero",
                     strict: bool = False, batch_size: int = 8, device: str = "cpu", precision: str = "fp32",
                     image_size: int | None = None, predictions: str | Path | None = None,
                     save_masks: bool = False, plots: bool = True) -> dict[str, Any]:
    """Score every (image, expression) sample of ``dataset`` (see ``rrsis_cli.data``) with ``model``, or the saved
    masks in ``predictions`` (``<sample_id>.png|.tif`` at the image's size, non-zero = target).

    Writes ``metrics.json``, ``per_sample.csv`` and (``plots``) ``iou_histogram.png`` / ``precision_curve.png``
    in ``out_dir``; ``save_masks`` writes each prediction at the image's size to ``out_dir/masks/<id>.png`` (the
    layout ``predictions`` reads). Returns the summary."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if (model is None) == (predictions is None):
        raise UsageError("give either a model or a predictions folder")
    samples = list(dataset.samples)
    if not samples:
        raise UsageError(f"{dataset.format}:{dataset.split} has no samples")
    pred_dir = None if predictions is None else Path(predictions)
    if pred_dir is not None:
        _check_predictions(pred_dir, samples)
    out = _prepare_out(out_dir)
    save_dir = None
    if save_masks and model is not None:
        save_dir = out / "masks"
        save_dir.mkdir(exist_ok=True)
    dev = torch.device("cpu")
    if model is not None:  # device and precision as predict resolves them (auto: the GPU and bf16 when there is one)
        dev = pick_device(device)
        precision = resolve_precision(precision, dev)
        model = model.to(dev).eval()
        size = int(image_size or model.config.get("image_size", 480))
    else:
        size = int(image_size or 480)
    acc = MetricAccumulator(empty_union, strict)
    rows: list[dict[str, Any]] = []
    pairs = _scored_pairs(model, dataset, samples, size, protocol, batch_size, dev, precision, pred_dir, save_dir)
    with console.progress_bar(len(samples), "evaluate") as bar:
        for sample, pred, target in pairs:
            inter, union = intersection_union(pred, target)
            iou = acc.add(inter, union, sample.category, attribute=_attribute(sample))
            rows.append({"id": sample.id, "expression": sample.expression, "category": sample.category or "",
                         "attribute": _attribute(sample) or "", "I": inter, "U": union, "IoU": iou})
            bar.update(1)
    summary: dict[str, Any] = acc.summary()
    summary.update({
        "protocol": protocol, "scored_at": size if protocol == "official" else "native",
        "empty_union": empty_union, "strict": strict,
        "dataset": {"format": dataset.format, "split": dataset.split, "root": str(dataset.root),
                    "fingerprint": dataset.fingerprint()},
        "model": None if model is None else {"name": model.config.get("name"), "arch": model.config.get("arch"),
                                             "sha256": getattr(model, "sha256", None)},
        "predictions": None if pred_dir is None else str(pred_dir),
        "per_category": acc.by_group("category"), "per_attribute": acc.by_group("attribute"),
    })
    _atomic_write(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    _write_rows(out / "per_sample.csv", rows)
    if plots:
        write_plots(acc.ious(), summary, out)
    return summary


def write_plots(ious: np.ndarray, summary: dict[str, Any], out: Path) -> None:
    """``iou_histogram.png`` (per-sample IoU) and ``precision_curve.png`` (Pr@X for X in 0.50 … 0.95)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = ious[~np.isnan(ious)]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.hist(values, bins=20, range=(0, 1), color="#3a7ca5")
    ax.set(xlabel="IoU", ylabel="samples", title=f"IoU per sample (mIoU {summary['mIoU']:.3f}, N {values.size})")
    _save_figure(fig, out / "iou_histogram.png")
    thresholds = np.linspace(0.5, 0.95, 10)
    hits = [float((values > t).mean() if summary["strict"] else (values >= t).mean()) if values.size else 0.0
            for t in thresholds]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(thresholds, hits, marker="o", color="#d1495b")
    ax.set(xlabel="IoU threshold X", ylabel="Pr@X", ylim=(0, 1), title=f"Pr@X (oIoU {summary['oIoU']:.3f})")
    ax.grid(alpha=0.3)
    _save_figure(fig, out / "precision_curve.png")


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- scenes
def _rasterize_gt(gt_frame, dataset, window) -> np.ndarray:
    from rasterio.features import rasterize

    transform = dataset.window_transform(window)
    shapes = [g for g in gt_frame.geometry if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros((int(window.height), int(window.width)), bool)
    return rasterize(shapes, out_shape=(int(window.height), int(window.width)), transform=transform,
                     fill=0, default_value=1, dtype="uint8").astype(bool)


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")


class NoOverlap(InputError):
    """The ground truth does not overlap the prediction: the pair is left out of the totals, with a warning."""


def _check_overlap(gt_path: Path, gt_bounds, dataset) -> None:
    """Raise :class:`NoOverlap` when ``gt_bounds`` (in the prediction's CRS; None = unknown) miss the prediction."""
    if gt_bounds is None or not np.all(np.isfinite(gt_bounds)):
        return  # an empty vector file: nothing to compare, every predicted pixel is a false positive
    left, bottom, right, top = dataset.bounds
    g_left, g_bottom, g_right, g_top = gt_bounds
    if g_left >= right or g_right <= left or g_bottom >= top or g_top <= bottom:
        raise NoOverlap(f"does not overlap the prediction {dataset.name} (another scene's ground truth?)", gt_path)


def _open_ground_truth(gt_path: Path, dataset, stack: contextlib.ExitStack):
    """A function ``window -> (target, valid)`` on the prediction's grid. Vectors are reprojected to its CRS and
    rasterised (all pixels valid); rasters (band 1, > 0 = target) are warped onto its grid with nearest resampling
    through a WarpedVRT: their nodata, internal mask or alpha band, and everything outside their extent, is
    invalid. A raster with neither nodata nor alpha gets an alpha band in the VRT to mark its extent. Ground
    truth that does not overlap the prediction raises :class:`NoOverlap`."""
    import rasterio

    if gt_path.suffix.lower() in RASTER_SUFFIXES:
        from rasterio.enums import ColorInterp, Resampling
        from rasterio.vrt import WarpedVRT

        try:
            src = stack.enter_context(rasterio.open(gt_path))
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"cannot read ground-truth mask: {exc}", gt_path) from exc
        if src.crs is None or dataset.crs is None:
            raise InputError("ground-truth mask and prediction must both be georeferenced", gt_path)
        from rasterio.warp import transform_bounds

        _check_overlap(gt_path, transform_bounds(src.crs, dataset.crs, *src.bounds), dataset)
        vrt = stack.enter_context(WarpedVRT(src, crs=dataset.crs, transform=dataset.transform,
                                            width=dataset.width, height=dataset.height,
                                            resampling=Resampling.nearest,
                                            add_alpha=src.nodata is None and ColorInterp.alpha not in src.colorinterp))
        kind = mask_kind(vrt, [1])

        def raster_window(window):
            valid = valid_mask(vrt, [1], window, kind=kind)
            return (vrt.read(1, window=window) > 0) & valid, valid

        return raster_window
    import geopandas as gpd

    try:
        frame = gpd.read_file(gt_path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types
        raise InputError(f"cannot read ground-truth vectors: {exc}", gt_path) from exc
    if frame.crs is not None and dataset.crs is not None:
        frame = frame.to_crs(dataset.crs)
    if len(frame) and (frame.crs is None) == (dataset.crs is None):
        _check_overlap(gt_path, frame.total_bounds, dataset)

    def vector_window(window):
        target = _rasterize_gt(frame, dataset, window)
        return target, np.ones_like(target)

    return vector_window


def score_scene(pred_path: str | Path, gt_path: str | Path) -> dict[str, Any]:
    """TP/FP/FN and scores of one prediction mask (1 target, 0 background, 255 nodata) against ground truth
    (vectors or a mask raster), aligned by georeference and counted window by window."""
    import rasterio

    with contextlib.ExitStack() as stack:
        try:
            dataset = stack.enter_context(rasterio.open(pred_path))
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"cannot read prediction mask: {exc}", pred_path) from exc
        ground_truth = _open_ground_truth(Path(gt_path), dataset, stack)
        kind = mask_kind(dataset, [1])
        tp = fp = fn = 0
        for _, window in dataset.block_windows(1):
            pred = dataset.read(1, window=window)
            g, valid = ground_truth(window)
            valid &= (pred != 255) & valid_mask(dataset, [1], window, kind=kind)
            p = (pred == 1) & valid
            g &= valid
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
    rows, left_out = [], []
    for p, g in pairs:
        try:
            rows.append(score_scene(p, g))
        except NoOverlap as exc:
            console.warn(f"{exc.one_line()}; pair left out of the totals")
            left_out.append({"pred": str(p), "gt": str(g), "reason": exc.one_line()})
    if not rows:
        raise InputError(f"no ground truth overlaps its prediction ({len(left_out)} pair(s) left out)", pairs[0][1])
    summary = {**scores(*(sum(r[k] for r in rows) for k in ("TP", "FP", "FN"))), "n_scenes": len(rows),
               "scenes": rows, "left_out": left_out}
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


def mask_problem(path: Path) -> str | None:
    """Why ``path`` is not a prediction mask, or None when it is one: a mask written by ``rrsis predict`` (its tags
    say so; ``prob.tif`` and ``coarse.tif`` are not masks), or any single-band integer raster whose values are all
    in {0, 1, 255} (checked block by block)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            tags = ds.tags()
            if "values" in tags:
                return f"not a mask but a {tags['values']} raster"
            if ds.count != 1 or not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
                return (f"not a mask: {ds.count} band(s) of {ds.dtypes[0]} (a prediction mask has one integer band "
                        "of 0 background, 1 target, 255 nodata)")
            if "rrsis_config_hash" in tags:
                return None
            for _, window in ds.block_windows(1):
                extra = set(np.unique(ds.read(1, window=window)).tolist()) - {0, 1, 255}
                if extra:
                    return f"not a mask: holds values other than 0, 1 and 255 (e.g. {min(extra)})"
    except rasterio.errors.RasterioIOError as exc:
        return f"cannot read prediction mask: {exc}"
    return None


def prediction_masks(pred: Path) -> list[Path]:
    """The prediction masks in ``pred``: the file itself (which must be a mask), or every mask in a folder
    (other rasters, such as ``prob.tif``, are skipped with a note)."""
    if pred.is_file():
        problem = mask_problem(pred)
        if problem:
            raise InputError(problem, pred)
        return [pred]
    candidates = _files(pred, ("*.tif", "*.tiff"))
    masks = [p for p in candidates if mask_problem(p) is None]
    if len(masks) < len(candidates):
        console.info(f"{len(candidates) - len(masks)} raster(s) in {pred} are not prediction masks (probability "
                     "or coarse rasters, images) and are not scored")
    return masks


def _mask_identity(path: Path) -> tuple[str, str | None]:
    """(scene name, prompt slug or None) of a prediction mask: from the tags ``rrsis predict`` writes, else from
    ``<scene key>/<prompt key>/mask.tif`` folder names (``-<8 hex>`` suffixes dropped), else the file's stem."""
    import rasterio

    from rrsis_cli.inputs import slugify

    with rasterio.open(path) as ds:
        tags = ds.tags()
    if "rrsis_scene" in tags and "prompt" in tags:
        return Path(tags["rrsis_scene"]).stem, slugify(tags["prompt"], limit=None)
    if path.stem == "mask":
        return strip_key_hash(path.parent.parent.name), strip_key_hash(path.parent.name)
    return path.stem, None


def pair_scenes(pred: str | Path, gt: str | Path) -> list[tuple[Path, Path]]:
    """Match prediction masks to ground-truth files (vectors or mask GeoTIFFs) by scene identity: one file each;
    else the GT file whose path below ``gt`` (suffix dropped) is ``<scene>/<prompt>``, ``<scene>_<prompt>``,
    ``<scene>`` or the mask's own stem, where scene and prompt come from the mask's tags (or its
    ``<scene key>/<prompt key>/`` folders); a GT named after the prompt alone (``gt/<prompt>.geojson``, as
    ``rrsis data scene`` writes) is used only when every prediction comes from one scene. Pairs whose ground truth
    does not overlap the prediction are left out later, with a warning (:func:`evaluate_scenes`)."""
    preds = prediction_masks(Path(pred))
    gt_root = Path(gt)
    gts = _files(gt_root, ("*.geojson", "*.gpkg", "*.json", "*.fgb", "*.shp", "*.tif", "*.tiff"))
    if len(preds) == 1 and len(gts) == 1:
        return [(preds[0], gts[0])]
    by_name = {(g.relative_to(gt_root).with_suffix("").as_posix() if gt_root.is_dir() else g.stem): g for g in gts}
    identities = {p: _mask_identity(p) for p in preds}
    one_scene = len({scene for scene, _ in identities.values()}) == 1
    pairs, unmatched = [], []
    for p, (scene, prompt) in identities.items():
        keys = [f"{scene}/{prompt}", f"{scene}_{prompt}", scene] if prompt else [scene]
        keys += [p.stem] if p.stem != "mask" else []
        keys += [prompt] if prompt and one_scene else []
        match = next((by_name[k] for k in keys if k in by_name), None)
        (pairs.append((p, match)) if match else unmatched.append(p))
    if unmatched:
        console.warn(f"{len(unmatched)} prediction(s) without ground truth, e.g. {unmatched[0]}; name ground truth "
                     "<scene>/<prompt>.*, <scene>_<prompt>.* or <scene>.*, or list the pairs with --pairs")
    return pairs


def read_pairs_csv(path: str | Path) -> list[tuple[Path, Path]]:
    """(prediction, ground truth) pairs from a CSV with columns ``pred`` and ``gt`` (paths relative to the CSV)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"cannot read the pairs file: {exc.strerror}", path) from exc
    if not rows or not {"pred", "gt"} <= set(rows[0]):
        raise InputError("the pairs file needs a header with columns pred,gt and at least one row", path)
    pairs = [(path.parent / r["pred"], path.parent / r["gt"]) for r in rows]
    missing = [str(f) for pair in pairs for f in pair if not f.exists()]
    if missing:
        raise InputError(f"{len(missing)} listed files are missing, e.g. {', '.join(missing[:3])}", path)
    for pred, _ in pairs:
        problem = mask_problem(pred)
        if problem:
            raise InputError(f"{pred}: {problem}", path)
    return pairs

"""``rrsis data synth``: a referring-segmentation dataset built from real imagery with composited objects.

Chips are windows of real GeoTIFF pixels; procedurally drawn objects (circle, square, triangle in five colours,
two sizes, with texture and shading) are composited on them, and every expression is chosen so that the
*language is required* to pick the target among look-alike distractors:

* ``attribute``: "the red circle" — the chip also holds a circle of another colour and a red object of another
  shape;
* ``position``: "the blue square in the upper left" — two or three identical squares, one per quadrant;
* ``comparison``: "the larger of the two green triangles" — two identical triangles of clearly different sizes;
* ``relation``: "the square left of the circle" — two identical squares on either side of one circle;
* ``absent`` (training split only, ``absent_fraction``): an attribute chip without its referent, whose right
  answer is an empty mask — tiled inference over a scene meets far more tiles without the referent than with
  it. Evaluation splits hold only present referents (the official protocol scores an empty pair as IoU 0).

Output (the ``folder`` dataset format): ``images/<id>.png``, ``masks/<id>.png`` (255 = target) and
``<split>.csv`` with columns ``id, image, mask, expression, category, type``; ``synth_report.json`` records
the parameters, counts per split and type, and the held-out vocabulary check (every word of the val/test
expressions occurs in train). Seeded: same arguments → identical files.

:func:`make_demo_scene` writes a large georeferenced scene (mirror-tiled real pixels, the source's CRS and
pixel size) with scattered objects and ground-truth polygons (GeoJSON, EPSG:4326) for a few prompts.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrsis_cli.errors import InputError, OutputError
from rrsis_cli.inputs import slugify

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 215, 40),
    "white": (245, 245, 245),
}
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
EXPRESSION_TYPES = ("attribute", "position", "comparison", "relation")


@dataclass
class Thing:
    shape: str
    colour: str
    cy: float
    cx: float
    radius: float
    limits: tuple | None = None  # optional ((ymin, ymax), (xmin, xmax)) for the centre


def shape_mask(thing: Thing, height: int, width: int, oy: int = 0, ox: int = 0) -> np.ndarray:
    """Boolean mask of ``thing`` on a (height, width) grid whose top-left pixel is (oy, ox)."""
    yy, xx = np.mgrid[oy:oy + height, ox:ox + width].astype(np.float32) + 0.5
    dy, dx, r = yy - thing.cy, xx - thing.cx, thing.radius
    if thing.shape == "circle":
        return dy * dy + dx * dx <= r * r
    if thing.shape == "square":
        side = r * 0.9
        return (np.abs(dy) <= side) & (np.abs(dx) <= side)
    if thing.shape == "triangle":  # apex up, base at cy + r
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r * 1.15)
    raise ValueError(f"unknown shape {thing.shape!r}")


def paint(image: np.ndarray, thing: Thing, rng: np.random.Generator, oy: int = 0, ox: int = 0) -> np.ndarray:
    """Composite ``thing`` into ``image`` (H, W, 3 uint8) in place with texture and shading; return its mask."""
    mask = shape_mask(thing, image.shape[0], image.shape[1], oy, ox)
    if not mask.any():
        return mask
    base = np.array(COLOURS[thing.colour], dtype=np.float32)
    ys, xs = np.nonzero(mask)
    shade = 1.0 - 0.12 * ((ys + oy - thing.cy) / max(thing.radius, 1.0))[:, None]
    noise = rng.normal(0.0, 7.0, (len(ys), 3)).astype(np.float32)
    image[ys, xs] = np.clip(base[None] * shade + noise, 0, 255).astype(np.uint8)
    return mask


def read_source(path: str | Path) -> np.ndarray:
    """All pixels of a small real raster as (H, W, 3) uint8 (first three bands; 16-bit stretched 2–98 %)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            bands = src.read(indexes=list(range(1, min(3, src.count) + 1)))
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read source imagery: {exc}", path) from exc
    if bands.shape[0] < 3:
        bands = np.repeat(bands[:1], 3, axis=0)
    data = bands.astype(np.float32)
    if bands.dtype != np.uint8:
        lo, hi = np.percentile(data[data > 0] if (data > 0).any() else data, (2, 98))
        data = (data - lo) / max(hi - lo, 1e-6) * 255.0
    return np.clip(data, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _free(things: list[Thing], cy: float, cx: float, r: float, gap: float = 3.0) -> bool:
    return all((t.cy - cy) ** 2 + (t.cx - cx) ** 2 >= (t.radius + r + gap) ** 2 for t in things)


def _place(rng, things, size, r, ylim=None, xlim=None, tries: int = 200) -> tuple[float, float] | None:
    ylo, yhi = ylim or (r + 1, size - r - 1)
    xlo, xhi = xlim or (r + 1, size - r - 1)
    for _ in range(tries):
        if yhi <= ylo or xhi <= xlo:
            return None
        cy, cx = rng.uniform(ylo, yhi), rng.uniform(xlo, xhi)
        if _free(things, cy, cx, r):
            return cy, cx
    return None


def _others(rng, values, exclude):
    choices = [v for v in values if v != exclude]
    return choices[int(rng.integers(len(choices)))]


def _radius(rng, size, large: bool | None = None) -> float:
    lo, hi = size * 0.06, size * 0.13
    if large is None:
        return float(rng.uniform(lo, hi))
    return float(rng.uniform(hi * 0.95, hi * 1.15) if large else rng.uniform(lo * 0.8, lo * 1.1))


def layout_attribute(rng, size):
    shape, colour = SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
    target = Thing(shape, colour, 0, 0, _radius(rng, size))
    distractors = [Thing(shape, _others(rng, list(COLOURS), colour), 0, 0, _radius(rng, size)),
                   Thing(_others(rng, SHAPES, shape), colour, 0, 0, _radius(rng, size))]
    return target, distractors, f"the {colour} {shape}", None


def layout_position(rng, size):
    shape, colour = SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
    quads = list(rng.permutation(4)[: int(rng.integers(2, 4))])
    half = size / 2
    things, target = [], None
    for k, q in enumerate(quads):
        r = _radius(rng, size)
        ylim = (r + 1, half - r - 2) if q in (0, 1) else (half + r + 2, size - r - 1)
        xlim = (r + 1, half - r - 2) if q in (0, 2) else (half + r + 2, size - r - 1)
        thing = Thing(shape, colour, 0, 0, r, limits=(ylim, xlim))
        things.append(thing)
        if k == 0:
            target = thing
    return target, things[1:], f"the {colour} {shape} in the {QUADRANTS[int(quads[0])]}", None


def layout_comparison(rng, size):
    shape, colour = SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
    larger = bool(rng.integers(2))
    target = Thing(shape, colour, 0, 0, _radius(rng, size, large=larger))
    other = Thing(shape, colour, 0, 0, _radius(rng, size, large=not larger))
    extra = Thing(_others(rng, SHAPES, shape), _others(rng, list(COLOURS), colour), 0, 0, _radius(rng, size))
    word = "larger" if larger else "smaller"
    return target, [other, extra], f"the {word} of the two {colour} {shape}s", None


def layout_relation(rng, size):
    shape = SHAPES[int(rng.integers(3))]
    anchor_shape = _others(rng, SHAPES, shape)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    anchor_colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    side = "left" if rng.integers(2) else "right"
    anchor = Thing(anchor_shape, anchor_colour, 0, 0, _radius(rng, size))
    target = Thing(shape, colour, 0, 0, _radius(rng, size))
    other = Thing(shape, colour, 0, 0, _radius(rng, size))
    return target, [other, anchor], f"the {shape} {side} of the {anchor_shape}", (side, anchor)


LAYOUTS: dict[str, Callable] = {"attribute": layout_attribute, "position": layout_position,
                                "comparison": layout_comparison, "relation": layout_relation}


def place_relation(rng, size, target, other, anchor, side) -> bool:
    """Anchor near the middle, target on ``side`` of it, the look-alike on the other side."""
    m = size / 2
    pos = _place(rng, [], size, anchor.radius, ylim=(m - size * 0.2, m + size * 0.2),
                 xlim=(m - size * 0.1, m + size * 0.1))
    if pos is None:
        return False
    anchor.cy, anchor.cx = pos
    left = (target.radius + 1, anchor.cx - anchor.radius - target.radius - 4)
    right = (anchor.cx + anchor.radius + target.radius + 4, size - target.radius - 1)
    for thing, lim in ((target, left if side == "left" else right), (other, right if side == "left" else left)):
        pos = _place(rng, [anchor, target, other][: [anchor, target, other].index(thing)], size, thing.radius,
                     xlim=lim)
        if pos is None:
            return False
        thing.cy, thing.cx = pos
    return True


def compose_chip(background: np.ndarray, kind: str, rng: np.random.Generator):
    """One chip of ``kind``: (image, target mask, expression, category, things) or None if the layout did not
    fit; ``things[0]`` is the target. Kind ``absent`` is an attribute layout without its referent (the
    look-alikes stay): the mask is empty and ``things`` holds only the distractors."""
    size = background.shape[0]
    absent = kind == "absent"
    target, distractors, expression, relation = LAYOUTS["attribute" if absent else kind](rng, size)
    things = [target, *distractors]
    if relation is not None:
        side, anchor = relation
        if not place_relation(rng, size, target, distractors[0], anchor, side):
            return None
    else:
        placed: list[Thing] = []
        for thing in things:
            ylim, xlim = thing.limits or (None, None)
            pos = _place(rng, placed, size, thing.radius, ylim, xlim)
            if pos is None:
                return None
            thing.cy, thing.cx = pos
            placed.append(thing)
    image = background.copy()
    order = rng.permutation(len(things))
    masks = {}
    for k in order:
        if absent and k == 0:
            continue  # the referent is left out: the right answer is an empty mask
        masks[int(k)] = paint(image, things[int(k)], rng)
    if absent:
        return image, np.zeros(background.shape[:2], bool), expression, target.shape, things[1:]
    return image, masks[0], expression, target.shape, things


def random_background(source: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = source.shape[:2]
    if h < size or w < size:
        reps = (-(-size // h), -(-size // w), 1)
        source = np.tile(source, reps)
        h, w = source.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    chip = source[y:y + size, x:x + size]
    if rng.integers(2):
        chip = chip[:, ::-1]
    return np.ascontiguousarray(chip)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, optimize=False, compress_level=6)


def make_dataset(sources: list[str | Path], out_dir: str | Path, splits: dict[str, int] | None = None,
                 chip_size: int = 96, seed: int = 0, types: tuple[str, ...] = EXPRESSION_TYPES,
                 absent_fraction: float = 0.0, overwrite: bool = False) -> dict:
    """Write the dataset (see module docstring); returns the report also written to ``synth_report.json``."""
    splits = splits or {"train": 2000, "val": 200, "test": 400}
    unknown = set(types) - set(LAYOUTS)
    if unknown:
        raise InputError(f"unknown expression type(s): {', '.join(sorted(unknown))}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError("exists and is not empty (use --overwrite)", out)
    images = [read_source(p) for p in sources]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    report: dict = {"sources": [Path(p).name for p in sources], "chip_size": chip_size, "seed": seed,
                    "types": list(types), "absent_fraction": absent_fraction, "splits": {}}
    vocab: dict[str, set[str]] = {}
    for k, (split, count) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, k])
        rows, kinds = [], Counter()
        n = 0
        while n < count:
            kind = types[n % len(types)]
            if split == "train" and absent_fraction > 0 and rng.random() < absent_fraction:
                kind = "absent"
            background = random_background(images[int(rng.integers(len(images)))], chip_size, rng)
            chip = compose_chip(background, kind, rng)
            if chip is None:
                continue
            image, mask, expression, category, _ = chip
            sid = f"{split}_{n:05d}"
            _save_png(image, out / "images" / f"{sid}.png")
            _save_png(mask.astype(np.uint8) * 255, out / "masks" / f"{sid}.png")
            rows.append({"id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png",
                         "expression": expression, "category": category, "type": kind})
            kinds[kind] += 1
            n += 1
        tmp = out / f".{split}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "image", "mask", "expression", "category", "type"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out / f"{split}.csv")
        vocab[split] = set().union(*(words(r["expression"]) for r in rows)) if rows else set()
        report["splits"][split] = {"samples": len(rows), "by_type": dict(kinds)}
    train_words = vocab.get("train", set())
    report["heldout_vocabulary_check"] = {
        split: {"words": len(v), "unseen_in_train": sorted(v - train_words)}
        for split, v in vocab.items() if split != "train"
    }
    (out / "synth_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def mirror_indices(start: int, count: int, length: int) -> np.ndarray:
    """Source indices of positions ``start .. start+count`` in the mirror-tiling of an axis of ``length``
    (0 1 2 | 2 1 0 | 0 1 2 ...): no hard seams when real imagery is tiled to a larger size."""
    index = np.arange(start, start + count) % (2 * length)
    return np.where(index < length, index, 2 * length - 1 - index)


def make_demo_scene(source: str | Path, out_dir: str | Path, size: int = 2048, cell: int = 96, seed: int = 0,
                    prompts: tuple[str, ...] = ("the red circle", "the blue square", "the yellow triangle"),
                    radius_px: tuple[float, float] = (6.0, 12.0), overwrite: bool = False) -> dict:
    """A large georeferenced scene: the source's real pixels mirror-tiled to ``size``², the source's CRS, pixel
    size and origin, with one object per ``cell``² cell (random shape/colour, jittered). Writes
    ``scene.tif`` (tiled, DEFLATE; object radii ``radius_px`` match the chips of :func:`make_dataset`),
    ``objects.geojson`` (every object with shape/colour, EPSG:4326) and
    ``gt/<prompt-slug>.geojson`` with the polygons of the objects each "the <colour> <shape>" prompt refers to."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape as to_shape
    from shapely.ops import unary_union

    out = Path(out_dir)
    if (out / "scene.tif").exists() and not overwrite:
        raise OutputError("scene.tif exists (use --overwrite)", out)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    try:
        with rasterio.open(source) as src:
            crs, transform = src.crs, src.transform
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read source imagery: {exc}", source) from exc
    pixels = read_source(source)
    sh, sw = pixels.shape[:2]
    rows, cols = mirror_indices(0, size, sh), mirror_indices(0, size, sw)
    records = []
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "photometric": "RGB"}
    tmp = out / ".scene.tif.tmp"
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, cell):
            block = pixels[rows[r0:r0 + cell]][:, cols].copy()
            h = block.shape[0]
            for c0 in range(0, size, cell):
                w = min(cell, size - c0)
                radius = float(rng.uniform(*radius_px))
                margin = radius + 2
                if h < 2 * margin + 1 or w < 2 * margin + 1:
                    continue
                thing = Thing(SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                              r0 + float(rng.uniform(margin, h - margin)), c0 + float(rng.uniform(margin, w - margin)),
                              radius)
                view = block[:, c0:c0 + w]
                mask = paint(view, thing, rng, oy=r0, ox=c0)
                win_transform = rasterio.windows.transform(rasterio.windows.Window(c0, r0, w, h), transform)
                geom = unary_union([to_shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask,
                                                                    transform=win_transform) if v == 1])
                records.append({"shape": thing.shape, "colour": thing.colour, "pixels": int(mask.sum()),
                                "geometry": geom})
            dst.write(block.transpose(2, 0, 1), window=rasterio.windows.Window(0, r0, size, h))
    os.replace(tmp, out / "scene.tif")
    objects = gpd.GeoDataFrame(records, geometry="geometry", crs=crs)
    objects.to_crs("EPSG:4326").to_file(out / "objects.geojson", driver="GeoJSON")
    written = {}
    for prompt in prompts:
        parts = prompt.split()
        colour, shape_name = parts[-2], parts[-1]
        chosen = objects[(objects["colour"] == colour) & (objects["shape"] == shape_name)].copy()
        chosen["prompt"] = prompt
        path = out / "gt" / f"{slugify(prompt, limit=None)}.geojson"
        chosen.to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
        written[prompt] = {"path": str(path.relative_to(out)), "objects": len(chosen)}
    report = {"source": Path(source).name, "size": size, "cell": cell, "seed": seed, "crs": str(crs),
              "objects": len(objects), "prompts": written}
    (out / "scene_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


GROUNDING_KINDS = ("attribute", "position", "relation", "comparison")


def _sized_layout(things: list[Thing], kind: str, relation, chip: int, size: int, object_px: float,
                  rng: np.random.Generator, distractors: int, gap: float) -> list[Thing] | None:
    """A chip layout spread over a ``size`` px scene with the referent ``object_px`` px across (every object's radius
    scaled alike, so "the larger of the two" stays true), plus ``distractors`` objects of a shape that no
    object of the layout has (so the expression stays unambiguous); None when it does not fit."""
    spread = size / chip
    ratio = object_px / 2 / things[0].radius
    scaled = [Thing(t.shape, t.colour, t.cy * spread, t.cx * spread, t.radius * ratio) for t in things]
    for i, t in enumerate(scaled):
        if not (t.radius + 1 <= t.cy <= size - t.radius - 1 and t.radius + 1 <= t.cx <= size - t.radius - 1):
            return None
        if not _free(scaled[:i], t.cy, t.cx, t.radius, gap):
            return None
    half = size / 2
    if kind == "position":  # every object inside its own quadrant
        if any(abs(t.cy - half) < t.radius + gap or abs(t.cx - half) < t.radius + gap for t in scaled):
            return None
    if relation is not None:  # the referent wholly on its side of the anchor, the look-alike on the other
        side = relation[0]
        target, other, anchor = scaled[0], scaled[1], scaled[2]
        left, right = (target, other) if side == "left" else (other, target)
        if not (left.cx + left.radius < anchor.cx - anchor.radius and right.cx - right.radius > anchor.cx + anchor.radius):
            return None
    free_shapes = [shape for shape in SHAPES if shape not in {t.shape for t in things}]
    for _ in range(distractors):
        if not free_shapes:
            break
        r = float(rng.uniform(0.35, 0.75)) * object_px
        pos = _place(rng, scaled, size, r)
        if pos is None:
            continue
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        scaled.append(Thing(free_shapes[int(rng.integers(len(free_shapes)))], colour, pos[0], pos[1], r))
    return scaled


def make_grounding_scene(source: str | Path, out_path: str | Path, kind: str = "position", scale: int = 8,
                         seed: int = 0, chip: int = 96, size: int | None = None, object_px: float | None = None,
                         distractors: int = 0, tries: int = 500) -> dict:
    """A scene where several look-alike objects stand and exactly one matches the expression, for the
    scene-grounding scenario. ``kind``: ``position``, ``relation`` or ``comparison`` (the expression holds for
    the scene as a whole and needs context wider than a tile) or ``attribute`` ("the red circle": a tile holding
    the referent sees all it needs; the look-alikes differ in colour or shape).

    A chip layout of :func:`compose_chip` (``chip`` px) is placed on real pixels of ``source``, mirror-tiled with
    the source's CRS and pixel size. By default the whole layout is scaled by ``scale`` (a ``chip * scale`` px
    scene, objects ``scale`` times their chip size). With ``size`` and ``object_px``, the layout is spread over a
    ``size`` px scene and the referent measures ``object_px`` px across (other objects keep their size relative to
    it), with ``distractors`` extra objects of a shape the expression does not name; layouts that do not fit
    (overlaps, an object across the quadrant or side it is named by) are redrawn, up to ``tries`` times.
    Writes ``out_path`` (GeoTIFF) and ``<stem>.gt.tif`` (1 = the referent) and returns the expression. Seeded:
    same arguments, same files."""
    import rasterio

    if kind not in GROUNDING_KINDS:
        raise ValueError(f"kind must be one of {', '.join(GROUNDING_KINDS)}, got {kind!r}")
    if (size is None) != (object_px is None):
        raise ValueError("give both size and object_px, or neither")
    out_path = Path(out_path)
    rng = np.random.default_rng(seed)
    pixels = read_source(source)
    with rasterio.open(source) as src:
        crs, transform = src.crs, src.transform
    placed = None
    for _ in range(tries):
        layout = None
        while layout is None:
            layout = compose_chip(random_background(pixels, chip, rng), kind, rng)
        _, _, expression, _, things = layout
        if size is None:
            placed = [Thing(t.shape, t.colour, t.cy * scale, t.cx * scale, t.radius * scale) for t in things]
            break
        relation = None
        if kind == "relation":
            side = "left" if " left of " in expression else "right"
            relation = (side, things[2])
        placed = _sized_layout(things, kind, relation, chip, size, object_px, rng, distractors,
                               gap=max(3.0, object_px / 4))
        if placed is not None:
            break
    if placed is None:
        raise ValueError(f"no {kind} layout with {object_px} px objects fits a {size} px scene in {tries} tries")
    look_alikes = len(things) - 1
    size = size or chip * scale
    r0, c0 = int(rng.integers(0, pixels.shape[0])), int(rng.integers(0, pixels.shape[1]))
    scene = pixels[mirror_indices(r0, size, pixels.shape[0])][:, mirror_indices(c0, size, pixels.shape[1])].copy()
    masks = [paint(scene, t, rng) for t in placed]
    target = masks[0]
    for other in masks[1:]:
        target &= ~other  # painted later over the referent: not part of it
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(scene.transpose(2, 0, 1))
    gt_path = out_path.with_suffix(".gt.tif")
    with rasterio.open(gt_path, "w", **{**profile, "count": 1}) as dst:
        dst.write(target.astype(np.uint8), 1)
    return {"scene": str(out_path), "gt": str(gt_path), "expression": expression, "kind": kind,
            "look_alikes": look_alikes, "distractors": len(placed) - len(things), "size": size,
            "object_px": round(2 * placed[0].radius, 1), "context": kind != "attribute"}

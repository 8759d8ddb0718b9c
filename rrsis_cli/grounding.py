"""Scene-level grounding (``predict --grounding scene``): coarse-to-fine prediction for expressions that name one
object of a whole scene ("the largest pond in the north", "the green square in the upper left"), without losing
the small objects that remote-sensing scenes are full of.

Tiled inference judges every tile alone, so every tile holding a look-alike claims it. Scene grounding instead
judges every object at the **coarsest scale at which the model still resolves it** (the widest context):

1. **Plan.** A pyramid of coarse levels, chosen from the scene and the model (:func:`plan_levels`). Level
   factor ``f`` means one level pixel = ``f`` × ``f`` scene pixels. The coarsest level shows the whole scene in one
   model input (``f = max(H, W) / image_size``); each finer level halves ``f``; levels stop at the factor where an
   object of ``min_object_size`` scene pixels would fall below ``resolve_px``, the smallest object (in model-input
   pixels) the model resolves (config ``min_object_px``, default :data:`RESOLVE_PX`), and never go below 2×
   (a finer "coarse" level costs about as much as the full-resolution pass). When ``min_object_size`` is not
   given (the default) objects down to the model's own limit must be found, which only the full-resolution grid
   can do: the full-resolution pass then runs over the whole scene as the pyramid's finest level. A scene with
   no coarse level of at least 2× (smaller than about two model inputs) falls back to tiled mode.
2. **Coarse passes.** Each level is read decimated (``average`` resampling, overviews when present), cut into
   model-input views (25 % overlap, blended like tiles), and run with the prompt; coarsest first.
3. **Candidates** (:func:`find_candidates`). Connected regions of probability ≥ the threshold at every level,
   coarsest first. A region that overlaps a kept region of a coarser level joins it (the same object, seen
   sharper). A region smaller than its level resolves (size / factor < ``resolve_px``) is *weak*: the level cannot
   judge it, so it is not kept on its own, but it vouches for the object it covers. Any other region is kept,
   unless a coarser level resolves an object of its size (size / factor ≥ ``resolve_px``) and saw nothing there,
   not even a weak region: an object a wider view saw and did not choose is a look-alike, and is rejected. Kept
   candidates from every level are merged into one list; each gets a window (its box grown by ``refine_margin`` ×
   its size).
4. **Fine pass.** The full-resolution tiles that intersect a window (or all of them, see 1) are run, stored,
   journaled and blended exactly as in tiled mode, so inside a window the fine probability equals tiled mode's.
5. **Fusion** (:meth:`CoarseGrounding.fuse_block`, block by block). Each candidate is segmented at the scale that
   suits its size best among full resolution and the levels that found it (closest to :data:`PREFERRED_RATIO` ×
   ``resolve_px`` model pixels): full resolution → the
   fine probability inside its window; a coarse level → ``coarse_weight`` × that level's probability +
   (1 − ``coarse_weight``) × fine, kept where the coarse probability ≥ ``coarse_support``. When the full-resolution
   pass ran everywhere, its detections outside every window are kept when they are too small for any coarse level
   to have judged (size < ``resolve_px`` × the finest coarse factor) or a weak region vouches for them, and
   dropped otherwise; detections inside the window of a rejected look-alike are dropped.

The default ``coarse_weight`` 0.75 was chosen on the synthetic scene-grounding scenario (``benchmarks/RESULTS.md``),
where the full-resolution pass of the single-scale demo model on objects far larger than its training objects is
poor. ``--coarse-size N`` replaces the pyramid with one coarse view of N px over the whole scene (the behaviour of
rrsis 0.1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RESOLVE_PX = 12.0  # smallest object, in model-input pixels, a model resolves unless its config says otherwise
PREFERRED_RATIO = 1.5  # objects are segmented at the scale where they measure about 1.5 x resolve_px
WEAK_KEEP = 0.8  # a weak region that no finer level saw is kept from 0.8 x resolve_px (10 of 12 px)
MIN_COARSE_FACTOR = 2.0  # a coarse level finer than this costs about as much as the full-resolution pass
MAX_LEVEL_PIXELS = 2048 * 2048  # bounds the memory of the finest coarse level (three float32 maps of this size)
MAX_LISTED = 50  # candidates and rejected candidates listed in the manifest (all are counted)


@dataclass
class Level:
    """One coarse level: its probability map on the level grid and what it cost."""

    factor: float  # scene pixels per level pixel (the larger of the two axes for a single anisotropic view)
    scale: tuple[float, float]  # scene pixels per level pixel (rows, cols)
    prob: np.ndarray
    views: int
    view_size: int
    seconds: float = 0.0
    candidates: int = 0

    def upsample(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Level probability bilinearly interpolated at the centres of scene pixels rows [row0, row1) x cols
        [col0, col1)."""
        from scipy.ndimage import map_coordinates

        ys = (np.arange(row0, row1) + 0.5) / self.scale[0] - 0.5
        xs = (np.arange(col0, col1) + 0.5) / self.scale[1] - 0.5
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        return map_coordinates(self.prob, [yy, xx], order=1, mode="nearest").astype(np.float32)

    def record(self) -> dict[str, Any]:
        return {"factor": round(self.factor, 3), "shape": list(self.prob.shape), "view_size": self.view_size,
                "views": self.views, "candidates": self.candidates, "seconds": round(self.seconds, 3)}


@dataclass
class Plan:
    """What :func:`plan_levels` decided: coarse factors (coarsest first), whether the full-resolution pass runs
    everywhere, or why scene grounding cannot work here (``fallback``)."""

    factors: list[float]
    fine_everywhere: bool
    resolve_px: float
    min_object_size: float | None
    notes: list[str] = field(default_factory=list)
    fallback: str | None = None


def model_resolve_px(model) -> float:
    """Smallest object (model-input pixels) the model resolves: config ``min_object_px`` or :data:`RESOLVE_PX`."""
    return float(getattr(model, "config", {}).get("min_object_px") or RESOLVE_PX)


def plan_levels(height: int, width: int, view: int, resolve_px: float, min_object_size: float | None = None,
                max_level_pixels: int = MAX_LEVEL_PIXELS) -> Plan:
    """The coarse levels for a ``height`` x ``width`` scene and a model with ``view`` px inputs (module docstring,
    step 1). ``min_object_size``: the smallest referent to find, scene pixels (None: the model's limit)."""
    coarsest = max(height, width) / view
    f_min = None if min_object_size is None else min_object_size / resolve_px
    fine_everywhere = f_min is None or f_min < MIN_COARSE_FACTOR
    plan = Plan([], fine_everywhere, resolve_px, min_object_size)
    if coarsest < MIN_COARSE_FACTOR:
        plan.fallback = (f"the scene ({width}x{height} px) is less than {MIN_COARSE_FACTOR:g}x the model's input "
                         f"({view} px) across: no coarse scale can add context")
        return plan
    floor = MIN_COARSE_FACTOR if fine_everywhere else f_min
    # memory: the finest level holds at most max_level_pixels
    capped = math.sqrt(height * width / max_level_pixels)
    if capped > floor:
        plan.notes.append(f"finest coarse level limited to 1/{capped:.1f} by its memory bound")
        if not fine_everywhere:
            plan.notes.append(f"objects smaller than about {resolve_px * capped:.0f} px may be missed; use "
                              "--grounding tiles or --min-object-size 0 (full-resolution pass everywhere) for them")
        floor = capped
    factor = coarsest
    while factor >= floor * (1 - 1e-9):
        plan.factors.append(factor)
        factor /= 2
    if not plan.factors:
        plan.factors.append(coarsest)  # the whole scene in one view already resolves min_object_size
    elif not fine_everywhere and plan.factors[-1] > floor * 1.25:
        plan.factors.append(floor)  # so that objects of min_object_size are resolved by some level
    return plan


def context_reach(levels: list[Level], resolve_px: float, height: int, width: int) -> list[dict[str, int]]:
    """What context each object size is judged in, coarsest level first: objects of ``objects_from_px`` scene
    pixels and more are resolved at that level (``resolve_px`` × its factor) and judged against ``context_px``
    scene pixels across (one model input at that level, or the whole scene). Smaller objects than the finest
    level's are judged only within one full-resolution tile, as in tiled mode: a prompt about their relation to
    things farther away cannot be resolved for them."""
    scene = max(height, width)
    return [{"objects_from_px": int(math.ceil(resolve_px * lv.factor)),
             "context_px": min(scene, int(round(lv.view_size * lv.factor)))} for lv in levels]


def context_text(reach: list[dict[str, int]], height: int, width: int, tile: int) -> str:
    """The context note of the log and manifest, e.g. "objects of 128 px and more are judged against the whole
    scene, of 64 px and more against 512 px around them, ...; smaller ones only within one 96 px tile"."""
    scene = max(height, width)
    parts = [f"of {r['objects_from_px']} px and more against "
             + ("the whole scene" if r["context_px"] >= scene else f"{r['context_px']} px around them")
             for r in reach]
    return (f"context: objects {', '.join(parts)}; smaller ones only within one {tile} px tile, as in tiled mode "
            "(a prompt relating them to things farther away cannot be resolved for them)")


def run_level(reader, model, text, factor: float, view: int, overlap: float, batch_size: int, device,
              precision: str) -> Level:
    """The scene decimated by ``factor`` (average resampling), cut into ``view`` px views with ``overlap``,
    run through the model and blended with the tiles' weights (module docstring, step 2)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from rrsis_cli.inference import infer
    from rrsis_cli.tiling import TileGrid, blend_weights

    started = time.perf_counter()
    ds = reader.ds
    height, width = ds.height, ds.width
    h, w = max(1, math.ceil(height / factor - 1e-6)), max(1, math.ceil(width / factor - 1e-6))
    grid = TileGrid.for_scene(h, w, view, overlap)
    weights = blend_weights(view)
    psum = np.zeros((h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    valid_level = np.zeros((h, w), bool)
    for batch in grid.batches(batch_size):
        views, placed = [], []
        for index in batch:
            r, c = grid.origin(index)
            nr, nc = min(view, h - r), min(view, w - c)
            window = Window(c * factor, r * factor, min(nc * factor, width - c * factor),
                            min(nr * factor, height - r * factor))
            raw = ds.read(reader.bands, window=window, out_shape=(len(reader.bands), nr, nc),
                          resampling=Resampling.average)
            valid = reader.valid(window, out_shape=(nr, nc))
            data = np.zeros((3, view, view), np.float32)
            data[:, :nr, :nc] = reader.normalise(raw)
            data[:, :nr, :nc][:, ~valid] = 0.0
            valid_level[r:r + nr, c:c + nc] |= valid
            views.append(data)
            placed.append((r, c, nr, nc))
        for (r, c, nr, nc), prob in zip(placed, infer(model, text, views, device, precision), strict=True):
            psum[r:r + nr, c:c + nc] += prob[:nr, :nc] * weights[:nr, :nc]
            wsum[r:r + nr, c:c + nc] += weights[:nr, :nc]
    prob = np.where(valid_level, psum / np.maximum(wsum, 1e-12), 0.0).astype(np.float32)
    return Level(factor, (factor, factor), prob, len(grid), view, time.perf_counter() - started)


def read_coarse_view(reader, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) normalised float view of the whole scene and its (size, size) valid mask."""
    from rasterio.enums import Resampling

    ds = reader.ds
    shape = (len(reader.bands), size, size)
    data = reader.normalise(ds.read(reader.bands, out_shape=shape, resampling=Resampling.average))
    valid = reader.valid(out_shape=(size, size))
    data[:, ~valid] = 0.0
    return data, valid


def run_single_view(reader, model, text, size: int, device, precision: str) -> Level:
    """``--coarse-size``: the whole scene in one ``size`` x ``size`` view (stretched to a square)."""
    from rrsis_cli.inference import infer

    started = time.perf_counter()
    view, valid = read_coarse_view(reader, size)
    prob = infer(model, text, [view], device, precision)[0]
    prob[~valid] = 0.0
    scale = (reader.ds.height / size, reader.ds.width / size)
    return Level(max(scale), scale, prob, 1, size, time.perf_counter() - started)


@dataclass
class Candidate:
    """A region of one level, in scene pixels."""

    level: int
    bbox: tuple[int, int, int, int]  # row0, row1, col0, col1 (scene pixels, end exclusive)
    size: float  # the longer side of the box, scene pixels
    score: float
    pixels: int  # level pixels

    def overlaps(self, box: tuple[int, int, int, int]) -> bool:
        return self.bbox[0] < box[1] and box[0] < self.bbox[1] and self.bbox[2] < box[3] and box[2] < self.bbox[3]


@dataclass
class Group:
    """One object: the candidates of every level that saw it (the first is the coarsest)."""

    members: list[Candidate]
    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    segment_factor: float = 1.0  # 1: full resolution; else the coarse level whose probability segments it
    segment_level: int | None = None

    @property
    def size(self) -> float:
        return max(m.size for m in self.members)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        boxes = [m.bbox for m in self.members]
        return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes),
                max(b[3] for b in boxes))


def level_candidates(level: Level, index: int, threshold: float, height: int, width: int) -> list[Candidate]:
    """Connected regions of ``level.prob`` ≥ ``threshold`` as candidates in scene pixels."""
    from scipy.ndimage import find_objects, label

    labels, _ = label(level.prob >= threshold)
    found = []
    sr, sc = level.scale
    for number, region in enumerate(find_objects(labels), start=1):
        if region is None:
            continue
        pixels = labels[region] == number
        r0, r1 = region[0].start * sr, region[0].stop * sr
        c0, c1 = region[1].start * sc, region[1].stop * sc
        box = (max(0, int(r0)), min(height, math.ceil(r1)), max(0, int(c0)), min(width, math.ceil(c1)))
        found.append(Candidate(index, box, float(max(r1 - r0, c1 - c0)), float(level.prob[region][pixels].mean()),
                               int(pixels.sum())))
    return found


def find_candidates(levels: list[Level], threshold: float, resolve_px: float, margin: float, height: int,
                    width: int) -> tuple[list[Group], list[Group], list[Candidate]]:
    """Kept and rejected objects over all levels, coarsest first, and the weak candidates (module docstring,
    step 3)."""
    kept: list[Group] = []
    rejected: list[Group] = []
    weak: list[Candidate] = []  # smaller than the level resolves: never kept alone, but they vouch for an object
    for index, level in enumerate(levels):
        found = level_candidates(level, index, threshold, height, width)
        level.candidates = len(found)
        for cand in found:
            owner = next((g for g in kept if any(cand.overlaps(m.bbox) for m in g.members)), None)
            if owner is not None:
                owner.members.append(cand)
                continue
            judged = next((g for g in rejected if any(cand.overlaps(m.bbox) for m in g.members)), None)
            if judged is not None:
                judged.members.append(cand)
                continue
            if cand.size / level.factor < resolve_px:
                weak.append(cand)
            elif any(cand.size / lv.factor >= resolve_px for lv in levels[:index]) and \
                    not any(cand.overlaps(w.bbox) for w in weak):
                rejected.append(Group([cand]))  # a wider view resolved an object this size and did not choose it
            else:
                kept.append(Group([cand]))
    judged = [m for g in kept + rejected for m in g.members]
    promoted: list[Group] = []
    for cand in weak:  # seen only by views too coarse to judge it, and by no finer one: the only evidence there is
        if cand.size / levels[cand.level].factor < WEAK_KEEP * resolve_px or any(cand.overlaps(m.bbox) for m in judged):
            continue
        owner = next((g for g in promoted if any(cand.overlaps(m.bbox) for m in g.members)), None)
        if owner is not None:
            owner.members.append(cand)
        else:
            promoted.append(Group([cand]))
    kept += promoted
    for group in kept + rejected:
        r0, r1, c0, c1 = group.bbox
        grow = max(margin * group.size, 2 * levels[group.members[0].level].factor)
        group.window = (max(0, int(r0 - grow)), min(height, math.ceil(r1 + grow)),
                        max(0, int(c0 - grow)), min(width, math.ceil(c1 + grow)))
    return kept, rejected, weak


def segment_scale(size: float, factors: dict[int, float], resolve_px: float) -> int | None:
    """Which of the levels ``factors`` (index → factor: the levels that found the object) or full resolution
    (None) segments an object of ``size`` scene pixels: the one where it measures closest to
    ``PREFERRED_RATIO`` × ``resolve_px`` model pixels (on a log scale; full resolution wins ties)."""
    target = PREFERRED_RATIO * resolve_px
    options = [(abs(math.log(max(size, 1.0) / target)), -1, None)]
    options += [(abs(math.log(max(size / f, 1e-3) / target)), i, i) for i, f in factors.items()]
    return min(options, key=lambda o: (o[0], o[1]))[2]


@dataclass
class CoarseGrounding:
    """Result of the coarse passes: the levels, the kept and rejected objects and their windows."""

    levels: list[Level]
    plan: Plan
    groups: list[Group] = field(default_factory=list)
    rejected: list[Group] = field(default_factory=list)
    weak: list[Candidate] = field(default_factory=list)
    fine_kept: int = 0  # full-resolution detections kept outside every window (counted during fusion)
    fine_dropped: int = 0
    context: list[dict[str, int]] = field(default_factory=list)  # :func:`context_reach` of the levels

    @property
    def windows(self) -> list[tuple[int, int, int, int]]:
        return [g.window for g in self.groups]

    @property
    def finest_factor(self) -> float:
        return min(lv.factor for lv in self.levels)

    def resampled(self, height: int, width: int) -> np.ndarray:
        """(levels, h, w) probabilities of every level on the grid of the finest one (its shape over the scene's
        extent: ``height`` x ``width`` scene pixels), for ``coarse.tif``."""
        from scipy.ndimage import map_coordinates

        finest = min(self.levels, key=lambda lv: lv.factor)
        h, w = finest.prob.shape
        sr, sc = height / h, width / w  # scene pixels per output pixel
        out = np.zeros((len(self.levels), h, w), np.float32)
        for k, level in enumerate(self.levels):
            ys = (np.arange(h) + 0.5) * sr / level.scale[0] - 0.5
            xs = (np.arange(w) + 0.5) * sc / level.scale[1] - 0.5
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            out[k] = map_coordinates(level.prob, [yy, xx], order=1, mode="nearest")
        return out

    def candidates(self, rejected: bool = False) -> list[dict[str, Any]]:
        """The first :data:`MAX_LISTED` kept (or rejected) objects for the manifest."""
        return [self.describe(g) for g in (self.rejected if rejected else self.groups)[:MAX_LISTED]]

    def describe(self, group: Group) -> dict[str, Any]:
        first = group.members[0]
        return {"bbox_pixels": list(group.bbox), "window": list(group.window), "size_px": round(group.size, 1),
                "score": round(max(m.score for m in group.members), 4), "coarse_pixels": first.pixels,
                "level": first.level, "factor": round(self.levels[first.level].factor, 3),
                "levels": sorted({m.level for m in group.members}),
                "segmented_at": "full resolution" if group.segment_level is None else
                f"level {group.segment_level} (1/{self.levels[group.segment_level].factor:.2f})"}

    def fuse_block(self, fine: np.ndarray, covered: np.ndarray, row0: int, row1: int, col0: int, col1: int,
                   threshold: float, coarse_weight: float, coarse_support: float) -> tuple[np.ndarray, np.ndarray]:
        """(probability, keep) of a block (module docstring, step 5)."""
        from scipy.ndimage import find_objects, label

        prob = np.zeros(fine.shape, np.float32)
        keep = np.zeros(fine.shape, bool)
        claimed = np.zeros(fine.shape, bool)
        fine = np.where(covered, fine, 0.0).astype(np.float32)
        for group, chosen in [(g, True) for g in self.groups] + [(g, False) for g in self.rejected]:
            r0, r1, c0, c1 = group.window
            y0, y1, x0, x1 = max(r0, row0), min(r1, row1), max(c0, col0), min(c1, col1)
            if y0 >= y1 or x0 >= x1:
                continue
            part = (slice(y0 - row0, y1 - row0), slice(x0 - col0, x1 - col0))
            claimed[part] = True
            if not chosen:
                continue
            if group.segment_level is None:
                p = fine[part]
                k = p >= threshold
            else:
                support = self.levels[group.segment_level].upsample(y0, y1, x0, x1)
                p = np.where(covered[part], coarse_weight * support + (1 - coarse_weight) * fine[part], 0.0)
                k = (p >= threshold) & (support >= coarse_support)
            prob[part] = np.maximum(prob[part], p)
            keep[part] |= k
        if self.plan.fine_everywhere:
            limit = self.plan.resolve_px * self.finest_factor
            labels, _ = label((fine >= threshold) & ~claimed)
            for number, region in enumerate(find_objects(labels), start=1):
                if region is None:
                    continue
                box = (row0 + region[0].start, row0 + region[0].stop, col0 + region[1].start, col0 + region[1].stop)
                if max(box[1] - box[0], box[3] - box[2]) < limit or any(w.overlaps(box) for w in self.weak):
                    pixels = labels[region] == number
                    keep[region] |= pixels
                    prob[region] = np.where(pixels, fine[region], prob[region])
                    self.fine_kept += 1
                else:
                    self.fine_dropped += 1
        return prob, keep


def coarse_pass(reader, model, text, options, tile: int, device, notes: list[str] | None = None
                ) -> CoarseGrounding | None:
    """Plan and run the coarse levels and find the candidates; None when scene grounding cannot work here
    (``notes`` then holds why)."""
    ds = reader.ds
    resolve = model_resolve_px(model)
    view = int(model.config["image_size"])
    if options.coarse_size:
        size = int(options.coarse_size)
        plan = plan_levels(ds.height, ds.width, view, resolve, options.min_object_size)
        plan.fallback, plan.factors, plan.notes = None, [max(ds.height, ds.width) / size], []
        levels = [run_single_view(reader, model, text, size, device, options.precision)]
    else:
        plan = plan_levels(ds.height, ds.width, view, resolve, options.min_object_size)
        if plan.fallback:
            if notes is not None:
                notes.append(plan.fallback)
            return None
        levels = [run_level(reader, model, text, f, view, options.overlap, options.batch_size, device,
                            options.precision) for f in plan.factors]
    grounding = CoarseGrounding(levels, plan)
    grounding.groups, grounding.rejected, grounding.weak = find_candidates(
        levels, options.threshold, resolve, options.refine_margin, ds.height, ds.width)
    for group in grounding.groups:  # only a level that found the object, or full resolution, segments it
        found = {m.level: levels[m.level].factor for m in group.members}
        group.segment_level = segment_scale(group.size, found, resolve)
        group.segment_factor = 1.0 if group.segment_level is None else found[group.segment_level]
    grounding.context = context_reach(levels, resolve, ds.height, ds.width)
    if notes is not None:
        notes.extend(plan.notes)
        notes.append(context_text(grounding.context, ds.height, ds.width, tile))
    return grounding


def tiles_in_windows(grid, windows: list[tuple[int, int, int, int]]) -> list[int]:
    """Sorted indices of the grid tiles that intersect any window."""
    active: set[int] = set()
    for row0, row1, col0, col1 in windows:
        active.update(grid.overlapping(row0, row1, col0, col1))
    return sorted(active)


def scales_text(grounding: CoarseGrounding) -> str:
    """The coarse scales as "1/10.7, 1/5.3 (96 px views)" for messages."""
    sizes = ", ".join(f"1/{lv.factor:.1f}" for lv in grounding.levels)
    return f"{sizes} ({grounding.levels[0].view_size} px views)"


def empty_advice(grounding: CoarseGrounding, threshold: float) -> str:
    """The zero-candidate warning: the scales tried, what they can see, what to try."""
    plan = grounding.plan
    smallest = plan.resolve_px * grounding.finest_factor
    if plan.fine_everywhere:
        seen = (f"objects of about {smallest:.0f} px and more were judged there and the full-resolution pass "
                "found nothing smaller")
        tries = f"try a lower --threshold (now {threshold:g}) or --grounding tiles"
    else:
        seen = f"objects smaller than about {smallest:.0f} px are not resolved at these scales"
        tries = (f"try --min-object-size {max(1, int(smallest / 2))} (or 0 for a full-resolution pass everywhere), "
                 f"a lower --threshold (now {threshold:g}) or --grounding tiles")
    return (f"scene grounding found no candidate at coarse scale(s) {scales_text(grounding)}; {seen}; the mask is "
            f"empty; {tries}")

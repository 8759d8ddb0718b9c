"""Referring-segmentation metrics with the protocol of the official LAVT/RMSIN test scripts (DESIGN §5).

Per sample: I = |P ∧ G|, U = |P ∨ G|, IoU = I / U (0 when U = 0). Over samples: oIoU = ΣI / ΣU, mIoU = mean IoU,
Pr@X = share of samples with IoU ≥ X for X in 0.5 … 0.9. Switches: ``empty_union`` "zero" (official), "one" or
"exclude"; ``strict`` uses IoU > X.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_UNION = ("zero", "one", "exclude")


def intersection_union(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> tuple[int, int]:
    """Pixel counts |P ∧ G| and |P ∨ G| of two boolean masks (optionally only where ``valid``)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    return int((pred & gt).sum()), int((pred | gt).sum())


def sample_ious(inter: np.ndarray, union: np.ndarray, empty_union: str = "zero") -> np.ndarray:
    """IoU per sample; an empty union scores 0 (official), 1, or NaN (then excluded from the summary)."""
    if empty_union not in EMPTY_UNION:
        raise ValueError(f"empty_union must be one of {EMPTY_UNION}")
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    fill = {"zero": 0.0, "one": 1.0, "exclude": np.nan}[empty_union]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), fill)


def summarize_iu(inter: np.ndarray, union: np.ndarray, empty_union: str = "zero",
                 strict: bool = False) -> dict[str, float]:
    """oIoU, mIoU, Pr@X and n_samples (fractions in [0, 1]) from per-sample I and U."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    iou = sample_ious(inter, union, empty_union)
    keep = ~np.isnan(iou)
    iou, inter, union = iou[keep], inter[keep], union[keep]
    out: dict[str, float] = {
        "oIoU": float(inter.sum() / union.sum()) if union.sum() > 0 else 0.0,
        "mIoU": float(iou.mean()) if iou.size else 0.0,
    }
    for t in THRESHOLDS:
        hits = iou > t if strict else iou >= t
        out[f"Pr@{t}"] = float(hits.mean()) if iou.size else 0.0
    out["n_samples"] = int(iou.size)
    return out


class MetricAccumulator:
    """Collects per-sample I/U, each optionally labelled (``category=...``, ``attribute=...``), and summarises
    them overall and per label value. A positional ``group`` is the ``category`` label."""

    def __init__(self, empty_union: str = "zero", strict: bool = False):
        self.empty_union = empty_union
        self.strict = strict
        self.inter: list[int] = []
        self.union: list[int] = []
        self.labels: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))

    def add(self, inter: int, union: int, group: str | None = None, **labels: str | None) -> float:
        index = len(self.inter)
        self.inter.append(int(inter))
        self.union.append(int(union))
        for kind, value in {"category": group, **labels}.items():
            if value is not None and value != "":
                self.labels[kind][str(value)].append(index)
        return float(sample_ious([inter], [union], self.empty_union)[0])

    def summary(self) -> dict[str, float]:
        return summarize_iu(np.array(self.inter), np.array(self.union), self.empty_union, self.strict)

    def by_group(self, kind: str = "category") -> dict[str, dict[str, float]]:
        inter, union = np.array(self.inter), np.array(self.union)
        return {g: summarize_iu(inter[idx], union[idx], self.empty_union, self.strict)
                for g, idx in sorted(self.labels.get(kind, {}).items())}

    def ious(self) -> np.ndarray:
        """Per-sample IoU under this accumulator's empty-union rule (NaN = excluded)."""
        return sample_ious(np.array(self.inter), np.array(self.union), self.empty_union)

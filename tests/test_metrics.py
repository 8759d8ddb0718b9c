"""Metric protocol (DESIGN §5) on hand-computed values."""

import numpy as np
import pytest

from rrsis_cli.metrics import MetricAccumulator, intersection_union, summarize_iu


def test_hand_computed_official_protocol():
    # samples: IoU 2/4=0.5, 3/3=1.0, 0/5=0 (empty prediction), 0/0 (both empty -> 0 officially)
    s = summarize_iu([2, 3, 0, 0], [4, 3, 5, 0])
    assert s["oIoU"] == pytest.approx(5 / 12)
    assert s["mIoU"] == pytest.approx(1.5 / 4)
    assert s["Pr@0.5"] == pytest.approx(2 / 4)  # >= counts IoU exactly 0.5
    assert s["Pr@0.9"] == pytest.approx(1 / 4)
    assert s["n_samples"] == 4


def test_switches():
    inter, union = [2, 0], [4, 0]
    assert summarize_iu(inter, union, empty_union="one")["mIoU"] == pytest.approx(0.75)
    excluded = summarize_iu(inter, union, empty_union="exclude")
    assert excluded["mIoU"] == pytest.approx(0.5) and excluded["n_samples"] == 1
    assert summarize_iu(inter, union, strict=True)["Pr@0.5"] == 0.0


def test_masks_and_groups():
    pred = np.array([[1, 1], [0, 0]], bool)
    gt = np.array([[1, 0], [1, 0]], bool)
    assert intersection_union(pred, gt) == (1, 3)
    assert intersection_union(pred, gt, valid=np.array([[1, 1], [0, 0]], bool)) == (1, 2)
    assert intersection_union(np.zeros((2, 2)), gt) == (0, 2)  # empty prediction
    acc = MetricAccumulator()
    acc.add(1, 2, "car")
    acc.add(3, 3, "tank")
    acc.add(0, 4, "tank")
    groups = acc.by_group()
    assert groups["car"]["mIoU"] == 0.5 and groups["tank"]["mIoU"] == 0.5 and groups["tank"]["n_samples"] == 2
    assert acc.summary()["oIoU"] == pytest.approx(4 / 9)

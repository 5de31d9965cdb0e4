"""Metrics on hand-made label images with known TP / FP / FN (no Qt, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.metrics import (average_precision, dice, evaluate, f1, foreground_iou, match_instances,
                                 mean_matched_iou, mean_metrics)


def squares(shape=(64, 64), boxes=(), ids=None) -> np.ndarray:
    """Label image with one square per ``(y, x, side)``; ids 1..N unless given."""
    out = np.zeros(shape, np.int32)
    for i, (y, x, s) in enumerate(boxes):
        out[y:y + s, x:x + s] = ids[i] if ids else i + 1
    return out


GT = squares(boxes=[(2, 2, 10), (20, 20, 10), (40, 40, 10)])


def test_perfect_prediction_scores_one():
    pred = squares(boxes=[(2, 2, 10), (20, 20, 10), (40, 40, 10)], ids=[9, 300, 5])  # other ids, same objects
    scores = evaluate(GT, pred)
    assert scores["ap50"] == scores["ap75"] == scores["ap50_95"] == scores["f1"] == 1.0
    assert scores["mean_iou"] == scores["dice"] == scores["foreground_iou"] == 1.0
    assert (scores["tp"], scores["fp"], scores["fn"]) == (3, 0, 0)


def test_known_tp_fp_fn():
    # two found, one missed, one invented
    pred = squares(boxes=[(2, 2, 10), (20, 20, 10), (2, 40, 8)])
    m = match_instances(GT, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert average_precision(GT, pred) == pytest.approx(2 / 4)
    assert f1(GT, pred) == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert sorted(map(tuple, m.pairs.tolist())) == [(1, 1), (2, 2)]


def test_shifted_objects_match_by_iou():
    gt = squares(boxes=[(10, 10, 10)])
    shifted2 = squares(boxes=[(10, 12, 10)])  # IoU = 80 / 120
    shifted5 = squares(boxes=[(10, 15, 10)])  # IoU = 50 / 150
    assert mean_matched_iou(gt, shifted2) == pytest.approx(2 / 3)
    assert average_precision(gt, shifted2, 0.5) == 1.0
    assert average_precision(gt, shifted2, 0.75) == 0.0
    assert average_precision(gt, shifted5, 0.5) == 0.0  # one FP and one FN
    m = match_instances(gt, shifted5, 0.5)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert dice(gt, shifted5) == pytest.approx(2 * 50 / 200)
    assert foreground_iou(gt, shifted5) == pytest.approx(50 / 150)


def test_one_prediction_cannot_match_two_objects():
    gt = np.zeros((10, 20), np.int32)
    gt[:, :10], gt[:, 10:] = 1, 2
    pred = np.ones((10, 20), np.int32)  # merged: IoU 0.5 with each
    m = match_instances(gt, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_matching_maximises_the_number_of_pairs():
    # Greedy by IoU would pair P1 with A (0.57) and leave P2 and B alone; the optimum pairs
    # P2-A (0.2) and P1-B (0.22).
    gt = np.zeros((10, 20), np.int32)
    gt[:, 0:10], gt[:, 10:20] = 1, 2
    pred = np.zeros((10, 20), np.int32)
    pred[:, 0:2], pred[:, 2:14] = 2, 1
    m = match_instances(gt, pred, 0.2)
    assert m.tp == 2
    assert sorted(map(tuple, m.pairs.tolist())) == [(1, 2), (2, 1)]


def test_more_matches_win_over_higher_ious_in_a_chain():
    """Five objects and five predictions shifted by 8 px along a row: four pairs overlap at IoU
    0.67, but all five pair up at 0.11, which the matching must find at a threshold of 0.1."""
    gt, pred = np.zeros((3, 70), np.int32), np.zeros((3, 70), np.int32)
    for i in range(5):
        gt[:, 10 * i + 10:10 * i + 20] = i + 1
        pred[:, 10 * i + 2:10 * i + 12] = i + 1
    m = match_instances(gt, pred, 0.1)
    assert (m.tp, m.fp, m.fn) == (5, 0, 0)
    assert match_instances(gt, pred, 0.5).tp == 4


def test_empty_images():
    empty = np.zeros((32, 32), np.uint16)
    both = evaluate(empty, empty)
    assert both["ap50"] == both["f1"] == both["dice"] == both["foreground_iou"] == both["mean_iou"] == 1.0
    one = squares((32, 32), [(2, 2, 5)])
    for gt, pred in ((one, empty), (empty, one)):
        s = evaluate(gt, pred)
        assert s["ap50"] == s["f1"] == s["dice"] == s["foreground_iou"] == s["mean_iou"] == 0.0
    assert evaluate(one, empty)["fn"] == 1 and evaluate(empty, one)["fp"] == 1


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        evaluate(-np.ones((4, 4), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="integers"):
        evaluate(np.zeros((4, 4)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(GT, GT, 0.0)


def test_3d_and_large_ids():
    gt = np.zeros((4, 16, 16), np.int64)
    gt[1:3, 2:8, 2:8] = 2**40
    assert evaluate(gt, (gt > 0).astype(np.uint8))["ap50"] == 1.0


def test_mean_metrics_averages_scores_and_sums_counts():
    a = evaluate(GT, GT)
    b = evaluate(GT, np.zeros_like(GT))
    mean = mean_metrics([a, b])
    assert mean["n_images"] == 2
    assert mean["ap50"] == pytest.approx(0.5)
    assert mean["tp"] == 3 and mean["fn"] == 3
    assert mean_metrics([]) == {"n_images": 0}

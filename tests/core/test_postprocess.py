"""Probabilities -> instance labels on synthetic touching discs (2D and 3D)."""

import numpy as np
import pytest

from napari_unet.inference.postprocess import probabilities_to_labels


def discs(shape, centres, radius):
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for c in centres:
        mask |= sum((g - x) ** 2 for g, x in zip(grid, c)) <= radius ** 2
    return mask


def test_touching_discs_are_split_by_the_watershed():
    mask = discs((80, 100), [(40, 30), (40, 48)], 10)  # overlapping: one connected blob
    probs = mask[None].astype(np.float32)
    assert probabilities_to_labels(probs, split_touching=False).max() == 1
    labels = probabilities_to_labels(probs, split_touching=True)
    assert labels.max() == 2
    assert labels[40, 30] != labels[40, 48] and labels[40, 30] > 0
    assert np.array_equal(labels > 0, mask)


def test_a_single_irregular_object_is_not_split():
    mask = discs((60, 60), [(30, 30)], 15)
    mask[28:33, 10:50] = True
    assert probabilities_to_labels(mask[None].astype(np.float32)).max() == 1


def test_an_ellipse_at_45_degrees_is_one_object():
    """Its distance map peaks on two diagonal pixels: one plateau, one seed (it was cut in two)."""
    grid = np.indices((64, 64)) - 20.5  # centred on a half pixel
    u, v = (grid[0] + grid[1]) / np.sqrt(2), (grid[0] - grid[1]) / np.sqrt(2)
    mask = (u / 14) ** 2 + (v / 7) ** 2 <= 1
    assert probabilities_to_labels(mask[None].astype(np.float32)).max() == 1


def test_threshold_min_size_and_sequential_ids():
    probs = np.zeros((1, 50, 50), np.float32)
    probs[0, 5:15, 5:15] = 0.9
    probs[0, 30:32, 30:32] = 0.9  # 4 px: removed by min_size
    probs[0, 20:30, 35:45] = 0.4  # below the threshold
    labels = probabilities_to_labels(probs, threshold=0.5, min_size=16)
    assert sorted(np.unique(labels)) == [0, 1]
    assert probabilities_to_labels(probs, threshold=0.3, min_size=16).max() == 2
    with pytest.raises(ValueError, match="threshold"):
        probabilities_to_labels(probs, threshold=1.5)


def test_boundary_target_separates_touching_objects():
    a, b = discs((60, 80), [(30, 25)], 12), discs((60, 80), [(30, 47)], 12)
    interior = (a ^ b).astype(np.float32)
    border = (a & b).astype(np.float32)
    labels = probabilities_to_labels(np.stack([interior, border]), target="boundary")
    assert labels.max() == 2 and np.array_equal(labels > 0, a | b)


def test_3d_and_stacks():
    vol = discs((30, 40, 50), [(15, 20, 15), (15, 20, 31)], 9)[None].astype(np.float32)
    assert probabilities_to_labels(vol).max() == 2
    planes = [probabilities_to_labels(p) for p in (vol[:, 15], vol[:, 14], np.zeros_like(vol[:, 0]))]
    assert [p.max() for p in planes] == [2, 2, 0]


def test_segment_iter_labels_a_stack_plane_by_plane(tiny_model):
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.inference.segment import segment_iter

    stack = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    events = []
    seg = run_to_end(segment_iter(tiny_model, stack, threshold=0.3), events.append)
    assert seg.labels.shape == (3, 40, 50) and seg.labels.dtype == np.int32
    for i in range(3):
        expected = probabilities_to_labels(seg.prediction.probabilities[i], threshold=0.3)
        assert np.array_equal(seg.labels[i], expected)
    assert [e.message for e in events[-3:]] == ["finding objects"] * 3


def test_choose_postprocess_picks_what_scores_best_on_held_out_labels():
    from napari_unet.inference.postprocess import choose_postprocess

    # two discs that touch through a neck: only splitting them scores; a faint blob (p = 0.45)
    # is a real object only when the threshold is under 0.45
    yy, xx = np.mgrid[:64, :96]
    a = (yy - 32) ** 2 + (xx - 28) ** 2 < 15 ** 2
    b = (yy - 32) ** 2 + (xx - 56) ** 2 < 15 ** 2
    faint = (yy - 10) ** 2 + (xx - 88) ** 2 < 5 ** 2
    probs = np.where(a | b, 0.95, np.where(faint, 0.45, 0.02)).astype(np.float32)[None]
    labels = np.zeros((64, 96), np.int32)
    labels[a & (xx < 42)] = 1
    labels[b & (xx >= 42)] = 2
    labels[faint] = 3
    best, table = choose_postprocess([(probs, labels)])
    assert best["split_touching"] and best["threshold"] < 0.45
    assert len(table) == 5 * 3 * 2 or len(table) == 5 * 2 * 2  # every choice scored (min sizes may coincide)
    assert max(score for _, score in table) == pytest.approx(1.0)
    # groups: the mean of each group's mean, so one image of a small group weighs as much as many
    plain = np.zeros((1, 32, 32), np.float32)
    _, grouped = choose_postprocess([(probs, labels, "cells"), (plain, np.zeros((32, 32), np.int32), "empty")])
    assert all(0.0 <= score <= 1.0 for _, score in grouped)

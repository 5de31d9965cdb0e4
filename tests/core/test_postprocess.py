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
    # every choice scored: 5 thresholds x 3 (or 2 coinciding) min sizes x (split at depth 1 or 2, no split)
    assert len(table) == 5 * 3 * 3 or len(table) == 5 * 2 * 3
    assert best["split_depth"] == 1.0  # depth 2 splits them too: ties go to the default
    assert max(score for _, score in table) == pytest.approx(1.0)
    # groups: the mean of each group's mean, so one image of a small group weighs as much as many
    plain = np.zeros((1, 32, 32), np.float32)
    _, grouped = choose_postprocess([(probs, labels, "cells"), (plain, np.zeros((32, 32), np.int32), "empty")])
    assert all(0.0 <= score <= 1.0 for _, score in grouped)


def test_choose_postprocess_stops_between_two_settings():
    """Choosing on megapixels of corrections takes seconds: a cancel does not wait for the whole grid."""
    import threading

    from napari_unet.inference.postprocess import choose_postprocess
    from napari_unet.jobs import PredictionCancelled

    labels = np.zeros((32, 32), np.int32)
    labels[4:12, 4:12] = 1
    probs = (labels > 0).astype(np.float32)[None]
    stop, calls = threading.Event(), []

    def metric(truth, predicted):  # the user cancels while the first setting is scored
        calls.append(1)
        stop.set()
        return {"ap50": 1.0}

    with pytest.raises(PredictionCancelled):
        choose_postprocess([(probs, labels)], metric=metric, stop=stop)
    assert calls == [1]
    assert choose_postprocess([(probs, labels)], stop=threading.Event())[0]["threshold"] == 0.5


@pytest.mark.parametrize("one_object", [True, False])
def test_choose_postprocess_chooses_the_split_depth_the_labels_want(one_object):
    """A disc with a smaller lobe: its distance map has a second maximum between 1 and 2 px deep.
    Where the labels say it is one cell, the split depth 2 is chosen (depth 1 cuts the lobe off);
    where they say it is two, depth 1; the model file stores it and prediction uses it."""
    from napari_unet.inference.postprocess import choose_postprocess, postprocess_text

    yy, xx = np.mgrid[:64, :96]
    big, lobe = (yy - 32) ** 2 + (xx - 40) ** 2 < 10 ** 2, (yy - 32) ** 2 + (xx - 54) ** 2 < 7 ** 2
    probs = (big | lobe)[None].astype(np.float32) * 0.9 + 0.05
    assert [probabilities_to_labels(probs, split_depth=d, min_size=4).max() for d in (1.0, 2.0)] == [2, 1]
    labels = (big | lobe).astype(np.int32)
    if not one_object:
        labels[lobe & ~big & (xx > 47)] = 2
        labels[labels == 1] = 0
        labels[big] = 1
    best, _ = choose_postprocess([(probs, labels)])
    assert best["split_touching"] and best["split_depth"] == (2.0 if one_object else 1.0)
    assert ("depth 2 px" in postprocess_text(best)) == one_object


def test_the_split_depth_a_model_file_stores_is_used_whole_and_block_wise(tmp_path):
    """Prediction splits at the depth the model was tuned with (block-wise too); files without
    one split at depth 1, as before the depth was tuned."""
    import sys
    from pathlib import Path

    import zarr

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _helpers import blur_net

    from napari_unet.inference.large import labels_from_probabilities_iter, segment_to_zarr
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.inference.segment import segment_iter
    from napari_unet.modelfile import load_model, make_config, save_model

    yy, xx = np.mgrid[:96, :128]
    image = (((yy - 48) ** 2 + (xx - 50) ** 2 < 14 ** 2) | ((yy - 48) ** 2 + (xx - 70) ** 2 < 10 ** 2)) * 200.0
    net = blur_net()
    counts = {}
    for depth in (None, 1.0, 4.0):
        pp = {"threshold": 0.5, "min_size": 8, "split_touching": True}
        pp.update({} if depth is None else {"split_depth": depth})
        path = save_model(tmp_path / f"{depth}.safetensors", net,
                          make_config(net, "unet", provenance={"postprocess": pp}))
        assert load_model(path).postprocess["split_depth"] == (depth or 1.0)
        whole = run_to_end(segment_iter(str(path), image, device="cpu")).labels
        segment_to_zarr(str(path), image, tmp_path / f"{depth}.zarr", tmp_path / f"{depth}-p.zarr", device="cpu",
                        block_size=64, label_halo=48)
        blocks = zarr.open_array(str(tmp_path / f"{depth}.zarr"), mode="r")[...]
        # re-labelled from the stored probabilities (another threshold): the store's depth by default
        run_to_end(labels_from_probabilities_iter(tmp_path / f"{depth}-p.zarr", tmp_path / f"{depth}-again.zarr",
                                                  threshold=0.45, min_size=8))
        again = zarr.open_array(str(tmp_path / f"{depth}-again.zarr"), mode="r")[...]
        counts[depth] = (int(whole.max()), int(blocks.max()), int(again.max()))
    assert counts[None] == counts[1.0] == (2, 2, 2) and counts[4.0] == (1, 1, 1)

"""Per-depth outputs of deep-supervision networks: one pass, scores, pruning, where to review."""

import numpy as np
import pytest

from napari_unet.inference.predictor import Predictor, predict, run_to_end
from napari_unet.inference.supervision import (DepthPrediction, best_score, deep_supervision_predictor,
                                               predict_depths_iter, predict_pruned_iter, regions_to_review,
                                               score_depths, score_labels)
from napari_unet.modelfile import load_model
from napari_unet.synthetic import fluorescent_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nuclei():
    image, labels = fluorescent_nuclei((160, 224), 14, seed=3)[:2]
    return image, labels


@pytest.fixture(scope="module")
def unet_pp(make_random_model):
    return load_model(make_random_model("pp", "unet++", features=(4, 8, 16, 32)))


@pytest.fixture(scope="module")
def unet_3p(make_random_model):
    return load_model(make_random_model("u3p", "unet3+", features=(4, 8, 16, 32), cat_channels=4))


def test_one_tiled_pass_equals_separately_pruned_unet_pp_runs(unet_pp, nuclei):
    """Side output j of the single pass is what the depth-j sub-network predicts on its own
    (tiles, blending and all): nothing needs recomputing per depth."""
    image = nuclei[0]
    depths = run_to_end(predict_depths_iter(unet_pp, image, tile_size=96))
    assert depths.names == ["X0,3 (depth 3)", "X0,2 (depth 2)", "X0,1 (depth 1)"]
    assert depths.probabilities.shape == (3, 1) + image.shape
    for i, k in enumerate((3, 2, 1)):
        pruned = run_to_end(predict_pruned_iter(unet_pp, image, k, tile_size=96))
        np.testing.assert_allclose(depths.probabilities[i], pruned.prediction.probabilities, atol=2e-5)
        assert pruned.depth == k and pruned.megapixels == pytest.approx(image.size / 1e6)
    # the main output is the model's ordinary prediction
    np.testing.assert_allclose(depths.probabilities[0], predict(unet_pp, image, tile_size=96).probabilities, atol=2e-5)
    # the depths differ (random heads), so the comparison above can fail
    assert np.abs(depths.probabilities[0] - depths.probabilities[2]).max() > 0.01


def test_unet_3p_levels_and_the_object_present_probability_per_tile(unet_3p, nuclei):
    image = np.stack([nuclei[0], np.zeros_like(nuclei[0])])  # a stack of two planes, plane by plane
    depths = run_to_end(predict_depths_iter(unet_3p, image, tile_size=96))
    assert depths.names == ["D0 (level 0)", "D1 (level 1)", "D2 (level 2)", "E3 (level 3)"]
    assert depths.probabilities.shape == (4, 2, 1) + image.shape[1:]
    np.testing.assert_allclose(depths.probabilities[0], predict(unet_3p, image, tile_size=96).probabilities, atol=2e-5)
    p = depths.object_probability
    n_y, n_x = (len(c) for c in depths.tile_cores)
    assert n_y * n_x > 1 and p.shape == (2, n_y, n_x)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    painted = depths.object_probability_map()
    assert painted.shape == image.shape
    (y0, y1), (x0, x1) = depths.tile_cores[0][-1], depths.tile_cores[1][-1]
    assert np.all(painted[1, y0:y1, x0:x1] == p[1, -1, -1])
    # each tile gets the value for its own content: identical (blank) tiles agree, nuclei tiles differ
    np.testing.assert_allclose(p[1], p[1, 0, 0], atol=1e-6)
    assert np.ptp(p[0]) > max(np.ptp(p[1]), 0.0)


def test_models_without_deep_supervision_and_pruning_anything_but_unet_pp_are_refused(tiny_model, unet_3p):
    with pytest.raises(ValueError, match="no deep supervision: choose a U-Net\\+\\+ or U-Net 3\\+"):
        deep_supervision_predictor(tiny_model)
    with pytest.raises(ValueError, match="cannot be pruned: only U-Net\\+\\+"):
        run_to_end(predict_pruned_iter(unet_3p, np.zeros((64, 64), np.float32), 2))
    with pytest.raises(ValueError, match="side_outputs=True"):
        run_to_end(predict_depths_iter(unet_3p, np.zeros((64, 64), np.float32), predictor=Predictor(unet_3p)))


def _depths(probabilities):
    probabilities = np.asarray(probabilities, np.float32)
    return DepthPrediction([f"d{i}" for i in range(len(probabilities))], probabilities[:, None], "binary", 2, "cpu",
                           0.0, [])


def test_disagreement_is_zero_where_all_depths_agree():
    rng = np.random.default_rng(0)
    same = rng.random((40, 50)).astype(np.float32)
    probs = np.stack([same, same, same])
    probs[1, :10, :10] = 1.0  # one depth disagrees in one corner
    probs[2, :10, :10] = 0.0
    d = _depths(probs).disagreement()
    assert d.shape == (40, 50)
    assert np.all(d[10:, :] == 0) and np.all(d[:, 10:] == 0)
    assert np.all(d[:10, :10] > 0.3)
    np.testing.assert_allclose(d[:10, :10], np.stack([same, np.ones_like(same), np.zeros_like(same)])[:, :10, :10]
                               .std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(_depths(probs).ensemble()[0], probs.mean(axis=0), rtol=1e-6)


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_scores_count_objects_and_pixels_as_defined():
    shape = (60, 80)
    truth = np.zeros(shape, np.int32)
    truth[_disc(shape, (15, 15), 8)] = 1
    truth[_disc(shape, (15, 60), 8)] = 2
    truth[_disc(shape, (45, 40), 8)] = 3
    pred = np.zeros(shape, np.int32)
    pred[_disc(shape, (15, 15), 8)] = 5  # exact
    pred[_disc(shape, (16, 61), 8)] = 6  # shifted by one pixel: IoU > 0.5
    pred[_disc(shape, (50, 10), 5)] = 7  # a false positive; object 3 is missed
    s = score_labels("x", truth, pred, 2)
    assert (s.n_objects, s.n_true) == (3, 3)
    assert s.ap50 == pytest.approx(2 / (2 + 1 + 1))
    a, b = truth > 0, pred > 0
    assert s.dice == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    # within a reviewed region holding only the two matched objects, the result is perfect for AP
    reviewed = np.zeros(shape, np.uint8)
    reviewed[:30, :] = 1
    s = score_labels("x", truth, pred, 2, reviewed)
    assert s.ap50 == 1.0 and (s.n_objects, s.n_true) == (2, 2)
    # stacks: planes are scored separately and counts summed (ids may repeat across planes)
    stack_t, stack_p = np.stack([truth, truth]), np.stack([pred, truth])
    s = score_labels("x", stack_t, stack_p, 2)
    assert s.ap50 == pytest.approx((2 + 3) / (5 + 1 + 1)) and s.n_true == 6
    with pytest.raises(ValueError, match="corrections of this image|belongs to this image"):
        score_labels("x", truth, pred[:50], 2)


def test_score_depths_ranks_the_depth_closest_to_the_corrections():
    shape = (64, 64)
    truth = np.zeros(shape, np.int32)
    truth[_disc(shape, (20, 20), 9)] = 1
    truth[_disc(shape, (44, 44), 9)] = 2
    good = (truth > 0).astype(np.float32) * 0.9 + 0.05
    half = good.copy()
    half[32:, 32:] = 0.05  # misses one object
    bad = np.full(shape, 0.05, np.float32)
    scores = score_depths(_depths([half, good, bad]), truth, threshold=0.5, min_size=4, split_touching=False)
    assert [s.name for s in scores] == ["d0", "d1", "d2", "ensemble (mean)"]
    assert [s.ap50 for s in scores[:3]] == [0.5, 1.0, 0.0]
    assert best_score(scores) == 1


def test_regions_to_review_rank_disagreement_outside_reviewed_pixels():
    d = np.zeros((2, 100, 130), np.float32)
    d[1, 10:20, 110:120] = 0.9  # plane 1, block (0, 3) of 32-px blocks
    d[0, 70:90, 40:60] = 0.2    # plane 0, blocks around (2, 1)
    regions = regions_to_review(d, 2, block=32)
    first = regions[0]
    assert first.plane == (1,) and first.box == (slice(0, 32), slice(96, 128))
    assert first.center == (1.0, 15.5, 111.5)
    assert all(r.score > 0 for r in regions) and [r.score for r in regions] == sorted(
        (r.score for r in regions), reverse=True)
    reviewed = np.zeros(d.shape, np.uint8)
    reviewed[1, :32, 96:] = 1  # the user reviewed that block: the next best comes first
    regions = regions_to_review(d, 2, reviewed, block=32)
    assert regions[0].plane == (0,) and all(r.plane == (0,) for r in regions)
    # the last, partial blocks at the borders are found too
    edge = np.zeros((100, 130), np.float32)
    edge[99, 129] = 1.0
    (only,) = regions_to_review(edge, 2, block=32)
    assert only.box == (slice(96, 100), slice(128, 130))
    assert regions_to_review(np.zeros((50, 50)), 2) == []
    with pytest.raises(ValueError, match="reviewed region has shape"):
        regions_to_review(edge, 2, np.zeros((10, 10)))


def test_bundled_unet_3p_cgm_tells_empty_planes_from_planes_with_nuclei():
    """The bundled CGM was fitted (scripts/train_cgm.py): a plane without nuclei is "empty" in
    every tile, one with nuclei "present" in most."""
    image = fluorescent_nuclei((256, 256), 12, seed=5)[0]
    empty = fluorescent_nuclei((256, 256), 0, seed=6)[0]
    depths = run_to_end(predict_depths_iter("unet3+", np.stack([image, empty]), tile_size=128))
    present = depths.object_probability
    assert present.shape == (2, 4, 4)
    assert present[1].max() < 0.1
    assert np.median(present[0]) > 0.9

"""What the Deep-supervision and Segment docks compute, without Qt: the tables, the camera move, the
next region, the pruned comparison, what a model file declares and the plane a stack shows."""

import numpy as np
import pytest

from napari_unet.inference.estimate import shown_plane
from napari_unet.inference.predictor import Predictor, run_to_end
from napari_unet.inference.review import PRUNE_COLUMNS, SCORE_COLUMNS, pruned_table, score_table, view_of
from napari_unet.inference.supervision import (DepthScore, PrunedRun, Region, compare_pruned_iter, next_region,
                                               predict_pruned_iter, regions_to_review)
from napari_unet.modelfile import load_model, read_config
from napari_unet.modelinfo import deep_supervision_models, describe_model, object_sizes, pruning
from napari_unet.synthetic import fluorescent_nuclei

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_scores_table_rounds_and_points_at_the_best_row():
    scores = [DepthScore("depth 2", 0.81234, 0.5, 10, 12), DepthScore("depth 1", 0.7, 0.61111, 11, 12)]
    table, best = score_table(scores)
    assert table == {"data": [[0.812, 0.5, 10], [0.7, 0.611, 11]], "index": ["depth 2", "depth 1"],
                     "columns": SCORE_COLUMNS}
    assert best == 1
    assert score_table([]) == ({"data": [], "index": [], "columns": SCORE_COLUMNS}, None)


class _Prediction:
    def __init__(self, seconds):
        self.seconds = seconds


def test_the_pruned_table_puts_the_full_network_first_once():
    full = (PrunedRun(None, _Prediction(2.0), 1.0), DepthScore("depth None", 0.9, 0.8, 5, 5))
    first = pruned_table([], [], PrunedRun(2, _Prediction(0.5), 1.0), None, full)
    assert first == {"data": [[2000, "1.0x", 0.9, 0.8], [500, "4.0x", "–", "–"]], "index": ["full", "depth 2"],
                     "columns": PRUNE_COLUMNS}
    second = pruned_table(first["data"], first["index"], PrunedRun(1, _Prediction(1.0), 1.0),
                          DepthScore("depth 1", 0.51234, 0.4, 3, 5), full)
    assert second["index"] == ["full", "depth 2", "depth 1"] and second["data"][-1] == [1000, "2.0x", 0.512, 0.4]


def test_a_region_is_centred_and_fills_most_of_the_canvas():
    region = Region((3,), (slice(100, 200), slice(0, 50)), 0.2)
    assert region.key == ((3,), ((100, 200), (0, 50)))
    assert region.describe() == "disagreement 0.200 (plane 3, rows 100–200, columns 0–50)"
    # a viewer of 4 axes showing the last two, a layer of 3 axes scaled 2x in y and x
    view = view_of(region, [1.0, 2.0, 2.0], [0.0, 10.0, 0.0], ndim=4, displayed=[2, 3], canvas=(600, 800))
    assert view.points == {1: 3.0}  # the layer's plane axis is the viewer's axis 1
    assert view.center == (10.0 + 2 * 149.5, 2 * 24.5)
    assert view.zoom == pytest.approx(0.8 * 600 / 200)
    assert Region((), (slice(0, 10), slice(0, 10)), 1.0).describe().startswith("disagreement 1.000 (plane -,")


def test_the_next_region_skips_what_was_visited():
    disagreement = np.zeros((256, 256), np.float32)
    disagreement[:128, 128:] = 0.4
    disagreement[128:, :128] = 0.2
    regions = regions_to_review(disagreement, 2)
    assert next_region(disagreement, 2) == regions[0]
    assert next_region(disagreement, 2, visited={regions[0].key}) == regions[1]
    assert next_region(disagreement, 2, visited={r.key for r in regions}) is None
    reviewed = np.zeros_like(disagreement)
    reviewed[:128, 128:] = 1
    assert next_region(disagreement, 2, reviewed).key == regions[1].key


def test_the_pruned_comparison_times_the_full_network_then_the_sub_network(make_random_model):
    model = load_model(make_random_model("pp-review", "unet++", features=(4, 8, 16, 32)))
    image, truth = fluorescent_nuclei((96, 128), 8, seed=1)[:2]
    predictor = Predictor(model, device="cpu", tile_size=96)
    runs, labels = run_to_end(compare_pruned_iter(predictor, image, 2, truth=truth))
    assert [run.depth for run, _ in runs] == [None, 2] and labels.shape == image.shape
    assert [score.name for _, score in runs] == ["depth None", "depth 2"]
    alone = run_to_end(predict_pruned_iter(model, image, 2, predictor=Predictor(model, device="cpu", tile_size=96)))
    np.testing.assert_allclose(runs[1][0].prediction.probabilities, alone.prediction.probabilities, atol=2e-5)
    again, _ = run_to_end(compare_pruned_iter(predictor, image, 1, with_full=False))
    assert [(run.depth, score) for run, score in again] == [(1, None)]


def test_what_a_model_file_declares(make_random_model):
    plain, deep = make_random_model("plain-info"), make_random_model("pp-info", "unet++", features=(4, 8, 16, 32))
    text, config = describe_model(plain)
    assert text.startswith("U-Net") and "binary target" in text and config["architecture"] == "unet"
    assert object_sizes(config) == (None, None)
    assert object_sizes({"input": {"object_diameter": 20, "image_object_diameter": "40"}}) == (20, None)
    assert deep_supervision_models({"plain": plain, "deep": deep, "gone": deep.parent / "gone.safetensors"}) == \
        ["deep"]
    assert pruning(read_config(deep)) == (3, True) and pruning(config) == (2, False)
    broken = deep.parent / "broken.safetensors"
    broken.write_bytes(b"not a model")
    text, config = describe_model(broken)
    assert text.startswith("unusable: ") and config is None


@pytest.mark.parametrize("shape, position, rgb, channel_axis, plane", [
    ((5, 64, 64), 2.4, False, None, 2),
    ((5, 64, 64), 9.0, False, None, 4),  # clamped to the stack
    ((5, 64, 64), -3.0, False, None, 0),
    ((5, 64, 64), float("nan"), False, None, None),
    ((5, 64, 64), None, False, None, None),
    ((5, 64, 64), 2.0, False, 0, None),  # channels: the middle plane
    ((64, 64, 3), 2.0, True, None, None),
    ((1, 64, 64), 0.0, False, None, None),
    ((64, 64), 2.0, False, None, None),
])
def test_the_plane_a_stack_shows(shape, position, rgb, channel_axis, plane):
    assert shown_plane(shape, position, rgb, channel_axis) == plane

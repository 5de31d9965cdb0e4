"""A block-wise run as a viewer shows it: the labels store while it fills (with its pyramid) and the
foreground probability at the end, computed without Qt."""

import numpy as np
import pytest
import zarr

from napari_unet.inference import large, pyramid
from napari_unet.inference.large import segment_to_zarr
from napari_unet.inference.largeview import LargeRun, LiveStart, foreground_levels, segment_large_iter
from napari_unet.inference.predictor import Predictor, run_to_end
from napari_unet.modelfile import make_config, save_model
from napari_unet.synthetic import fluorescent_nuclei

from _helpers import blur_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_pyramids(monkeypatch):
    """Blocks of 128 px and pyramids above 256 px, so a small image takes every path of a big one."""
    monkeypatch.setattr(large, "DEFAULT_BLOCK_2D", 128)
    monkeypatch.setattr(pyramid, "PYRAMID_ABOVE", 256)
    monkeypatch.setattr(pyramid, "MIN_SIDE", 64)


@pytest.mark.parametrize("classes", [0, 2])  # 0: no class axis (one foreground class)
def test_foreground_levels_sum_the_classes_and_subsample(tmp_path, small_pyramids, classes):
    rng = np.random.default_rng(0)
    shape = (2, 300, 280)
    data = rng.random(shape[:1] + ((classes,) if classes else ()) + shape[1:]).astype(np.float32)
    store = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=data.shape, dtype=np.float32)
    store[...] = data
    foreground = data.sum(axis=1) if classes else data
    for block in (None, 64):  # the block only says how much of the pyramid is written at a time
        levels = foreground_levels(store, shape, 2, tmp_path / f"levels-{block}", block=block)
        assert len(levels) == 1 + len(pyramid.level_shapes(shape)) > 2
        np.testing.assert_allclose(np.asarray(levels[0]), foreground, rtol=1e-6)
        for k, level in enumerate(levels[1:], start=1):
            np.testing.assert_allclose(np.asarray(level[...]), foreground[:, ::2 ** k, ::2 ** k], rtol=1e-6)


def test_small_planes_have_one_level(tmp_path):
    store = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=(40, 50), dtype=np.float32)
    store[...] = 0.25
    levels = foreground_levels(store, (40, 50), 2, tmp_path)
    assert len(levels) == 1 and float(np.asarray(levels[0]).mean()) == pytest.approx(0.25)


def test_a_run_brings_its_store_first_and_keeps_its_pyramid_up_to_date(tmp_path, small_pyramids):
    net = blur_net()
    model = save_model(tmp_path / "blur.safetensors", net, make_config(net, "unet"))
    image = fluorescent_nuclei(shape=(300, 340), n_nuclei=40, seed=1)[0]
    predictor = Predictor(str(model), device="cpu")
    events = []
    gen = segment_large_iter(predictor, image, {"runner": None}, probabilities_folder=str(tmp_path / "probs"))
    try:
        while True:
            events.append(next(gen))
    except StopIteration as end:
        run = end.value
    starts = [e for e in events if isinstance(e, LiveStart)]
    assert len(starts) == 1 and events.index(starts[0]) <= 1
    live = starts[0].labels
    assert live.multiscale and len(live.data) == 1 + len(pyramid.level_shapes(image.shape)) > 2
    assert live.folder == live.path.parent
    assert isinstance(run, LargeRun) and events[-1].message == "preparing the probabilities layer"
    labels = np.asarray(run.segmentation.labels)
    for k, level in enumerate(live.data[1:], start=1):  # every level is the finished labels, subsampled
        np.testing.assert_array_equal(np.asarray(level[...]), labels[::2 ** k, ::2 ** k])
    assert len(run.probabilities) == len(live.data)
    single = segment_to_zarr(str(model), image, str(tmp_path / "single.zarr"), device="cpu")
    np.testing.assert_array_equal(labels, np.asarray(single.labels))  # the same run as without a viewer
    np.testing.assert_allclose(np.asarray(run.probabilities[0]), np.asarray(run.segmentation.probabilities),
                               rtol=1e-6)


def test_without_a_folder_no_probabilities_are_kept(tmp_path):
    net = blur_net()
    model = save_model(tmp_path / "blur.safetensors", net, make_config(net, "unet"))
    image = fluorescent_nuclei(shape=(96, 96), n_nuclei=5, seed=2)[0]
    run = run_to_end(segment_large_iter(Predictor(str(model), device="cpu"), image, {}))
    assert run.probabilities is None and run.segmentation.probabilities is None


def test_foreground_levels_stop_between_blocks(tmp_path, monkeypatch):
    import threading

    from napari_unet.inference import pyramid as pyramid_module
    from napari_unet.inference.largeview import foreground_levels
    from napari_unet.jobs import PredictionCancelled

    monkeypatch.setattr(pyramid_module, "PYRAMID_ABOVE", 64)
    store = zarr.open(str(tmp_path / "p.zarr"), mode="w", shape=(200, 240), chunks=(64, 64), dtype="f4")
    stop = threading.Event()
    stop.set()
    with pytest.raises(PredictionCancelled):
        foreground_levels(store, (200, 240), 2, tmp_path / "levels", block=64, stop=stop)

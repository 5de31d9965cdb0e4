"""Large (dask/zarr-backed) layers in the Segment widget: predicted block by block, never loaded
whole, into a zarr-backed labels layer that is shown while it fills."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_unet.inference import large, pyramid
from napari_unet.modelfile import user_model_dir

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 128 px and pyramids above 256 px, so a small image takes every path of a big one."""
    monkeypatch.setattr(large, "DEFAULT_BLOCK_2D", 128)
    monkeypatch.setattr(pyramid, "PYRAMID_ABOVE", 256)
    monkeypatch.setattr(pyramid, "MIN_SIDE", 64)


def _nuclei_stack():
    from napari_unet.synthetic import fluorescent_nuclei

    planes = [fluorescent_nuclei(shape=(300, 340), n_nuclei=25, seed=s)[0] for s in range(2)]
    return np.stack(planes).astype(np.float32)


def _add_lazy(viewer, image, reads):
    """A dask-backed layer that records the shape of every chunk read from it."""
    def read(block):
        reads.append(block.shape)
        return block

    lazy = da.from_array(image, chunks=(1, 100, 100)).map_blocks(read, dtype=image.dtype)
    return viewer.add_image(lazy, name="lazy", scale=(3.0, 0.5, 0.5))


def test_a_dask_layer_becomes_a_zarr_labels_layer_filled_while_it_runs(tiny_in_list, segment_widget, run_and_wait,
                                                                       qtbot, small_blocks):
    from napari_unet.inference.predictor import run_to_end
    from napari_unet.inference.segment import segment_iter

    viewer, widget = segment_widget
    image, reads = _nuclei_stack(), []
    _add_lazy(viewer, image, reads)
    widget.model.value = tiny_in_list
    widget.add_probabilities.value = True
    seen_while_running = []
    viewer.layers.events.inserted.connect(lambda e: seen_while_running.append((e.value.name, widget.job_running)))
    run_and_wait(widget)

    # the probabilities go below the labels, which stay visible on top
    assert [layer.name for layer in viewer.layers] == ["lazy", "lazy [tiny] probabilities", "lazy [tiny] labels"]
    labels = viewer.layers["lazy [tiny] labels"]
    assert ("lazy [tiny] labels", True) in seen_while_running  # shown while it filled
    assert labels.multiscale and isinstance(labels.data[0], zarr.Array)
    full = np.asarray(labels.data[0][:])
    expected = run_to_end(segment_iter(str(user_model_dir() / "tiny.safetensors"), image, device="cpu",
                                       threshold=widget.threshold.value, min_size=widget.min_size.value,
                                       split_touching=widget.split.value)).labels
    assert full.max() > 0
    assert np.array_equal(full > 0, expected > 0) and full.max() == expected.max()  # same objects as one pass
    for k, level in enumerate(labels.data):  # every pyramid level is the finished labels, subsampled
        assert np.array_equal(np.asarray(level), full[:, :: 2 ** k, :: 2 ** k]), k
    assert tuple(labels.scale) == (3.0, 0.5, 0.5)
    from napari_unet.writeback import writable

    assert all(writable(level) for level in labels.data)  # Correct can write corrected regions back into it
    assert max(np.prod(shape) for shape in reads) <= 100 * 100  # the image was read chunk by chunk

    probs = viewer.layers["lazy [tiny] probabilities"]
    assert probs.multiscale and probs.data[0].shape == image.shape
    folder = Path(labels.metadata["napari_unet"]["temporary"])
    assert folder.is_dir() and str(folder) in widget.status.value
    assert viewer.layers.selection.active is labels

    viewer.layers.remove(labels)  # the folder goes with its layer
    assert not folder.exists()
    assert isinstance(widget.last_result, large.LargeSegmentation)


def test_cancelling_a_large_run_leaves_no_layer_and_no_folder(tiny_in_list, segment_widget, run_and_wait, qtbot,
                                                               click, small_blocks):
    viewer, widget = segment_widget
    _add_lazy(viewer, _nuclei_stack(), [])
    widget.model.value = tiny_in_list
    widget.tile_size.value = "256"
    click(widget.run_button)
    qtbot.waitUntil(lambda: widget._live is not None, timeout=60_000)
    folder = Path(widget._live.metadata["napari_unet"]["temporary"])
    click(widget.run_button)  # Cancel
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    assert [layer.name for layer in viewer.layers] == ["lazy"]
    assert "cancelled" in widget.status.value and not folder.exists()
    run_and_wait(widget)  # and the next run works
    assert "lazy [tiny] labels" in viewer.layers


def test_cancelling_at_the_very_end_leaves_no_probabilities_folder(tiny_in_list, segment_widget, qtbot, click,
                                                                   small_blocks, monkeypatch):
    """Cancel clicked when the job has just finished (its probabilities' pyramid written): the
    result is discarded and its temporary folder goes at once, not when napari exits."""
    import threading

    from napari_unet.widgets import segment

    viewer, widget = segment_widget
    _add_lazy(viewer, _nuclei_stack(), [])
    widget.model.value = tiny_in_list
    widget.tile_size.value = "256"
    widget.add_probabilities.value = True
    ended, release, folders = threading.Event(), threading.Event(), []
    real = segment.large_job

    def ends_then_waits(*args, **kwargs):
        ready = yield from real(*args, **kwargs)
        folders.append(Path(ready.probabilities.metadata["napari_unet"]["temporary"]))
        ended.set()
        release.wait(30)
        return ready

    monkeypatch.setattr(segment, "large_job", ends_then_waits)
    click(widget.run_button)
    qtbot.waitUntil(ended.is_set, timeout=60_000)
    assert folders[0].is_dir()
    click(widget.run_button)  # Cancel
    release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    assert [layer.name for layer in viewer.layers] == ["lazy"]
    assert not folders[0].exists()


def test_a_finished_single_scale_layer_takes_brush_strokes_into_its_store(tiny_in_list, segment_widget,
                                                                         run_and_wait):
    viewer, widget = segment_widget
    _add_lazy(viewer, _nuclei_stack()[:, :200, :200], [])  # below the pyramid size: one level
    widget.model.value = tiny_in_list
    run_and_wait(widget)
    labels = viewer.layers["lazy [tiny] labels"]
    assert not labels.multiscale and labels.editable and isinstance(labels.data, zarr.Array)
    labels.paint((0, 10, 10), 77, refresh=True)
    stored = zarr.open_array(labels.metadata["napari_unet"]["store"], mode="r")
    assert stored[0, 10, 10] == 77


def test_deleting_the_filling_layer_cancels_the_run(tiny_in_list, segment_widget, qtbot, click, small_blocks):
    viewer, widget = segment_widget
    _add_lazy(viewer, _nuclei_stack(), [])
    widget.model.value = tiny_in_list
    click(widget.run_button)
    qtbot.waitUntil(lambda: widget._live is not None, timeout=60_000)
    folder = Path(widget._live.metadata["napari_unet"]["temporary"])
    viewer.layers.remove(widget._live)
    qtbot.waitUntil(lambda: not widget.running, timeout=10_000)
    assert [layer.name for layer in viewer.layers] == ["lazy"] and not folder.exists()


def test_boundary_models_show_the_foreground_probability(make_random_model, segment_widget, run_and_wait,
                                                         small_blocks):
    """A 3-class model's probabilities store has a class axis; the layer shows their foreground sum."""
    folder = user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(make_random_model("tiny3", target="boundary", out_channels=3), folder / "tiny3.safetensors")
    viewer, widget = segment_widget
    _add_lazy(viewer, _nuclei_stack(), [])
    widget.refresh_models()
    widget.model.value = "tiny3"
    widget.add_probabilities.value = True
    run_and_wait(widget)
    assert "objects in" in widget.status.value, widget.status.value
    probs = viewer.layers["lazy [tiny3] probabilities"]
    stored = np.asarray(widget.last_result.probabilities[:])
    assert stored.shape == (2, 2, 300, 340)  # (planes, interior/boundary, y, x)
    assert np.allclose(np.asarray(probs.data[0]), stored.sum(axis=1), atol=1e-6)
    assert np.allclose(np.asarray(probs.data[1]), stored.sum(axis=1)[:, ::2, ::2], atol=1e-6)

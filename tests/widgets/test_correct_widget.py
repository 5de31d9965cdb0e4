"""The Correct widget in a real napari viewer: copy, edit with undo, review, weight map, keep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt as ndi_distance

from napari_unet.trainingset import TrainingSet


def _press(layer, position):
    """A mouse press on ``layer`` at a world ``position``, dispatched like napari does."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks

    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", button=1, position=tuple(position)))


def _prediction(viewer):
    """A sample image and a 'prediction' labels layer as the Segment widget makes them."""
    viewer.open_sample("napari-unet", "nuclei")
    image, truth = viewer.layers
    pred = viewer.add_labels(np.asarray(truth.data).astype(np.int32), name="nuclei [unet] labels",
                             metadata={"napari_unet": {"kind": "labels", "source": image.name}})
    return image, pred


def test_correct_edit_undo_and_review(correct_widget, click):
    viewer, widget = correct_widget
    image, pred = _prediction(viewer)
    before = np.array(pred.data, copy=True)
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["nuclei [unet] labels corrected"]
    reviewed = viewer.layers["nuclei [unet] labels corrected reviewed"]
    assert viewer.layers.selection.active is corrected and corrected.mode == "paint"
    assert corrected.selected_label == before.max() + 1
    np.testing.assert_array_equal(corrected.data, before)
    assert corrected.data is not pred.data
    # delete the object under a click, then undo it with napari's own undo
    target = int(before[before > 0][0])
    where = np.argwhere(before == target)[0]
    widget.tool.value = "delete object (click)"
    assert corrected.mode == "pan_zoom"  # a click picks an object instead of painting
    _press(corrected, where.astype(float))  # through napari's mouse callbacks, as a real click
    assert target not in corrected.data
    corrected.undo()
    np.testing.assert_array_equal(corrected.data, before)
    # merge two objects with two clicks
    a, b = [int(v) for v in np.unique(before[before > 0])[:2]]
    widget.tool.value = "merge objects (click two)"
    widget.click(corrected, np.argwhere(before == a)[0].astype(float))
    widget.click(corrected, np.argwhere(before == b)[0].astype(float))
    assert b not in corrected.data and (corrected.data[before == b] == a).all()
    # relabel 1..N
    click(widget.relabel_button)
    ids = np.unique(corrected.data[corrected.data > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    np.testing.assert_array_equal(pred.data, before)  # the prediction itself never changes
    # reviewed: nothing, then all, then cleared
    assert not reviewed.data.any()
    click(widget.review_whole)
    assert reviewed.data.all()
    click(widget.review_clear)
    assert not reviewed.data.any()


def test_weight_map_layer(correct_widget, click, qtbot):
    viewer, widget = correct_widget
    _, pred = _prediction(viewer)
    widget.source.value = pred
    click(widget.correct_button)
    click(widget.weight_button)
    name = "nuclei [unet] labels corrected weight map"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=30_000)
    weights = viewer.layers[name].data
    assert weights.shape == pred.data.shape and weights.max() > 5.0  # gaps between touching nuclei light up
    assert viewer.layers.selection.active.name == "nuclei [unet] labels corrected"


def test_add_to_training_set_autosave_and_reopen(correct_widget, click, click_and_wait, qtbot, tmp_path):
    viewer, widget = correct_widget
    image, pred = _prediction(viewer)
    widget.source.value = pred
    widget.folder.value = str(tmp_path / "set")
    click(widget.correct_button)
    corrected = viewer.layers["nuclei [unet] labels corrected"]
    click(widget.add_button)  # nothing reviewed yet: refused with a message, nothing written
    assert "Nothing is marked as reviewed" in widget.status.value
    assert not (tmp_path / "set").exists()
    click(widget.review_whole)
    click_and_wait(widget, widget.add_button)  # written in a worker
    ts = TrainingSet(tmp_path / "set", create=False)
    assert len(ts) == 1
    entry = ts.entries[0].name
    # an edit is saved again (a second after the last edit, in a worker)
    target = int(np.unique(corrected.data[corrected.data > 0])[0])
    widget.tool.value = "delete object (click)"
    widget.click(corrected, np.argwhere(np.asarray(corrected.data) == target)[0].astype(float))
    qtbot.waitUntil(lambda: target not in TrainingSet(tmp_path / "set", create=False).load(entry)[1], timeout=10_000)
    img, labels, rev = TrainingSet(tmp_path / "set", create=False).load(entry)
    np.testing.assert_array_equal(img, image.data)
    np.testing.assert_array_equal(labels, corrected.data)
    assert rev.all()
    # reopening the folder restores the layers; an empty training set is refused with a message
    n = len(viewer.layers)
    TrainingSet(tmp_path / "empty")
    widget.folder.value = str(tmp_path / "empty")
    click_and_wait(widget, widget.open_button)
    assert len(viewer.layers) == n and "is empty: add corrections" in widget.status.value
    widget.folder.value = str(tmp_path / "set")
    click_and_wait(widget, widget.open_button)  # read in a worker
    assert len(viewer.layers) == n + 3
    np.testing.assert_array_equal(viewer.layers[entry].data, corrected.data)


def _corrected_and_added(viewer, widget, click, folder, qtbot):
    """A prediction corrected, reviewed whole and added to the training set ``folder``:
    ``(image layer, entry name, corrected layer)``."""
    image, pred = _prediction(viewer)
    widget.source.value = pred
    widget.folder.value = str(folder)
    click(widget.correct_button)
    click(widget.review_whole)
    click(widget.add_button)
    qtbot.waitUntil(lambda: not widget.job_running, timeout=60_000)
    return image, TrainingSet(folder, create=False).entries[0].name, viewer.layers["nuclei [unet] labels corrected"]


def test_edits_are_still_saved_after_the_dock_is_closed(make_napari_viewer, click, qtbot, tmp_path):
    """Closing the Correct panel (its x) stops its jobs, not the saving of the layers it linked to
    the training set: the user may go on painting with napari's own brush."""
    viewer = make_napari_viewer()
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    _, entry, corrected = _corrected_and_added(viewer, widget, click, tmp_path / "set", qtbot)
    dock_widget.title.close_button.click()
    assert widget.lifetime.closed  # the dock's own jobs would stop
    corrected.paint((10, 10), 77)  # napari's brush, the panel closed
    qtbot.waitUntil(lambda: 77 in TrainingSet(tmp_path / "set", create=False).load(entry)[1], timeout=10_000)


def _adding_slowly(viewer, widget, click, folder, monkeypatch):
    """A prediction corrected, reviewed whole and being added to the training set ``folder``, the
    add held in its worker until the returned event is set: ``(prediction, corrected, event)``."""
    import threading

    _, pred = _prediction(viewer)
    widget.source.value = pred
    widget.folder.value = str(folder)
    click(widget.correct_button)
    click(widget.review_whole)
    release, original = threading.Event(), TrainingSet.add

    def slow_add(self, *args, **kwargs):
        assert release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingSet, "add", slow_add)
    click(widget.add_button)
    return pred, viewer.layers["nuclei [unet] labels corrected"], release


@pytest.mark.parametrize("dock_closed", [False, True])
def test_edits_made_while_the_entry_is_written_are_saved(correct_widget, click, qtbot, tmp_path, monkeypatch,
                                                         dock_closed):
    """Add to training set writes its files in a worker (the UI goes on): an edit made meanwhile
    is saved into the entry once it exists, also when the dock was closed before the add ended."""
    viewer, widget = correct_widget
    _, corrected, release = _adding_slowly(viewer, widget, click, tmp_path / "set", monkeypatch)
    assert widget.job_running and "adding" in widget.status.value  # the click returned at once
    corrected.paint((10, 10), 77)  # napari's brush, while the entry is written
    if dock_closed:
        viewer.window.remove_dock_widget(widget.native)
        assert widget.lifetime.closed
    release.set()
    qtbot.waitUntil(lambda: (tmp_path / "set" / "index.json").exists() and len(TrainingSet(tmp_path / "set")) == 1,
                    timeout=30_000)
    entry = TrainingSet(tmp_path / "set").names()[0]
    qtbot.waitUntil(lambda: 77 in TrainingSet(tmp_path / "set").load(entry)[1], timeout=10_000)
    labels = TrainingSet(tmp_path / "set").load(entry)[1]
    np.testing.assert_array_equal(labels, corrected.data)
    assert corrected.metadata["napari_unet"]["entry"] == entry


def test_removing_another_layer_during_an_add_does_not_wait_for_it(correct_widget, click, qtbot, tmp_path,
                                                                  monkeypatch):
    """A layer removed while another one is added to the training set is let go at once (saving
    its own edits); only the layer being added waits for its entry when it leaves."""
    import time

    viewer, widget = correct_widget
    pred, corrected, release = _adding_slowly(viewer, widget, click, tmp_path / "set", monkeypatch)
    assert widget.job_running
    click(widget.weight_button)  # one job at a time: the message names the one that runs
    assert "still busy (adding to the training set)" in widget.status.value
    assert not any(layer.name.endswith("weight map") for layer in viewer.layers)
    started = time.perf_counter()
    viewer.layers.remove(pred)  # (a labels layer the dock watches)
    assert time.perf_counter() - started < 10  # it waited for the add: up to two minutes on the Qt thread
    release.set()
    qtbot.waitUntil(lambda: not widget.job_running, timeout=30_000)
    assert corrected.metadata["napari_unet"]["entry"] == TrainingSet(tmp_path / "set").names()[0]


def test_renamed_layers_keep_their_links(correct_widget, click, qtbot, tmp_path):
    """The user renames the corrected layer, its reviewed layer and the image: the reviewed marks
    still go to the same layer (no new empty one), and edits are still saved into the entry;
    reviewed marks alone are saved too (they were not: the dock's viewer is napari's proxy, and
    the layer it handed out for the reviewed layer's owner was a new wrapper each time)."""
    viewer, widget = correct_widget
    image, entry, corrected = _corrected_and_added(viewer, widget, click, tmp_path / "set", qtbot)
    reviewed = viewer.layers["nuclei [unet] labels corrected reviewed"]
    corrected.name, reviewed.name, image.name = "my cells", "my review", "my image"
    n_layers = len(viewer.layers)
    click(widget.review_clear)  # to the renamed reviewed layer, not to a new one
    assert len(viewer.layers) == n_layers and not reviewed.data.any()
    qtbot.waitUntil(lambda: not TrainingSet(tmp_path / "set", create=False).load(entry)[2].any(), timeout=10_000)
    viewer.layers.selection.active = corrected
    click(widget.review_whole)
    corrected.paint((10, 10), 77)
    qtbot.waitUntil(lambda: 77 in TrainingSet(tmp_path / "set", create=False).load(entry)[1], timeout=10_000)
    assert TrainingSet(tmp_path / "set", create=False).load(entry)[2].all() and reviewed.data.all()
    from napari_unet.widgets._correct_layers import source_image

    assert source_image(viewer, corrected) is image


def test_one_plane_of_a_colour_stack_goes_into_the_training_set(correct_widget, click, click_and_wait, tmp_path):
    """'Current plane only' on a time-lapse of RGB frames: the plane shown is stored, in colour."""
    viewer, widget = correct_widget
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (3, 48, 56, 3), dtype=np.uint8)
    image = viewer.add_image(frames, name="movie", rgb=True)
    labels = np.zeros((3, 48, 56), np.int32)
    labels[:, 10:20, 10:20] = 1
    pred = viewer.add_labels(labels, name="movie [unet] labels",
                             metadata={"napari_unet": {"kind": "labels", "source": image.name}})
    widget.source.value = pred
    widget.folder.value = str(tmp_path / "set")
    click(widget.correct_button)
    viewer.dims.set_point(0, 1)
    click(widget.review_plane)
    widget.plane_only.value = True
    click_and_wait(widget, widget.add_button)
    ts = TrainingSet(tmp_path / "set", create=False)
    assert len(ts) == 1, widget.status.value
    stored, masks, reviewed = ts.load(ts.entries[0].name)
    np.testing.assert_array_equal(stored, frames[1])
    assert masks.shape == (48, 56) and reviewed.all()


def test_a_lazy_image_is_read_for_the_training_set_in_the_worker(correct_widget, click, click_and_wait, tmp_path,
                                                                  monkeypatch):
    """'Add to training set' reads the image's pixels in its worker: a lazy (dask, zarr) image is
    read from disk, which must not stall the UI."""
    import threading

    from napari_unet.widgets import correct

    da = pytest.importorskip("dask.array")
    viewer, widget = correct_widget
    pixels = np.random.default_rng(5).random((2, 48, 56)).astype(np.float32)
    image = viewer.add_image(da.from_array(pixels, chunks=(1, 24, 28)), name="lazy stack")
    labels = np.zeros((2, 48, 56), np.int32)
    labels[:, 10:20, 10:20] = 1
    pred = viewer.add_labels(labels, name="lazy stack [unet] labels",
                             metadata={"napari_unet": {"kind": "labels", "source": image.name}})
    on_main_thread, read = [], correct.image_for_corrections

    def recorded(*args):
        on_main_thread.append(threading.current_thread() is threading.main_thread())
        return read(*args)

    monkeypatch.setattr(correct, "image_for_corrections", recorded)
    widget.source.value = pred
    widget.folder.value = str(tmp_path / "set")
    click(widget.correct_button)
    click(widget.review_whole)
    click_and_wait(widget, widget.add_button)
    viewer.dims.set_point(0, 1)  # and one plane of it
    widget.plane_only.value = True
    click_and_wait(widget, widget.add_button)
    assert on_main_thread == [False, False]
    ts = TrainingSet(tmp_path / "set", create=False)
    assert len(ts) == 2, widget.status.value
    whole, plane = (ts.load(entry.name)[0] for entry in ts.entries)
    np.testing.assert_array_equal(whole, pixels)
    np.testing.assert_array_equal(plane, pixels[1])


def test_draw_a_missing_object_uses_the_polygon_tool_with_fresh_ids(correct_widget, click):
    viewer, widget = correct_widget
    image, pred = _prediction(viewer)
    click(widget.draw_button)  # before Correct: nothing to draw on yet
    assert "Click 'Correct' first" in widget.status.value
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["nuclei [unet] labels corrected"]
    before = np.array(corrected.data, copy=True)
    click(widget.draw_button)
    new = int(before.max()) + 1
    assert corrected.mode == "polygon" and corrected.selected_label == new
    assert viewer.layers.selection.active is corrected and "outline" in widget.status.value
    # what napari's polygon tool does when the outline is closed (a double click)
    empty = np.argwhere(before == 0)[0]
    y, x = (int(v) for v in np.clip(empty, 6, np.array(before.shape) - 7))
    corrected.paint_polygon(np.array([[y - 5, x - 5], [y - 5, x + 5], [y + 5, x + 5], [y + 5, x - 5]]), new)
    assert (np.asarray(corrected.data) == new).sum() > 50
    assert corrected.selected_label == new + 1  # the next outline is a new object
    corrected.undo()
    np.testing.assert_array_equal(corrected.data, before)


def test_dropping_a_training_set_index_opens_linked_layers_that_autosave(make_napari_viewer, qtbot, tmp_path):
    from napari_unet.synthetic import fluorescent_nuclei

    image, labels = fluorescent_nuclei((64, 64), 5, seed=4)
    ts = TrainingSet(tmp_path / "set")
    entry = ts.add(image, labels, name="cells").name
    viewer = make_napari_viewer()
    # a drop (File > Open too) asks napari for a reader with no plugin named: ours is the only one
    viewer.open(str(tmp_path / "set" / "index.json"), plugin=None)
    assert [layer.name for layer in viewer.layers] == ["cells image", "cells", "cells reviewed"]
    assert viewer.layers["cells reviewed"].data.all()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    corrected = viewer.layers["cells"]
    viewer.layers.selection.active = corrected
    assert widget.corrected_layer().name == "cells"  # (the dock sees layers through napari's proxy)
    target = int(labels.max())
    widget.tool.value = "delete object (click)"
    widget.click(corrected, np.argwhere(np.asarray(corrected.data) == target)[0].astype(float))
    qtbot.waitUntil(lambda: target not in TrainingSet(tmp_path / "set", create=False).load(entry)[1],
                    timeout=10_000)


def test_docks_sit_in_napari_layer_menus(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()

    def commands(menu):
        return {getattr(item, "command", None) and item.command.id for item in app.menus.get_menu(menu)}

    assert {"napari-unet.segment_widget", "napari-unet.finetune_widget"} <= commands("napari/layers/segment")
    assert "napari-unet.correct_widget" in commands("napari/layers/annotate")
    assert "napari-unet.supervision_widget" in commands("napari/layers/visualize")


class _Recorded:
    """A full-resolution labels array (as a zarr store or dask array behaves) that records the
    number of pixels of every read."""

    def __init__(self, data, reads):
        self._data, self._reads = data, reads
        self.shape, self.dtype, self.ndim, self.size = data.shape, data.dtype, data.ndim, data.size

    def __getitem__(self, key):
        out = self._data[key]
        self._reads.append(int(np.size(out)))
        return out

    def __len__(self):
        return self.shape[0]


def test_a_multiscale_layer_is_corrected_region_by_region_never_copied_whole(correct_widget, click, click_and_wait,
                                                                            monkeypatch, tmp_path):
    from napari_unet import editing
    from napari_unet.synthetic import fluorescent_nuclei

    monkeypatch.setattr(editing, "REGION_PIXELS", 160 * 160)
    viewer, widget = correct_widget
    image, truth = fluorescent_nuclei((400, 480), 60, seed=3)
    truth = truth.astype(np.int32)
    viewer.add_image(image, name="slide", scale=(0.5, 0.5))
    reads = []
    pred = viewer.add_labels([_Recorded(truth, reads), truth[::2, ::2], truth[::4, ::4]], name="slide labels",
                             scale=(0.5, 0.5), metadata={"napari_unet": {"kind": "labels", "source": "slide"}})
    assert pred.multiscale
    widget.source.value = pred
    widget.folder.value = str(tmp_path / "set")
    reads.clear()
    click(widget.correct_button)
    corrected = viewer.layers["slide labels corrected"]
    region = tuple(slice(a, b) for a, b in corrected.metadata["napari_unet"]["region"])
    assert corrected.data.size <= 160 * 160 and max(reads) == corrected.data.size  # only the region was read
    np.testing.assert_array_equal(corrected.data, truth[region])
    np.testing.assert_allclose(corrected.translate, [0.5 * s.start for s in region])  # on top of its pixels
    assert "is large" in widget.status.value and not pred.visible
    # edit, review and keep it: the training set holds the region of the image and its corrections
    target = int(np.unique(corrected.data[corrected.data > 0])[0])
    widget.tool.value = "delete object (click)"
    widget.click(corrected, np.argwhere(np.asarray(corrected.data) == target)[0].astype(float))
    click(widget.review_whole)
    click_and_wait(widget, widget.add_button)
    img, labels, rev = TrainingSet(tmp_path / "set", create=False).load(TrainingSet(tmp_path / "set").entries[0].name)
    np.testing.assert_array_equal(img, image[region])
    np.testing.assert_array_equal(labels, corrected.data)
    assert rev.all() and target not in labels
    # the Fine-tune dock trains on the same region of the image
    _, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    (triple,), _ = finetune.viewer_triples()
    np.testing.assert_array_equal(triple[0], image[region])
    np.testing.assert_array_equal(triple[1], corrected.data)


def _lazy_stack(viewer, monkeypatch):
    """``(stack, layer)``: a dask-backed 4-plane labels layer, larger than the (lowered) region limit."""
    from napari_unet import editing

    da = pytest.importorskip("dask.array")
    monkeypatch.setattr(editing, "REGION_PIXELS", 100 * 100)
    stack = np.zeros((4, 120, 90), np.int32)
    stack[2, 10:30, 10:30] = 5
    return stack, viewer.add_labels(da.from_array(stack, chunks=(1, 60, 45)), name="lazy labels")


def test_a_large_lazy_stack_is_corrected_one_plane_region_at_a_time(correct_widget, click, monkeypatch):
    viewer, widget = correct_widget
    stack, pred = _lazy_stack(viewer, monkeypatch)
    viewer.dims.set_point(0, 2)
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["lazy labels corrected"]
    assert corrected.data.shape[0] == 1 and corrected.data.size <= 100 * 100  # the plane shown, centred
    assert corrected.translate[0] == 2
    region = tuple(slice(a, b) for a, b in corrected.metadata["napari_unet"]["region"])
    np.testing.assert_array_equal(corrected.data, stack[region])


def test_a_corrected_region_is_written_back_into_the_large_labels_and_their_levels(correct_widget, slide_labels,
                                                                                  click, qtbot):
    """Correct a region of a zarr-backed multiscale result, then 'Write into the full labels': the
    store holds the edit, a new object gets an id above every other, the coarse levels follow."""
    viewer, widget = correct_widget
    truth, store, pyramid, pred = slide_labels(viewer)
    assert pred.multiscale and len(pyramid.levels) == 4
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["slide labels corrected"]
    region = tuple(slice(a, b) for a, b in corrected.metadata["napari_unet"]["region"])
    data = np.asarray(corrected.data)
    gone = int(np.unique(data[data > 0])[0])
    widget.tool.value = "delete object (click)"
    widget.click(corrected, np.argwhere(data == gone)[0].astype(float))
    free = np.argwhere(ndi_distance(np.asarray(corrected.data) == 0) > 6)
    empty, fresh = tuple(free[0]), tuple(free[-1])  # background, away from objects
    elsewhere = int(np.setdiff1d(np.unique(truth), np.unique(truth[region]))[-1])  # an id outside the region
    corrected.paint(empty, elsewhere)  # napari's brush, with an id picked in the label box
    corrected.paint(fresh, corrected.selected_label)  # and with the fresh id Correct picked
    assert corrected.selected_label == truth.max() + 1
    click(widget.write_button)
    assert widget.running
    # the user goes on editing during the write: the edit stays in the layer, with its undo history
    second = int([i for i in np.unique(data[data > 0]) if i != gone][-1])
    widget.click(corrected, np.argwhere(np.asarray(corrected.data) == second)[0].astype(float))
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert corrected.editable and second not in np.asarray(corrected.data)
    assert "Wrote 'slide labels corrected' into 'slide labels'" in widget.status.value, widget.status.value
    assert second in np.asarray(store[:])[region]  # what the layer held at the click was written
    corrected.undo()  # the renumbering is one step of the history...
    assert np.asarray(corrected.data)[empty] == elsewhere
    corrected.undo()  # ...and the edit made during the write is still there before it
    assert second in np.asarray(corrected.data)
    corrected.redo()
    corrected.redo()
    stored = np.asarray(store[:])
    new_id = int(truth.max()) + 2  # above the fresh id, which is free and stays
    assert stored[region][empty] == new_id and np.asarray(corrected.data)[empty] == new_id
    assert stored[region][fresh] == truth.max() + 1
    assert gone not in stored[region]
    outside = np.ones(truth.shape, bool)
    outside[region] = False
    np.testing.assert_array_equal(stored[outside], truth[outside])
    for k, level in enumerate(pyramid.levels[1:], start=1):
        np.testing.assert_array_equal(np.asarray(level[:]), stored[:: 2 ** k, :: 2 ** k])
    # a second edit of the same region goes back too (the region is now what was written)
    corrected.paint(empty, 0)
    click(widget.write_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert np.asarray(store[:])[region][empty] == 0, widget.status.value
    assert second not in np.asarray(store[:])[region]  # the edit made during the first write went too


def test_writing_back_is_refused_with_a_message_for_read_only_or_whole_labels(correct_widget, click, monkeypatch):
    viewer, widget = correct_widget
    stack, pred = _lazy_stack(viewer, monkeypatch)
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["lazy labels corrected"]
    corrected.data_setitem(np.nonzero(np.asarray(corrected.data) == 5), 0)
    click(widget.write_button)
    assert not widget.running and "read-only" in widget.status.value and stack[2, 20, 20] == 5
    click(widget.relabel_button)  # 1..N would reuse ids of objects outside the region
    assert "is a region of large labels" in widget.status.value
    # a small layer's corrected copy is the whole result: nothing to write back into
    pred = viewer.add_labels(stack[2].copy(), name="small labels")
    widget.source.value = pred
    click(widget.correct_button)
    click(widget.write_button)
    assert "holds the whole labels" in widget.status.value


def test_the_weight_map_shown_is_the_fine_tune_docks_loss(make_napari_viewer):
    """Correct shows the weight map the Fine-tune dock of the same viewer trains with (each dock
    gets its own proxy of the viewer: they were never found equal, so the default was shown)."""
    viewer = make_napari_viewer()
    _, correct = viewer.window.add_plugin_dock_widget("napari-unet", "Correct")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert correct._loss_class_weights() is None  # the default loss: the border term alone
    finetune.loss.value = "weight-map CE (U-Net paper)"
    assert correct._loss_class_weights() == "balanced"


def test_the_correct_dock_alone_loads_its_split_tool_in_a_worker():
    """With Correct as the only dock (no warm-up), the split tool's scipy.ndimage is imported by a
    worker, not on the Qt thread at the first split (a 0.35-0.5 s pause)."""
    import subprocess
    import sys

    code = ("import sys, threading\n"
            "importers = []\n"
            "class Watch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'scipy.ndimage':\n"
            "            importers.append(threading.current_thread() is threading.main_thread())\n"
            "sys.meta_path.insert(0, Watch())\n"
            "import napari\n"
            "from qtpy.QtWidgets import QApplication\n"
            "v = napari.Viewer(show=False)\n"
            "if 'scipy.ndimage' in sys.modules:\n"
            "    print('loaded before'); sys.exit(0)\n"
            "v.window.add_plugin_dock_widget('napari-unet', 'Correct')\n"
            "from napari_unet.widgets import _workers\n"
            "import time\n"
            "end = time.time() + 60\n"
            "while (_workers.running() or 'scipy.ndimage' not in sys.modules) and time.time() < end:\n"
            "    QApplication.processEvents(); time.sleep(0.01)\n"
            "print(importers)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if last == "loaded before":
        pytest.skip("this napari imports scipy.ndimage itself at start-up")
    assert last == "[False]", out.stdout[-500:] + out.stderr[-2000:]

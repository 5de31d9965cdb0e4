"""The Correct dock's ids: fresh ids in a region never reuse a deleted object's, the layer has
room for the ids a write gives, and an edit whose new ids do not fit the layer widens it."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from scipy.ndimage import distance_transform_edt

from napari_unet.writeback import region_checksum


def _free_pixels(data):
    """Background pixels away from every object."""
    return np.argwhere(distance_transform_edt(np.asarray(data) == 0) > 6)


def test_a_region_s_new_ids_and_the_ids_a_write_gives_fit_and_every_later_write_goes_back(
        correct_widget, slide_labels, click, qtbot):
    viewer, widget = correct_widget
    truth, store, pyramid, pred = slide_labels(viewer)
    widget.source.value = pred
    click(widget.correct_button)
    corrected = viewer.layers["slide labels corrected"]
    region = tuple(slice(a, b) for a, b in corrected.metadata["napari_unet"]["region"])
    data = np.asarray(corrected.data)
    top = int(data.max())
    assert corrected.data.dtype == np.uint32  # room for the ids a write gives
    # the region's highest id deleted: the next fresh id is still above it
    widget.tool.value = "delete object (click)"
    widget.click(corrected, np.argwhere(data == top)[0].astype(float))
    click(widget.draw_button)
    assert corrected.selected_label == top + 1
    # meanwhile an object with a large id is written elsewhere in the labels
    outside = np.ones(truth.shape, bool)
    outside[region] = False
    far = tuple(int(i) for i in np.argwhere(outside & (truth == 0))[0])
    store[far] = 139000
    spot = tuple(int(i) for i in _free_pixels(corrected.data)[0])
    corrected.paint(spot, corrected.selected_label)
    click(widget.write_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert "Wrote" in widget.status.value, widget.status.value
    assert np.asarray(corrected.data)[spot] == 139001 and store[region][spot] == 139001
    assert corrected.metadata["napari_unet"]["region_checksum"] == region_checksum(store[region])
    # the region's state was kept: the next write goes back too
    corrected.paint(spot, 0)
    click(widget.write_button)
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert "Wrote" in widget.status.value, widget.status.value
    assert store[region][spot] == 0 and store[far] == 139000


def test_a_split_whose_new_id_does_not_fit_the_layer_widens_it_and_undoes(correct_widget):
    viewer, widget = correct_widget
    labels = np.zeros((30, 30), np.uint16)
    labels[5:25, 5:25] = 65535  # a training set's uint16 corrections at the type's largest id
    layer = Labels(labels.copy(), name="cells", metadata={"napari_unet": {"kind": "corrections"}})
    viewer.add_layer(layer)
    viewer.layers.selection.active = layer
    widget.tool.value = "split object (click two ends)"
    widget.click(layer, np.array([0.0, 12.0]))
    widget.click(layer, np.array([29.0, 12.0]))
    assert layer.data.dtype == np.uint32, widget.status.value
    assert set(np.unique(layer.data)) == {0, 65535, 65536} and (np.asarray(layer.data)[labels > 0] > 0).all()
    layer.undo()
    np.testing.assert_array_equal(layer.data, labels)

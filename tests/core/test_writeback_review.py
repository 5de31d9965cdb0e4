"""Write-back of a corrected region: a deleted object's id is never given to a new one, and the
layer has room for the ids the labels hand out."""

from __future__ import annotations

import numpy as np
import zarr
from scipy import ndimage as ndi

from napari_unet import editing
from napari_unet.jobs import run_to_end
from napari_unet.writeback import region_checksum, write_back_iter


def test_an_object_drawn_with_the_id_of_a_deleted_one_stays_apart_from_that_one_s_outside_part():
    base = zarr.zeros((64, 64), dtype=np.int32, chunks=(32, 32))
    base[2:6, 2:6] = 19
    base[28:36, 10:14] = 20  # object 20 crosses the region's edge (row 32): its lower part stays outside
    region = (slice(0, 32), slice(0, 64))
    copied = np.asarray(base[region])
    layer = editing.editable_labels(copied)
    editing.delete_object(layer, 20).apply(layer)
    # Correct hands out ids above every id the region held (the deleted one included)
    fresh = editing.next_label(layer, above=int(copied.max()))
    assert fresh == 21
    # an object drawn elsewhere with the deleted object's id is a new object all the same
    layer[10:14, 40:44] = 20
    layer[20:24, 50:54] = fresh
    result = run_to_end(write_back_iter([base], region, layer, region_checksum(copied)))
    out = np.asarray(base[:])
    assert result.renumbered == {20: 22}  # 21 is above every id of the labels: it stays
    assert ndi.label(out == 20)[1] == 1 and (out[32:36, 10:14] == 20).all() and not (out[:32] == 20).any()
    assert (out[10:14, 40:44] == 22).all() and (out[20:24, 50:54] == 21).all()
    # an object that keeps some of its pixels keeps its id, however it was redrawn
    again = result.labels.copy()
    again[0:2, 2:6] = 19  # object 19 grown
    second = run_to_end(write_back_iter([base], region, again, result.checksum))
    assert second.renumbered == {} and (np.asarray(base[0:6, 2:6]) == 19).all()


def test_the_ids_a_write_gives_fit_the_region_s_layer():
    """A region of small ids from labels that hold a large one elsewhere: the id given to a new
    object (above every id) fits the layer, so the layer can show it."""
    base = zarr.zeros((64, 64), dtype=np.int32, chunks=(32, 32))
    base[40:50, 40:50] = 139000  # an object elsewhere in the slide with a large id
    base[2:6, 2:6] = 12
    region = (slice(0, 32), slice(0, 32))
    copied = np.asarray(base[region])
    layer = editing.editable_labels(copied)
    layer[10:14, 10:14] = editing.next_label(layer, above=int(copied.max()))
    result = run_to_end(write_back_iter([base], region, layer, region_checksum(copied)))
    assert result.renumbered == {13: 139001}
    edit = editing.renumber(layer, result.renumbered)
    assert edit.dtype_for(layer.dtype) == layer.dtype
    np.testing.assert_array_equal(edit.apply(layer), np.asarray(base[region]))


def test_uint64_labels_beyond_int64_go_back_with_their_ids():
    huge = 2 ** 63 + 5
    base = np.zeros((1, 16, 16), np.uint64)
    base[0, :4, :4] = huge
    region = (slice(0, 1), slice(0, 8), slice(0, 8))
    copied = base[region].copy()
    layer = editing.editable_labels(copied)
    assert layer.dtype == np.uint64
    layer[0, 5:7, 5:7] = editing.next_label(layer, above=int(copied.max()))
    result = run_to_end(write_back_iter([base], region, layer, region_checksum(copied)))
    assert result.renumbered == {} and int(base[0, 0, 0]) == huge and int(base[0, 6, 6]) == huge + 1

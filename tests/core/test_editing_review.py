"""Label edits on the ids that broke them: room for new ids, 64-bit and huge ids, splits that
change only what the line cut."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.editing import (editable_labels, next_label, relabel_sequential, remove_small, renumber,
                                 split_object)
from napari_unet.scaling import median_diameter

HUGE = 2 ** 63 + 5  # a uint64 id that int64 (and a float) cannot hold


def test_editable_copies_have_room_for_new_ids_and_never_change_an_id():
    small = np.array([[0, 7], [12, 3]], np.int32)
    assert editable_labels(small).dtype == np.uint32  # room above the ids for new objects and write-backs
    wide = np.array([[0, 2 ** 32 + 7, 7]], np.int64)
    negative = np.array([[0, -3, 7]], np.int16)
    huge = np.array([[0, HUGE, 7]], np.uint64)
    for labels in (wide, negative, huge):
        copy = editable_labels(labels)
        assert [int(v) for v in copy.ravel()] == [int(v) for v in labels.ravel()]  # no id wrapped or merged
    assert editable_labels(negative).dtype == np.int64 and editable_labels(huge).dtype == np.uint64
    with pytest.raises(ValueError, match="integer"):
        editable_labels(np.zeros((2, 2), np.float32))


def test_a_split_at_the_type_s_largest_id_widens_instead_of_overflowing():
    labels = np.zeros((10, 10), np.uint16)
    labels[2:8, 2:8] = 65535
    edit = split_object(labels, [[0, 5], [9, 5]])
    assert edit.dtype_for(labels.dtype) == np.uint32
    with pytest.raises(ValueError, match="widen"):  # applied as it is, the new id would wrap to 0
        edit.apply(labels.copy())
    out = edit.apply(labels.astype(edit.dtype_for(labels.dtype)))
    assert set(np.unique(out)) == {0, 65535, 65536} and (out[labels > 0] > 0).all()
    # a renumbering to an id beyond the type's range widens too (a write into large labels)
    edit = renumber(labels, {65535: 139001})
    assert edit.dtype_for(labels.dtype) == np.uint32
    assert set(np.unique(edit.apply(labels.astype(np.uint32)))) == {0, 139001}


def test_huge_ids_are_counted_without_an_array_as_long_as_the_largest_id():
    labels = np.zeros((12, 12), np.uint64)
    labels[1:6, 1:6] = HUGE
    labels[8:10, 8:10] = 3
    out = remove_small(labels, 5).apply(labels.copy())
    assert set(np.unique(out)) == {0, HUGE}
    # the object under the line is found by its own id (not a count per possible id)
    out = split_object(labels, [[3, 0], [3, 7]]).apply(labels.copy())
    assert set(int(v) for v in np.unique(out)) == {0, 3, HUGE, HUGE + 1}
    disc = np.zeros((40, 40), np.uint64)
    yy, xx = np.mgrid[:40, :40]
    disc[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = HUGE
    assert median_diameter(disc) == pytest.approx(20, abs=1)
    assert median_diameter(disc, whole=True) == pytest.approx(20, abs=1)


def test_64_bit_ids_beyond_float_precision_stay_apart():
    labels = np.array([[2 ** 53, 2 ** 53 + 1, 2 ** 53 + 2, 2 ** 53 + 3]], np.uint64)
    out = relabel_sequential(labels).apply(labels.copy())
    assert out.tolist() == [[1, 2, 3, 4]]
    out = renumber(labels, {2 ** 53 + 1: 9}).apply(labels.copy())
    assert [int(v) for v in out.ravel()] == [2 ** 53, 9, 2 ** 53 + 2, 2 ** 53 + 3]


def test_a_split_changes_only_the_piece_the_line_cut():
    """A U-shaped 3D object is two pieces in most planes: cutting one must not renumber the other."""
    stack = np.zeros((3, 20, 20), np.uint16)
    stack[:, 2:8, 2:8] = 7
    stack[:, 2:5, 12:15] = 7
    stack[0, 2:5, 2:15] = 7  # the bottom of the U joins the two arms
    out = split_object(stack, [[1, 5, 0], [1, 5, 9]]).apply(stack.copy())
    assert (out[1, 2:5, 12:15] == 7).all()  # the other arm of plane 1 keeps the object's id
    assert (out[1, 2:5, 2:8] == 7).all() and set(np.unique(out[1, 6:8, 2:8])) == {8}  # the larger part keeps it
    np.testing.assert_array_equal(out[[0, 2]], stack[[0, 2]])
    # a line across the object that cuts nothing apart is refused, as a line that misses it is
    with pytest.raises(ValueError, match="does not cut object 7"):
        split_object(stack, [[1, 2, 10], [1, 2, 16]])  # along the small arm's edge: nicked, not cut apart
    # new ids start above ``above`` (a region of large labels: above every id it held)
    out = split_object(stack, [[1, 5, 0], [1, 5, 9]], above=40).apply(stack.copy())
    assert set(np.unique(out[1])) == {0, 7, 41}
    assert next_label(stack, above=40) == 41 and next_label(stack) == 8

"""Label edits (delete, merge, split along a line, remove small, relabel) on known arrays."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.editing import (delete_object, merge_objects, next_label, relabel_sequential, remove_small,
                                 split_object)


def _two_discs():
    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.uint16)
    labels[(yy - 20) ** 2 + (xx - 15) ** 2 < 100] = 3
    labels[(yy - 20) ** 2 + (xx - 42) ** 2 < 100] = 7
    return labels


def test_delete_merge_and_next_label():
    labels = _two_discs()
    before = labels.copy()
    edit = delete_object(labels, 3)
    np.testing.assert_array_equal(labels, before)  # the input is never modified
    out = edit.apply(labels.copy())
    assert set(np.unique(out)) == {0, 7} and (out[before == 7] == 7).all()
    out = merge_objects(labels, 7, 3).apply(labels.copy())
    assert set(np.unique(out)) == {0, 7} and (out[before > 0] == 7).all()
    assert next_label(labels) == 8
    with pytest.raises(ValueError, match="background"):
        delete_object(labels, 0)
    with pytest.raises(ValueError, match="no object 5"):
        delete_object(labels, 5)
    with pytest.raises(ValueError, match="two different"):
        merge_objects(labels, 3, 3)


def test_split_along_a_line_keeps_every_pixel():
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:25] = 4  # a square, cut by a vertical line at x = 12
    edit = split_object(labels, [[0, 12], [29, 12]])
    out = edit.apply(labels.copy())
    assert (out[labels == 4] > 0).all()  # no pixel of the object is lost
    ids = np.unique(out[out > 0])
    assert len(ids) == 2 and 4 in ids and 5 in ids
    # the larger part (x >= 13, 12 columns) keeps the label; the smaller one gets a new id
    assert (out[5:25, 14:25] == 4).all() and (out[5:25, 5:12] == 5).all()
    # a diagonal cut separates too (a 4-connected line leaves no diagonal gap)
    out = split_object(labels, [[3, 3], [27, 27]]).apply(labels.copy())
    assert len(np.unique(out[out > 0])) == 2
    with pytest.raises(ValueError, match="does not cut"):
        split_object(labels, [[10, 0], [10, 10]])  # ends inside the object
    with pytest.raises(ValueError, match="does not cross"):
        split_object(labels, [[0, 0], [0, 29]])


def test_split_in_one_plane_of_a_stack():
    stack = np.zeros((3, 20, 20), np.uint8)
    stack[:, 4:16, 4:16] = 2
    out = split_object(stack, [[1, 0, 10], [1, 19, 10]]).apply(stack.copy())
    assert len(np.unique(out[1][out[1] > 0])) == 2
    np.testing.assert_array_equal(out[0], stack[0])
    np.testing.assert_array_equal(out[2], stack[2])
    with pytest.raises(ValueError, match="one plane"):
        split_object(stack, [[0, 0, 10], [2, 19, 10]])


def test_remove_small_and_relabel():
    labels = _two_discs()
    labels[0:2, 0:2] = 9  # 4 px
    out = remove_small(labels, 10).apply(labels.copy())
    assert 9 not in out and 3 in out and 7 in out
    out = relabel_sequential(out).apply(out)
    assert set(np.unique(out)) == {0, 1, 2}
    assert relabel_sequential(out).size == 0
    with pytest.raises(ValueError, match="integers"):
        remove_small(labels.astype(float), 3)


def test_correction_regions_are_bounded_and_centred_on_the_view():
    from napari_unet.editing import correction_region, needs_region

    assert needs_region((10, 10), multiscale=True, lazy=False)
    assert not needs_region((100, 100), multiscale=False, lazy=True, limit=100 * 100)
    assert needs_region((101, 100), multiscale=False, lazy=True, limit=100 * 100)
    assert not needs_region((10**5, 10**5), multiscale=False, lazy=False)  # in memory already
    # a view larger than the limit shrinks around its centre
    assert correction_region((10000, 10000), (slice(0, 10000), slice(2000, 4000)), limit=100 * 100) == \
        (slice(5000 - 111, 5000 + 112), slice(3000 - 22, 3000 + 22))  # the view's aspect kept
    # a view that fits is taken as it is; a view off the data means the whole plane
    assert correction_region((500, 500), (slice(10, 60), slice(20, 90)), limit=100 * 100) == (slice(10, 60),
                                                                                                  slice(20, 90))
    assert correction_region((50, 60), (slice(70, 90), slice(0, 0)), limit=100 * 100) == (slice(0, 50),
                                                                                              slice(0, 60))
    # stacks: every plane when they fit, else the plane shown
    assert correction_region((3, 40, 40), (slice(0, 40), slice(0, 40)), (1,), limit=100 * 100)[0] == slice(0, 3)
    assert correction_region((9, 40, 40), (slice(0, 40), slice(0, 40)), (7,), limit=100 * 100)[0] == slice(7, 8)
    for shape in [(3000, 7), (7, 3000), (5, 300, 300), (2, 2, 80, 80)]:
        region = correction_region(shape, (slice(0, shape[-2]), slice(0, shape[-1])), limit=100 * 100)
        assert np.prod([s.stop - s.start for s in region]) <= 100 * 100
        assert all(0 <= s.start < s.stop <= n for s, n in zip(region, shape))
    with pytest.raises(ValueError, match="no image plane"):
        correction_region((5,), (slice(0, 5),))


def test_review_marks_cover_the_image_the_plane_or_the_visible_box():
    from napari_unet.editing import mark_reviewed, review_region

    assert review_region((4, 5), "image").all() and review_region((4, 5), "plane").all()  # 2D: the plane is all
    plane = review_region((3, 4, 5), "plane", (1,))
    assert plane[1].all() and not plane[0].any() and not plane[2].any()
    view = review_region((3, 4, 5), "view", (2,), (slice(1, 3), slice(0, 2)))
    assert view.sum() == 4 and view[2, 1:3, 0:2].all()
    with pytest.raises(ValueError, match="Unknown review mark 'everything'"):
        review_region((4, 5), "everything")
    reviewed = np.zeros((4, 5), np.uint8)
    reviewed[0] = 1
    edit = mark_reviewed(reviewed, "image")  # only the pixels that change, set to 1
    assert edit.size == 15 and not reviewed[edit.indices].any()
    np.testing.assert_array_equal(edit.apply(reviewed.copy()), np.ones((4, 5), np.uint8))
    edit = mark_reviewed(reviewed, "clear")
    assert edit.size == 5 and int(edit.values) == 0
    assert mark_reviewed(np.ones((4, 5), np.uint8), "view", (), (slice(0, 2), slice(0, 2))).size == 0


def test_visible_box_pixel_and_editable_copy_arithmetic():
    from napari_unet.editing import box_between, editable_labels, pixel_at, visible_corners

    lo, hi = visible_corners((0, 50.0, 40.0), (100, 200), zoom=2.0)  # 50 x 100 world units around the centre
    np.testing.assert_allclose(lo, [25, -10])
    np.testing.assert_allclose(hi, [75, 90])
    assert box_between(hi, lo, (60, 80)) == (slice(25, 60), slice(0, 80))  # any order, outwards, clipped
    assert box_between((1.2, 3.7), (4.1, 5.0), (10, 10)) == (slice(1, 5), slice(3, 5))
    assert pixel_at((2.6, -3.0, 99.0), (5, 5, 5)) == (3, 0, 4)
    small, large = np.array([[0, 7]], np.int64), np.array([[0, 70000]], np.int64)
    assert editable_labels(small).dtype == np.uint32 and editable_labels(large).dtype == np.uint32  # room for new ids
    copy = editable_labels(small)
    copy[0, 0] = 5
    assert small[0, 0] == 0  # a copy

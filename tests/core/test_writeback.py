"""Corrections of a region written back into large labels: ids kept apart, coarse levels kept in
step, and nothing written when the labels cannot take it or changed since the copy."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from napari_unet.editing import correction_region
from napari_unet.inference.pyramid import Pyramid
from napari_unet.jobs import PredictionCancelled, run_to_end
from napari_unet.writeback import max_label_iter, region_checksum, write_back_iter, writable


def _labels(tmp_path, shape=(2, 2600, 2300)):
    """A zarr store of squares (ids 1.. over both planes, up to 2 * 23 * 26) and its pyramid."""
    base = zarr.create(shape=shape, chunks=(1, 512, 512), dtype=np.int32, store=str(tmp_path / "labels.zarr"))
    data = np.zeros(shape, np.int32)
    n = 0
    for p in range(shape[0]):
        for y in range(20, shape[1] - 60, 100):
            for x in range(20, shape[2] - 60, 100):
                n += 1
                data[p, y:y + 50, x:x + 50] = n
    base[:] = data
    pyramid = Pyramid(base, tmp_path / "pyramid", min_side=600)
    pyramid.update((slice(None), slice(None), slice(None)))
    return pyramid.levels, data


def _coarse_match(levels) -> bool:
    base = np.asarray(levels[0][:])
    return all(np.array_equal(np.asarray(lv[:]), base[:, ::2 ** k, ::2 ** k]) for k, lv in enumerate(levels[1:], 1))


def test_a_corrected_region_goes_back_with_new_objects_numbered_above_every_id(tmp_path):
    levels, data = _labels(tmp_path)
    region = correction_region(levels[0].shape, (slice(1000, 1500), slice(700, 1400)), (1,), limit=500 * 700)
    assert region[0] == slice(1, 2)
    copy = np.asarray(levels[0][region]).astype(np.uint16)  # the editable layer's type
    before = region_checksum(levels[0][region])  # taken on the labels as read, as Correct does
    elsewhere = int(data[0, 20, 20])  # an id of the other plane: painting with it here makes a new object
    copy[0, 10:40, 10:40] = 0  # an object erased
    copy[0, 300:340, 100:140] = elsewhere  # a missing object drawn with an id used elsewhere
    copy[0, 400:420, 500:520] = 9999  # and one drawn with a fresh id
    first = int(copy[0, 110, 90])
    copy[0, 110:160, 70:90] = first  # an object grown into the background
    result = run_to_end(write_back_iter(levels, region, copy, before))
    top = int(data.max())
    assert top < 9999 and result.renumbered == {elsewhere: 10000}  # 9999 is free: it stays
    stored = np.asarray(levels[0][:])
    assert stored[region][0, 320, 120] == 10000 and stored[region][0, 410, 510] == 9999
    assert stored[region][0, 120, 80] == first and stored[region][0, 20, 20] == 0
    assert np.array_equal(stored[0], data[0]), "the other plane is untouched"
    outside = np.ones(stored.shape, bool)
    outside[region] = False
    assert np.array_equal(stored[outside], data[outside]), "nothing outside the region changed"
    assert result.checksum == region_checksum(stored[region]) and result.changed_pixels > 0
    assert _coarse_match(levels), "every coarser level shows the corrected region"
    # written again after more edits: the region is what was written, so the checksum holds
    again = result.labels.copy()
    again[0, 200:220, 200:220] = 10000  # grows the object numbered a moment ago: no new id
    second = run_to_end(write_back_iter(levels, region, again, result.checksum))
    assert second.renumbered == {} and np.asarray(levels[0][region])[0, 210, 210] == 10000


def test_nothing_is_written_when_the_labels_changed_since_the_copy(tmp_path):
    levels, data = _labels(tmp_path)
    region = (slice(0, 1), slice(0, 400), slice(0, 400))
    copy = np.asarray(levels[0][region])
    checksum = region_checksum(copy)
    levels[0][0, 30, 30] = 7777  # someone else wrote here meanwhile
    edited = copy.copy()
    edited[0, :50, :50] = 0
    with pytest.raises(ValueError, match="changed since you pressed Correct"):
        run_to_end(write_back_iter(levels, region, edited, checksum))
    assert int(levels[0][0, 30, 30]) == 7777 and int(levels[0][0, 25, 25]) == data[0, 25, 25]


def test_read_only_labels_are_refused_with_nothing_written(tmp_path):
    levels, data = _labels(tmp_path, shape=(1, 700, 700))
    reopened = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    region = (slice(0, 1), slice(0, 200), slice(0, 200))
    edited = np.zeros((1, 200, 200), np.uint16)
    for array in (reopened, __import__("dask.array").array.from_zarr(reopened)):
        assert not writable(array)
        with pytest.raises(ValueError, match="read-only"):
            run_to_end(write_back_iter([array], region, edited, None))
    assert np.array_equal(np.asarray(levels[0][:]), data)
    frozen = data.copy()
    frozen.flags.writeable = False
    assert writable(levels[0]) and writable(data) and not writable(frozen)


def test_ids_that_do_not_fit_the_labels_type_and_bad_shapes_are_refused():
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, :10, :10] = 255
    labels[0, 50:60, 50:60] = 3
    copy = labels.copy()
    copy[0, 30:40, 30:40] = 3  # new, taken elsewhere, and 255 is too: no room
    with pytest.raises(ValueError, match="no room"):
        run_to_end(write_back_iter([labels], (slice(0, 1), slice(0, 40), slice(0, 40)), copy[:, :40, :40], None))
    assert not labels[0, 30:40, 30:40].any()
    with pytest.raises(ValueError, match="cannot go back in place"):
        run_to_end(write_back_iter([labels], (slice(0, 1), slice(0, 32), slice(0, 64)), copy, None))


def test_the_id_search_stops_when_cancelled_and_nothing_is_written(tmp_path):
    levels, data = _labels(tmp_path, shape=(2, 4200, 300))
    stop = threading.Event()
    region = (slice(0, 1), slice(0, 100), slice(0, 100))
    copy = np.asarray(levels[0][region]).copy()
    copy[0, 80:90, 80:90] = 12345
    gen = write_back_iter(levels, region, copy, region_checksum(levels[0][region]), stop=stop)
    first = next(gen)
    assert first.total == 4 and "largest id" in first.message  # 2 planes x 2 blocks
    stop.set()
    with pytest.raises(PredictionCancelled):
        next(gen)
    assert np.array_equal(np.asarray(levels[0][:]), data)
    assert run_to_end(max_label_iter(levels[0])) == data.max()


def test_a_change_during_the_id_search_stops_the_write(tmp_path):
    levels, data = _labels(tmp_path, shape=(1, 4200, 300))
    region = (slice(0, 1), slice(None, 100), slice(0, 100))  # an open start is the array's edge
    copy = np.asarray(levels[0][region]).copy()
    copy[0, 80:90, 80:90] = 1  # id 1 is in the region: not new; 12345 is
    copy[0, 60:70, 60:70] = 12345
    gen = write_back_iter(levels, region, copy, region_checksum(levels[0][region]))
    next(gen)  # the id search has begun
    levels[0][0, 25, 25] = 0  # someone paints the region meanwhile
    with pytest.raises(ValueError, match="changed since you pressed Correct"):
        run_to_end(gen)
    assert int(levels[0][0, 65, 65]) == data[0, 65, 65]
    with pytest.raises(ValueError, match="not a box"):
        run_to_end(write_back_iter(levels, (slice(0, 1), slice(0, 100, 2), slice(0, 100)), copy[:, ::2], None))


def test_a_write_that_fails_partway_says_so(tmp_path, monkeypatch):
    from napari_unet import writeback

    levels, _ = _labels(tmp_path, shape=(1, 1300, 700))
    region = (slice(0, 1), slice(0, 100), slice(0, 100))
    copy = np.asarray(levels[0][region]).copy()
    copy[0, :30, :30] = 0

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writeback, "write_coarse", full_disk)
    with pytest.raises(writeback.PartialWrite, match="No space left.*partly written"):
        run_to_end(write_back_iter(levels, region, copy, region_checksum(levels[0][region])))


def test_the_factors_of_a_strip_s_levels_are_the_pyramid_s():
    from napari_unet.inference.pyramid import coarse_factors, level_shapes

    shape = (1, 100, 20000)  # the short side alone allows several factors per level
    assert coarse_factors(shape, level_shapes(shape)) == [(1, 2 ** k, 2 ** k) for k in range(1, 6)]
    assert coarse_factors((7, 4096, 4096), [(4, 2048, 2048)]) == [(2, 2, 2)]  # a 3D pyramid halves Z too

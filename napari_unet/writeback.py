"""Corrections of a region of large labels, written back into those labels (no Qt).

Correct copies the visible region of a multiscale or lazy labels layer into an editable layer
(:func:`napari_unet.editing.correction_region`); :func:`write_back_iter` puts the corrected region
back into the labels it came from, so that the full-size result holds every correction:

- refused, with nothing written, when the labels cannot be written (a dask array, a read-only
  store) or when they changed under the region since it was copied (another correction written
  over it meanwhile: the checksum taken at the copy, :func:`region_checksum`, no longer matches);
- objects that are new in the region keep their id when it is above every id of the labels, else
  get one above them all (found by one pass over the labels, :func:`max_label_iter`), so two
  objects never share an id. An id is new unless it still covers a pixel that had that id in
  the region as copied: an object deleted from the region (maybe cut by its edge, its other part
  outside) and a new one drawn elsewhere with its id stay two objects;
- the coarser levels of a multiscale layer are rewritten over the region (each keeps the base's
  pixels at multiples of its factor, as :class:`~napari_unet.inference.pyramid.Pyramid` makes them).

A zarr store is written chunk by chunk (each chunk replaced whole), so a crash during a write
leaves every chunk either as it was or corrected; the corrected layer is kept either way, and a
write that failed partway says so (:class:`PartialWrite`).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .inference.pyramid import coarse_factors, write_coarse
from .jobs import Progress, raise_if_stopped

#: side of the blocks :func:`max_label_iter` reads at once (int32: 64 MB)
BLOCK = 4096


def region_checksum(values) -> str:
    """A checksum of label values as read from the labels (their bytes, dtype and shape; no copy
    when they are contiguous: 0.07 s for 4096² int32, on the Qt thread when Correct copies a region)."""
    data = np.ascontiguousarray(np.asarray(values))
    digest = hashlib.blake2b(repr((data.shape, data.dtype.str)).encode(), digest_size=16)
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def writable(array) -> bool:
    """Whether ``array`` can take writes that last: a writeable numpy array, or a zarr array not
    opened read-only (a dask array is a recipe: writing into it changes nothing)."""
    if isinstance(array, np.ndarray):
        return bool(array.flags.writeable)
    module = type(array).__module__.split(".")[0]
    if module != "zarr":
        return False
    read_only = getattr(array, "read_only", None)
    if read_only is None:  # zarr 2 names it read_only too; anything else: unknown, not written
        return False
    return not bool(read_only)


def check_writable(levels: Sequence) -> None:
    """Raise ``ValueError`` saying what to do when a level of the labels cannot be written."""
    if not all(writable(level) for level in levels):
        raise ValueError("These labels are read-only (a dask array or a store opened read-only), so the "
                         "corrections stay in their own layer: save that layer (File > Save Selected Layers), "
                         "or open the labels from a writable zarr store.")


def max_label_iter(labels, stop: threading.Event | None = None) -> Iterator[Progress]:
    """Yield :class:`Progress` per block while reading every id of ``labels`` (any array numpy can
    index, read :data:`BLOCK` x :data:`BLOCK` pixels at a time); return the largest id (0 if none)."""
    shape = tuple(int(s) for s in labels.shape)
    lead, (h, w) = shape[:-2], shape[-2:]
    blocks = [(plane, y, x) for plane in np.ndindex(*lead) for y in range(0, h, BLOCK) for x in range(0, w, BLOCK)]
    largest = 0
    for done, (plane, y, x) in enumerate(blocks):
        raise_if_stopped(stop)
        block = np.asarray(labels[tuple(plane) + (slice(y, y + BLOCK), slice(x, x + BLOCK))])
        largest = max(largest, int(block.max(initial=0)))
        yield Progress(done + 1, len(blocks), "finding the largest id of the labels")
    return largest


CHANGED = ("The labels under this region changed since you pressed Correct (another correction was written over "
           "it?): nothing was written. Your corrected layer is kept; press Correct again on the labels to get their "
           "current state.")


class PartialWrite(ValueError):
    """Writing failed after it began: the region may hold part of the corrections (the caller may
    let the next write go ahead without the checksum, since the region is then neither state)."""


def _normalised(region, shape) -> tuple:
    """``region`` as one ``slice(start, stop)`` per axis of ``shape`` (steps of 1 only)."""
    region = tuple(region)
    if len(region) != len(shape) or any(not isinstance(s, slice) for s in region):
        raise ValueError(f"The region {region} does not index labels of {len(shape)} axes.")
    out = []
    for s, n in zip(region, shape):
        start, stop, step = s.indices(int(n))
        if step != 1 or stop < start:
            raise ValueError(f"The region {region} is not a box of the labels.")
        out.append(slice(start, stop))
    return tuple(out)


def _new_ids(corrected: np.ndarray, current: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The ids (of ``ids``, those of ``corrected``; sorted) of objects that are new in the region:
    above 0, and covering no pixel that had the same id in ``current`` (the region as copied)."""
    if np.result_type(corrected.dtype, current.dtype).kind == "f":  # int64 against uint64: no float compare
        current = np.where(current < 0, 0, current).astype(np.uint64)
        corrected = np.where(corrected < 0, 0, corrected).astype(np.uint64)
    kept = np.unique(corrected[(corrected == current) & (corrected != 0)])
    return np.setdiff1d(ids[ids > 0], kept.astype(ids.dtype))


@dataclass
class WriteBack:
    """What :func:`write_back_iter` wrote: ``labels``, the region's values as written (new objects
    renumbered); ``renumbered``, new id in the corrected layer -> id written; ``checksum`` of what
    was written (the region's state from now on)."""

    labels: np.ndarray
    renumbered: dict = field(default_factory=dict)
    checksum: str = ""
    changed_pixels: int = 0


def write_back_iter(levels: Sequence, region: Sequence[slice], corrected, checksum: str | None,
                    stop: threading.Event | None = None) -> Iterator[Progress]:
    """Yield :class:`Progress`; write ``corrected`` (the values of ``region`` of ``levels[0]``) into
    ``levels`` (the full-resolution labels, then any coarser levels); return a :class:`WriteBack`.

    ``checksum``: :func:`region_checksum` of the region when it was copied (None: not checked).
    Raises ``ValueError`` (nothing written) when a level cannot be written, the region changed
    since the copy (checked again just before writing), the shapes disagree or the new ids do not
    fit the labels' integer type; :class:`PartialWrite` when writing failed after it began.
    Cancelling (``stop``) is possible until the write starts.
    """
    levels = list(levels)
    base = levels[0]
    region = _normalised(region, base.shape)
    corrected = np.asarray(corrected)
    shape = tuple(s.stop - s.start for s in region)
    if corrected.shape != shape:
        raise ValueError(f"The corrected layer is {corrected.shape}, the region it came from {shape}: "
                         "it was resized or cropped, so it cannot go back in place.")
    if not np.issubdtype(corrected.dtype, np.integer):
        raise ValueError(f"The corrected layer holds {corrected.dtype} values, not object ids.")
    check_writable(levels)
    current = np.asarray(base[region])
    if checksum is not None and region_checksum(current) != checksum:
        raise ValueError(CHANGED)
    ids, inverse = np.unique(corrected, return_inverse=True)
    new_ids = [int(i) for i in _new_ids(corrected, current, ids)]
    renumbered: dict = {}
    top = 0
    if new_ids:  # ids taken elsewhere in the labels move above every id: no two objects share one
        top = yield from max_label_iter(base, stop)
        top = max(top, int(current.max(initial=0)))
        taken = [i for i in new_ids if i <= top]  # new ids above every id of the labels are free: they stay
        start = max(top, new_ids[-1]) + 1
        renumbered = {old: new for new, old in enumerate(taken, start)}
    targets = [renumbered.get(int(i), int(i)) for i in ids]  # the id written for each id of the layer
    for level in levels:
        low, high = (np.iinfo(level.dtype).min, np.iinfo(level.dtype).max) \
            if np.issubdtype(level.dtype, np.integer) else (-2 ** 53, 2 ** 53)
        if targets and not (low <= min(targets) and max(targets) <= high):
            raise ValueError(f"The labels' type ({level.dtype}) has no room for the ids to write ({min(targets)} .. "
                             f"{max(targets)}; new objects get ids above {top}, it holds {low} .. {high}): nothing "
                             "was written.")
    written = np.array(targets, dtype=base.dtype)[inverse].reshape(shape)
    raise_if_stopped(stop)
    # the id search may take minutes: the region must still be what it was (an editable store may be painted)
    if not np.array_equal(np.asarray(base[region]), current):
        raise ValueError(CHANGED)
    yield Progress(0, 1, "writing the corrected region")
    try:
        base[region] = written
        write_coarse(levels[1:], region, written, coarse_factors(base.shape, [lv.shape for lv in levels[1:]]))
    except Exception as exc:
        raise PartialWrite(f"Writing into the labels failed partway ({type(exc).__name__}: {exc}): the region may "
                           "be partly written. Your corrected layer is kept: write it again once the cause is "
                           "fixed (e.g. disk space).") from exc
    yield Progress(1, 1, "writing the corrected region")
    return WriteBack(written, renumbered, region_checksum(written), int(np.count_nonzero(written != current)))

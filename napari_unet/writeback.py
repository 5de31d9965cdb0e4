"""Corrections of a region of large labels, written back into those labels (no Qt).

Correct copies the visible region of a multiscale or lazy labels layer into an editable layer
(:func:`napari_unet.editing.correction_region`); :func:`write_back_iter` puts the corrected region
back into the labels it came from, so that the full-size result holds every correction:

- refused, with nothing written, when the labels cannot be written (a dask array, a read-only
  store) or when they changed under the region since it was copied (another correction written
  over it meanwhile: the checksum taken at the copy, :func:`region_checksum`, no longer matches);
- objects that are new in the region (ids that were not in it when it was copied) keep their id
  when no object of the labels has it, else get one above every id (found by one pass over the
  labels, :func:`max_label_iter`), so two objects never share an id;
- the coarser levels of a multiscale layer are rewritten over the region (each keeps the base's
  pixels at multiples of its factor, as :class:`~napari_unet.inference.pyramid.Pyramid` makes them).

A zarr store is written chunk by chunk (each chunk replaced whole), so a crash during a write
leaves every chunk either as it was or corrected; the corrected layer is kept either way.
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
    """A checksum of label values (their ids, whatever the integer dtype, and their shape)."""
    data = np.ascontiguousarray(np.asarray(values), dtype=np.int64)
    digest = hashlib.blake2b(repr(data.shape).encode(), digest_size=16)
    digest.update(data.tobytes())
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
    since the copy, the shapes disagree or the new ids do not fit the labels' integer type.
    Cancelling (``stop``) is possible until the write starts.
    """
    levels = list(levels)
    base = levels[0]
    region = tuple(region)
    corrected = np.asarray(corrected)
    if len(region) != base.ndim or any(not isinstance(s, slice) for s in region):
        raise ValueError(f"The region {region} does not index labels of {base.ndim} axes.")
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(region, base.shape))
    if corrected.shape != shape:
        raise ValueError(f"The corrected layer is {corrected.shape}, the region it came from {shape}: "
                         "it was resized or cropped, so it cannot go back in place.")
    if not np.issubdtype(corrected.dtype, np.integer):
        raise ValueError(f"The corrected layer holds {corrected.dtype} values, not object ids.")
    check_writable(levels)
    current = np.asarray(base[region])
    if checksum is not None and region_checksum(current) != checksum:
        raise ValueError("The labels under this region changed since you pressed Correct (another correction was "
                         "written over it?): nothing was written. Your corrected layer is kept; press Correct "
                         "again on the labels to get their current state.")
    new_ids = np.setdiff1d(np.unique(corrected), np.unique(current))
    new_ids = new_ids[new_ids > 0]
    values = corrected.astype(np.int64)
    renumbered: dict = {}
    if new_ids.size:  # ids taken elsewhere in the labels move above every id: no two objects share one
        top = yield from max_label_iter(base, stop)
        top = max(top, int(current.max(initial=0)))
        taken = new_ids[new_ids <= top]  # new ids above every id of the labels are free: they stay
        start = max(top, int(new_ids.max())) + 1
        limit = int(np.iinfo(base.dtype).max) if np.issubdtype(base.dtype, np.integer) else 2 ** 53
        if start - 1 + taken.size > limit:
            raise ValueError(f"The labels' type ({base.dtype}) has no room for {new_ids.size} more ids above "
                             f"{top}: nothing was written.")
        if taken.size:
            targets = np.arange(start, start + taken.size, dtype=np.int64)
            renumbered = {int(a): int(b) for a, b in zip(taken, targets)}
            position = np.minimum(np.searchsorted(taken, values), taken.size - 1)
            is_taken = taken[position] == values
            values[is_taken] = targets[position[is_taken]]
    written = values.astype(base.dtype)
    raise_if_stopped(stop)
    yield Progress(0, 1, "writing the corrected region")
    base[region] = written
    write_coarse(levels[1:], region, written, coarse_factors(base.shape, [lv.shape for lv in levels[1:]]))
    yield Progress(1, 1, "writing the corrected region")
    return WriteBack(written, renumbered, region_checksum(written), int(np.count_nonzero(written != current)))

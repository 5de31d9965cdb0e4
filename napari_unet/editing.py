"""Label edits that napari's own tools lack, as pure functions (no Qt).

Each function takes instance labels (any integer dtype, 2D or N-D) and returns an :class:`Edit`:
the indices of the pixels that change and their new values. The napari widget applies an edit
with ``Labels.data_setitem`` so that napari's own undo (Ctrl+Z) reverts it; headless code calls
:meth:`Edit.apply`. Nothing here modifies its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .inputs import EDITED_LABELS, EDITED_LABELS_NON_NEGATIVE, check_instance_labels


@dataclass
class Edit:
    """Pixels to change: ``indices`` (a tuple of index arrays, one per axis) and ``values`` (one
    per pixel, or a 0-d array: one value for all). ``values`` may be of a wider integer type
    than the labels when a new id does not fit theirs (:meth:`dtype_for`)."""

    indices: tuple
    values: np.ndarray
    message: str = ""

    @property
    def size(self) -> int:
        return int(self.indices[0].size) if self.indices else 0

    def dtype_for(self, dtype) -> np.dtype:
        """The integer type labels of ``dtype`` need to take this edit: ``dtype``, or a wider one."""
        values = np.asarray(self.values)
        if not self.size or not values.size or np.dtype(dtype).kind not in "iu":
            return np.dtype(dtype)
        return id_type(dtype, int(values.min()), int(values.max()))

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Apply the edit to ``labels`` in place and return it; ``ValueError`` (nothing changed)
        when a value does not fit their type: widen them first (``labels.astype(edit.dtype_for(
        labels.dtype))``)."""
        if self.size:
            if self.dtype_for(labels.dtype) != labels.dtype:
                raise ValueError(f"The labels' type ({labels.dtype}) cannot hold the new ids: widen the labels "
                                 f"to {self.dtype_for(labels.dtype)} first.")
            labels[self.indices] = self.values
        return labels


def id_type(dtype, low: int, high: int) -> np.dtype:
    """``dtype`` (an integer type) if it holds every id from ``low`` to ``high``, else the
    smallest integer type that holds both its own values and those; ``ValueError`` when none does."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    if info.min <= low and high <= info.max:
        return dtype
    wide = np.result_type(dtype, np.min_scalar_type(low), np.min_scalar_type(high))
    if wide.kind not in "iu":  # beyond 64 bits, or int64 with uint64 (numpy's answer is a float)
        raise ValueError(f"No integer type holds both the ids of these {dtype} labels and id "
                         f"{high if high > info.max else low}: relabel the objects 1..N first.")
    return wide


def _check(labels) -> np.ndarray:
    """Labels of integer ids (napari's, negative ones kept; booleans and floats refused)."""
    return check_instance_labels(labels, EDITED_LABELS)


def _check_label(labels: np.ndarray, label: int, what: str = "object") -> int:
    label = int(label)
    if label <= 0:
        raise ValueError(f"Pick an {what}: the clicked pixel is background (label 0).")
    return label


def _edit(mask: np.ndarray, values, message: str) -> Edit:
    indices = np.nonzero(mask)
    values = np.broadcast_to(np.asarray(values), indices[0].shape) if np.ndim(values) == 0 else np.asarray(values)
    return Edit(indices, values, message)


def editable_labels(labels) -> np.ndarray:
    """A copy of integer labels with room for new ids (what an editable corrections layer holds):
    uint32 when their ids are 0 .. 2^32 - 1 (ids written back into large labels, or split off,
    need room above the ones a region holds); else their own 64-bit type, or int64 for negative
    ids of a narrower type, so that no id changes and no two objects merge."""
    data = np.asarray(labels)
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"Labels must hold integer object ids, got {data.dtype}.")
    low, high = int(data.min(initial=0)), int(data.max(initial=0))
    if 0 <= low and high <= np.iinfo(np.uint32).max:
        dtype = np.dtype(np.uint32)
    else:
        dtype = data.dtype if data.dtype.itemsize == 8 else np.dtype(np.int64)
    return data.astype(dtype, copy=True)


def pixel_at(position: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    """The pixel (one index per axis) nearest to ``position`` (data coordinates), inside ``shape``."""
    return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(position, shape))


def next_label(labels: np.ndarray, above: int = 0) -> int:
    """A label id not used yet: the largest plus one, and above ``above`` (for a region of large
    labels, the largest id the region held when it was copied: an id of an object deleted from
    the region is not handed out again, which would join the new object to that object's part
    outside the region)."""
    labels = _check(labels)
    return max(int(labels.max(initial=0)), int(above)) + 1


def delete_object(labels, label: int) -> Edit:
    """Erase object ``label`` (its pixels become background)."""
    labels = _check(labels)
    label = _check_label(labels, label)
    mask = labels == label
    if not mask.any():
        raise ValueError(f"There is no object {label} in this layer.")
    return _edit(mask, 0, f"deleted object {label} ({int(mask.sum())} px)")


def merge_objects(labels, keep: int, other: int) -> Edit:
    """Give object ``other`` the label ``keep`` (the two become one object)."""
    labels = _check(labels)
    keep, other = _check_label(labels, keep), _check_label(labels, other)
    if keep == other:
        raise ValueError("Pick two different objects to merge.")
    mask = labels == other
    if not mask.any() or not (labels == keep).any():
        raise ValueError(f"Objects {keep} and {other} must both be in the layer.")
    return _edit(mask, keep, f"merged object {other} into {keep}")


def _rasterize(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A boolean mask of the polyline through ``points`` ``(n, ndim)`` (pixel coordinates), 4-connected
    so that it cuts an 8-connected region apart."""
    mask = np.zeros(shape, bool)
    points = np.rint(np.asarray(points, float)).astype(int)
    for a, b in zip(points[:-1], points[1:]):
        n = int(np.abs(b - a).max()) * 2 + 1
        steps = np.rint(np.linspace(a, b, n)).astype(int)
        # add the corner pixel between diagonal neighbours: a 4-connected line leaves no diagonal gap
        full = [steps[0]]
        for p in steps[1:]:
            q = full[-1]
            diff = np.nonzero(p != q)[0]
            if len(diff) > 1:
                corner = q.copy()
                corner[diff[0]] = p[diff[0]]
                full.append(corner)
            full.append(p)
        full = np.array(full)
        inside = np.all((full >= 0) & (full < np.asarray(shape)), axis=1)
        mask[tuple(full[inside].T)] = True
    return mask


def split_object(labels, points, label: int | None = None, above: int = 0) -> Edit:
    """Split an object along the polyline through ``points`` (``(n, ndim)`` pixel coordinates, n >= 2,
    drawn across the object; in a stack the line lies in one plane and only that plane is split).

    The object is ``label``, or the most frequent label under the line. Only the parts of it that
    the line cuts apart change: the largest part keeps its label, the others get new labels
    (above ``above`` too: :func:`next_label`); its other pieces (not touched, or only nicked, by
    the line) keep it. The pixels of the cut go to the nearest part, so no pixel of the object is
    lost. ``ValueError`` when the line cuts nothing apart.
    """
    labels = _check(labels)
    points = np.asarray(points, float)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] != labels.ndim:
        raise ValueError(f"Draw a line of at least two points in the layer's {labels.ndim} dimensions.")
    plane = _plane_of(points, labels.shape)
    sheet = labels[plane]
    line = _rasterize(points[:, -2:], sheet.shape)
    if label is None:
        on_line = sheet[line]
        on_line = on_line[on_line > 0]
        if not on_line.size:
            raise ValueError("The line does not cross any object: draw it across the object to split.")
        ids, counts = np.unique(on_line, return_counts=True)  # (never a count per possible id: ids may be huge)
        label = int(ids[counts.argmax()])
    label = _check_label(sheet, label)
    from scipy import ndimage as ndi  # (here: importing scipy when the Correct dock opens stalled the viewer)

    obj = sheet == label
    eight = np.ones((3, 3), bool)
    pieces, _ = ndi.label(obj, structure=eight)  # the object's pieces in this plane before the cut
    parts, n = ndi.label(obj & ~line, structure=eight)  # ... and after it
    piece_of = np.zeros(n + 1, np.int64)
    piece_of[parts[parts > 0]] = pieces[parts > 0]
    cut_pieces = np.flatnonzero(np.bincount(piece_of[1:], minlength=pieces.max() + 1) >= 2)
    cut = np.isin(piece_of, cut_pieces)
    cut[0] = False  # (background)
    if not cut.any():
        raise ValueError(f"The line does not cut object {label} in two: draw it from one side of the object "
                         "to the other.")
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    order = np.flatnonzero(cut)[np.argsort(sizes[cut], kind="stable")[::-1]]  # the cut parts, largest first
    first = next_label(labels, above)
    last = first + order.size - 2
    mapping = np.full(n + 1, label, id_type(labels.dtype, min(label, first), max(label, last)))
    mapping[0] = 0
    mapping[order[1:]] = np.arange(first, last + 1, dtype=mapping.dtype)
    new = mapping[parts]
    # the cut pixels of the parts cut apart join the nearest of those parts (elsewhere they keep the label)
    orphans = obj & (parts == 0) & np.isin(pieces, cut_pieces)
    new[obj & (parts == 0)] = label
    if orphans.any():
        _, nearest = ndi.distance_transform_edt(~cut[parts], return_indices=True)
        new[orphans] = new[tuple(ix[orphans] for ix in nearest)]
    changed = obj & (new != label)
    where = np.nonzero(changed)
    indices = tuple(np.full(where[0].shape, i) for i in plane) + where
    return Edit(indices, new[changed], f"split object {label} into {order.size} parts")


def _plane_of(points: np.ndarray, shape: Sequence[int]) -> tuple:
    """The plane (one index per leading axis; none in 2D) that a line through ``points`` lies in."""
    if len(shape) <= 2:
        return ()
    fixed = np.rint(points[0, :-2]).astype(int)
    if np.any(np.rint(points[:, :-2]).astype(int) != fixed):
        raise ValueError("Draw the line within one plane of the stack.")
    if np.any(fixed < 0) or np.any(fixed >= np.asarray(shape[:-2])):
        raise ValueError("The line lies outside the layer.")
    return tuple(int(i) for i in fixed)


def remove_small(labels, min_size: int) -> Edit:
    """Erase every object smaller than ``min_size`` pixels."""
    labels = _check(labels)
    if min_size < 1:
        raise ValueError("The minimum size must be at least 1 pixel.")
    labels = check_instance_labels(labels, EDITED_LABELS_NON_NEGATIVE)
    ids, counts = np.unique(labels, return_counts=True)  # the ids present only (ids may be huge)
    small = ids[(ids > 0) & (counts < min_size)]
    mask = np.isin(labels, small)
    return _edit(mask, 0, f"removed {small.size} object(s) under {min_size} px")


def relabel_sequential(labels) -> Edit:
    """Renumber the objects 1..N in order of their current ids."""
    labels = _check(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    mapping = {int(old): new for new, old in enumerate(ids, start=1) if int(old) != new}
    if not mapping:
        return Edit((np.array([], int),) * labels.ndim, np.array([], labels.dtype), "labels already run 1..N")
    return renumber(labels, mapping, f"relabelled {ids.size} objects 1..{ids.size}")


def renumber(labels, mapping: dict[int, int], message: str = "") -> Edit:
    """Give the objects of ids ``mapping``'s keys its values (all at once: ids may swap). The ids
    are compared in the labels' own type (exact for every 64-bit id); the values are of a wider
    type when a new id does not fit the labels' (:meth:`Edit.dtype_for`)."""
    labels = _check(labels)
    info = np.iinfo(labels.dtype)
    mapping = {int(k): int(v) for k, v in mapping.items() if info.min <= int(k) <= info.max}  # others are absent
    if not mapping:
        return Edit((np.array([], int),) * labels.ndim, np.array([], labels.dtype), message)
    keys = np.array(list(mapping), dtype=labels.dtype)
    targets = list(mapping.values())
    values = np.array(targets, dtype=id_type(labels.dtype, min(targets), max(targets)))
    sorter = np.argsort(keys)
    mask = np.isin(labels, keys)
    return Edit(np.nonzero(mask), values[sorter][np.searchsorted(keys[sorter], labels[mask])], message)


# -- correcting a part of a large layer ------------------------------------------------------
#: The most pixels copied into an editable layer from a multiscale or lazy (zarr, dask) labels
#: layer: larger ones are corrected region by region, never copied whole into memory.
REGION_PIXELS = 4096 * 4096


def needs_region(shape: Sequence[int], multiscale: bool, lazy: bool, limit: int | None = None) -> bool:
    """Whether labels of ``shape`` (full resolution) are corrected region by region: every
    multiscale layer (napari paints single-scale layers only), and lazy arrays over ``limit``."""
    limit = REGION_PIXELS if limit is None else limit
    return bool(multiscale or (lazy and int(np.prod(shape, dtype=np.int64)) > limit))


def correction_region(shape: Sequence[int], box: Sequence[slice], lead: Sequence[int] = (),
                      limit: int | None = None) -> tuple[slice, ...]:
    """The part of labels of ``shape`` to correct at once, as one slice per axis.

    ``box`` is the visible area along the last two axes (full-resolution pixels); an empty box
    (the view is off the data) means the whole plane. The leading axes (planes of a stack) are
    all taken when they fit in ``limit`` pixels with the box, else only the plane ``lead``;
    the box shrinks around its centre until the region holds at most ``limit`` pixels.
    """
    limit = REGION_PIXELS if limit is None else int(limit)
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"Labels of shape {shape} have no image plane to correct.")
    sides = []
    for s, n in zip(box, shape[-2:]):
        start, stop = max(0, min(int(s.start or 0), n)), max(0, min(int(n if s.stop is None else s.stop), n))
        sides.append((start, stop) if stop > start else (0, n))
    planes = int(np.prod(shape[:-2], dtype=np.int64))
    area = (sides[0][1] - sides[0][0]) * (sides[1][1] - sides[1][0])
    if planes > 1 and planes * area > limit:
        lead = [int(np.clip(p, 0, n - 1)) for p, n in zip(tuple(lead) + (0,) * len(shape), shape[:-2])]
        leading = tuple(slice(p, p + 1) for p in lead)
    else:
        leading, lead = tuple(slice(0, n) for n in shape[:-2]), None
    budget = limit if lead is not None else max(1, limit // max(planes, 1))
    if area > budget:
        factor = np.sqrt(budget / area)
        shrunk = []
        for start, stop in sides:
            length = max(1, int((stop - start) * factor))
            centre = (start + stop) // 2
            begin = max(start, centre - length // 2)
            shrunk.append((begin, min(stop, begin + length)))
        sides = shrunk
    return leading + tuple(slice(a, b) for a, b in sides)


# -- the reviewed region and the visible area ---------------------------------------------------
#: what a "mark reviewed" marks: the whole image, the plane shown, the visible area; or clears it all
REVIEW_MARKS = ("image", "plane", "view", "clear")


def review_region(shape: Sequence[int], what: str, plane: Sequence[int] = (),
                  box: Sequence[slice] = ()) -> np.ndarray:
    """A boolean mask of ``shape``: everything for ``"image"`` and ``"clear"``; for ``"plane"``
    the plane ``plane`` (one index per leading axis; everything in 2D); for ``"view"`` the box
    ``box`` (one slice per last two axes) of that plane."""
    if what not in REVIEW_MARKS:
        raise ValueError(f"Unknown review mark {what!r}: choose one of {', '.join(REVIEW_MARKS)}.")
    region = np.zeros(tuple(shape), bool)
    if what in ("image", "clear") or (what == "plane" and len(region.shape) < 3):
        region[...] = True
    elif what == "plane":
        region[tuple(plane)] = True
    else:
        region[tuple(plane) + tuple(box)] = True
    return region


def mark_reviewed(reviewed, what: str, plane: Sequence[int] = (), box: Sequence[slice] = ()) -> Edit:
    """The edit of a reviewed mask (1 = reviewed) that marks the :func:`review_region` of ``what``
    (or, for ``"clear"``, unmarks everything): only the pixels that change."""
    reviewed = np.asarray(reviewed)
    value = 0 if what == "clear" else 1
    region = review_region(reviewed.shape, what, plane, box)
    return Edit(np.nonzero(region & (reviewed != value)), np.asarray(value, reviewed.dtype))


def visible_corners(centre: Sequence[float], canvas: Sequence[float], zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """The two opposite corners (world coordinates of the last two axes) of what a canvas of
    ``canvas`` (height, width) screen pixels shows around ``centre`` at ``zoom``."""
    half = np.asarray([canvas[0] / zoom, canvas[1] / zoom]) / 2
    centre = np.asarray(centre, float)[-2:]
    return centre - half, centre + half


def box_between(lo: Sequence[float], hi: Sequence[float], shape: Sequence[int]) -> tuple[slice, ...]:
    """The pixel box (one slice per axis) spanned by two corners in data coordinates (in any
    order, fractional), rounded outwards and clipped to ``shape``."""
    box = []
    for a, b, n in zip(lo, hi, shape):
        a, b = sorted((a, b))
        box.append(slice(int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b), 0, n))))
    return tuple(box)

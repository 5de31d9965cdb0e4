"""Placing blobs into a label image, 2D and 3D: free (no contact), pushed against a neighbour
until the two just touch, or dropped partly on top of one."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from .blobs import _Blob, _clip, _touches_in_image, _unit


class _Canvas:
    """The label image being drawn and, per label, ``(blob, image_box, local_box, rho_box, area)``."""

    def __init__(self, shape: tuple[int, ...], spacing: np.ndarray):
        self.shape, self.spacing = shape, spacing
        self.labels = np.zeros(shape, dtype=np.int32)
        self.drawn: list[tuple[_Blob, tuple, tuple, np.ndarray, int]] = []
        self.extent = np.array(shape) * spacing

    def fit(self, blob: _Blob):
        """``(image_box, local_box, rho_box, mask)`` of ``blob`` where it lies mostly (>= 60 %)
        inside the image, else None."""
        box = blob.full_box(self.spacing)
        rho = blob.rho(box, self.spacing)
        ibox, lbox = _clip(box, self.shape)
        if ibox is None:
            return None
        full_area = int((rho <= 1).sum())
        rho_in = rho[lbox]
        mask = rho_in <= 1
        if full_area == 0 or mask.sum() < 0.6 * full_area:  # mostly inside the image
            return None
        return ibox, lbox, rho_in, mask

    def draw(self, blob: _Blob, fit) -> None:
        """Give the pixels of ``blob`` (placed at ``fit``) the next label: it is on top."""
        ibox, lbox, rho_in, mask = fit
        self.labels[ibox][mask] = len(self.drawn) + 1
        self.drawn.append((blob, ibox, lbox, rho_in, int(mask.sum())))


def _place_blobs(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    n: int,
    make_blob: Callable[[np.ndarray], _Blob],
    p_touch: float,
    p_overlap: float,
    max_tries: int = 40,
):
    """Draw up to ``n`` blobs into a label image.

    Each new blob is, at random, placed free (no contact), pushed against an existing blob
    until the two just touch, or dropped partly on top of one (the new one wins the shared
    pixels; the one below keeps >= 55 % of its area in one piece). Returns the label image
    and, per label, ``(blob, image_box, local_box, rho_box)`` for rendering.
    """
    canvas = _Canvas(shape, spacing)
    failures = 0
    for _ in range(n):
        if failures >= 3:
            break  # the field is full: stop instead of burning time on hopeless tries
        mode = "free"
        if canvas.drawn:
            u = rng.uniform()
            mode = "touch" if u < p_touch else ("overlap" if u < p_touch + p_overlap else "free")
        placed = _place_one(canvas, rng, make_blob, mode, max_tries)
        if placed is None:
            failures += 1  # no valid position found for this object
            continue
        failures = 0
        canvas.draw(*placed)
    return canvas.labels, [(b, ib, lb, r) for b, ib, lb, r, _ in canvas.drawn]


def _place_one(canvas: _Canvas, rng, make_blob, mode: str, max_tries: int):
    """``(blob, fit)`` of the first of ``max_tries`` attempts that found a valid position, or None."""
    for _attempt in range(max_tries):
        if mode == "free" or not canvas.drawn:
            placed = _free(canvas, rng, make_blob)
        else:
            placed = _beside(canvas, rng, make_blob, mode)
        if placed is not None:
            return placed
    return None


def _free(canvas: _Canvas, rng, make_blob):
    """A blob at a random place that covers no other, or None."""
    center = rng.uniform(0.0, 1.0, len(canvas.shape)) * canvas.extent
    blob = make_blob(center)
    if canvas.labels[tuple((center / canvas.spacing).astype(int))]:
        return None  # cheap early reject: centre already taken
    fit = canvas.fit(blob)
    if fit is None or np.any(canvas.labels[fit[0]][fit[3]]):
        return None
    return blob, fit


def _beside(canvas: _Canvas, rng, make_blob, mode: str):
    """A blob touching (``mode="touch"``) or partly covering (``"overlap"``) a random drawn one, or None."""
    j = int(rng.integers(len(canvas.drawn)))
    target = canvas.drawn[j][0]
    direction = _unit(rng, len(canvas.shape))
    blob = make_blob(target.center.copy())
    if mode == "overlap":
        return _overlapping(canvas, rng, blob, j, direction)
    return _touching(canvas, blob, j, direction)


def _overlapping(canvas: _Canvas, rng, blob: _Blob, j: int, direction: np.ndarray):
    """``blob`` dropped partly on top of drawn blob ``j`` (label ``j + 1``) only, sharing at least
    8 % of its pixels with it, or None."""
    target = canvas.drawn[j][0]
    dist = rng.uniform(0.5, 0.75) * (target.semi.mean() + blob.semi.mean())
    blob.center = target.center + direction * dist
    fit = canvas.fit(blob)
    if fit is None:
        return None
    ibox, lbox, rho_in, mask = fit
    under = canvas.labels[ibox][mask]
    if set(np.unique(under).tolist()) - {0, j + 1}:
        return None  # would cover a third object
    n_shared = int((under == j + 1).sum())
    if n_shared < 0.08 * mask.sum():
        return None
    if not _keeps_enough(canvas, j, ibox, mask):
        return None
    return blob, fit


def _keeps_enough(canvas: _Canvas, j: int, ibox: tuple, mask: np.ndarray) -> bool:
    """Whether what ``mask`` (at ``ibox``) leaves of drawn blob ``j`` stays large (>= 55 % of its
    area) and in one piece."""
    _, tb, _, _, tarea = canvas.drawn[j]
    below = canvas.labels[tb] == j + 1
    covered = np.zeros_like(below)
    # paint the new mask into the target's box coordinates
    off = [i.start - t.start for i, t in zip(ibox, tb)]
    sl_new, sl_tgt = [], []
    for k in range(len(canvas.shape)):
        a = max(0, off[k])
        b = min(below.shape[k], off[k] + mask.shape[k])
        sl_tgt.append(slice(a, b))
        sl_new.append(slice(a - off[k], b - off[k]))
    if any(s.stop <= s.start for s in sl_tgt):
        return False
    covered[tuple(sl_tgt)] = mask[tuple(sl_new)]
    rest = below & ~covered
    return not (rest.sum() < 0.55 * tarea or ndi.label(rest)[1] != 1)


def _touching(canvas: _Canvas, blob: _Blob, j: int, direction: np.ndarray):
    """``blob`` pushed along ``direction`` from well inside drawn blob ``j`` outwards until it is
    free, kept when it then touches ``j``; or None."""
    target = canvas.drawn[j][0]
    step = 0.5 * float(canvas.spacing.min())
    t = 0.85 * (target.rmin + blob.rmin)  # surely overlapping
    t_max = 1.3 * (target.rmax + blob.rmax)
    fit = None
    while t < t_max:
        blob.center = target.center + direction * t
        fit = canvas.fit(blob)
        if fit is None:
            break
        if not np.any(canvas.labels[fit[0]][fit[3]]):
            break
        t += step
    if fit is None or t >= t_max:
        return None
    if not _touches_in_image(fit[3], canvas.labels, fit[0], j + 1):
        return None
    return blob, fit

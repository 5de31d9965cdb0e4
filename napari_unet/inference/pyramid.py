"""Coarser copies of a large result, kept up to date block by block, so a viewer shows it cheaply.

A 20000² labels plane is 1.6 GB of int32: a viewer that reads the whole visible plane each time it
redraws would stall for seconds. :class:`Pyramid` keeps levels 1, 2... of a store, level ``k``
holding every ``2**k``-th pixel of the last two axes (nearest neighbour, so label ids stay ids),
until the coarsest fits ``min_side`` pixels. Each level is a zarr array in a folder of the
caller's; :meth:`Pyramid.update` rewrites the part of every level under a region of the base
that has just been written, reading only that region. The base itself stays level 0.

No Qt here: the Segment widget calls :meth:`update` in its worker thread and hands
:attr:`Pyramid.levels` to a multiscale napari layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: Planes with a side above this are shown through a pyramid (below, the base is read whole:
#: a 4096² int32 plane is 64 MB, a fraction of a second).
PYRAMID_ABOVE = 4096
#: The coarsest level's largest side is at most this.
MIN_SIDE = 1024


def needs_pyramid(shape: Sequence[int], above: int | None = None) -> bool:
    """Whether a store of this shape (``(..., Y, X)``) is worth showing through a pyramid: a side
    above ``above`` (default :data:`PYRAMID_ABOVE`) pixels."""
    return max(int(s) for s in tuple(shape)[-2:]) > (PYRAMID_ABOVE if above is None else above)


def level_shapes(shape: Sequence[int], min_side: int | None = None) -> list[tuple[int, ...]]:
    """Shapes of levels 1, 2... for a base of ``shape``: last two axes halved (rounded up) until
    the larger is at most ``min_side`` (default :data:`MIN_SIDE`)."""
    shape = tuple(int(s) for s in shape)
    min_side = MIN_SIDE if min_side is None else min_side
    shapes, factor = [], 2
    while max(-(-s // (factor // 2)) for s in shape[-2:]) > min_side:
        shapes.append(shape[:-2] + tuple(-(-s // factor) for s in shape[-2:]))
        factor *= 2
    return shapes


class Pyramid:
    """Levels 1..n of ``base`` (any array with ``shape`` and ``dtype`` that numpy indexing reads:
    zarr, dask, numpy), written as zarr arrays under ``folder``.

    ``read``: how a region of the base becomes level data (default ``np.asarray(base[region])``);
    ``dtype``/``shape`` describe what ``read`` returns (default: the base's). Levels start at the
    fill value (0) and are filled by :meth:`update`.
    """

    def __init__(self, base, folder: str | os.PathLike, *, min_side: int | None = None,
                 read: Callable[[tuple], np.ndarray] | None = None, dtype=None,
                 shape: Sequence[int] | None = None):
        import zarr

        self.base = base
        self.shape = tuple(int(s) for s in (shape if shape is not None else base.shape))
        self.dtype = np.dtype(dtype if dtype is not None else base.dtype)
        self._read = read or (lambda region: np.asarray(base[region]))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.coarse = []
        for k, level_shape in enumerate(level_shapes(self.shape, min_side), start=1):
            chunks = (1,) * (len(level_shape) - 2) + tuple(min(s, 512) for s in level_shape[-2:])
            self.coarse.append(zarr.create(shape=level_shape, chunks=chunks, dtype=self.dtype, fill_value=0,
                                           store=str(folder / f"level{k}.zarr"), overwrite=True))

    @property
    def levels(self) -> list:
        """The base, then the coarser levels (what a multiscale napari layer takes)."""
        return [self.base] + self.coarse

    def update(self, region: tuple) -> None:
        """Copy ``region`` of the base (an index of ints and slices with steps of 1, one per axis,
        or fewer: the rest taken whole) into every level, reading it once."""
        if not self.coarse:
            return
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(region))
        lead, (ys, xs) = region[:-2], region[-2:]
        ys, xs = (slice(*s.indices(n)[:2]) for s, n in zip((ys, xs), self.shape[-2:]))
        data = self._read(lead + (ys, xs))
        # an int of the region drops its axis from what is read: put it back as a slice of one
        full = tuple(slice(*r.indices(n)[:2]) if isinstance(r, slice) else slice(int(r) % n, int(r) % n + 1)
                     for r, n in zip(lead, self.shape)) + (ys, xs)
        data = np.expand_dims(data, tuple(i for i, r in enumerate(lead) if not isinstance(r, slice)))
        factors = [(1,) * len(lead) + (2 ** k, 2 ** k) for k in range(1, len(self.coarse) + 1)]
        write_coarse(self.coarse, full, data, factors)


def _factors(b: int, n: int) -> set:
    """The factors ``f`` that make ``b`` pixels ``n`` (rounded up, as :func:`level_shapes`, or down)."""
    n = max(int(n), 1)
    return {f for f in range(max(1, b // (n + 1)), b // max(n - 1, 1) + 2) if -(-b // f) == n or b // f == n}


def _pick(options: set, b: int, n: int) -> int:
    """The power of two among ``options`` (a pyramid's), else the smallest, else the rounded ratio."""
    powers = sorted(f for f in options if f & (f - 1) == 0)
    return powers[0] if powers else (min(options) if options else max(1, round(b / max(n, 1))))


def coarse_factors(base_shape: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The factor of each coarser level per axis, from the shapes: the one factor of the last two
    axes that gives both sizes (a short side alone allows several), the others axis by axis."""
    out = []
    for shape in shapes:
        options = [_factors(int(b), int(n)) for b, n in zip(base_shape, shape)]
        factors = [_pick(o, int(b), int(n)) for o, b, n in zip(options, base_shape, shape)]
        both = options[-1] & options[-2] if len(options) >= 2 else set()
        if both:
            factors[-2:] = [_pick(both, 0, 1)] * 2
        out.append(tuple(factors))
    return out


def write_coarse(coarse: Sequence, region: Sequence[slice], data: np.ndarray,
                 factors: Sequence[Sequence[int]]) -> None:
    """Write ``data``, the base's values over ``region`` (one slice with a start and a step of 1 per
    axis), into the coarser levels ``coarse``: level ``i`` keeps the base's pixels at multiples of
    ``factors[i]`` (one per axis), nearest neighbour, so label ids stay ids."""
    for level, factor in zip(coarse, factors):
        take, starts = [], []
        for s, f in zip(region, factor):
            offset = (-s.start) % f  # the first pixel of the region at a multiple of f
            take.append(slice(offset, None, f))
            starts.append((s.start + offset) // f)
        part = data[tuple(take)]
        if 0 in part.shape:
            continue
        level[tuple(slice(a, a + n) for a, n in zip(starts, part.shape))] = part

"""Tile geometry for seamless tiled prediction: small pure functions, no torch.

Along each axis of length ``L`` the image is cut into ``n`` equal *cores*. A tile's network input
is its core grown by ``blend`` (where neighbouring tiles cross-fade) and by ``context`` (pixels
the network sees but whose predictions are discarded) on both sides, then rounded up to a size
the network accepts. Outside the image the input is mirrored (reflect padding), as in the U-Net
paper's overlap-tile strategy. The blend weights of neighbouring tiles are complementary linear
ramps, so they sum to exactly one everywhere and no weight buffer is needed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: Pixels of context around each tile, and of the blended seam between tiles (the predictor's defaults).
DEFAULT_HALO = 32
DEFAULT_BLEND = 8


@dataclass(frozen=True)
class AxisTiles:
    """Tiling of one axis."""

    length: int
    n: int
    core: int
    blend: int
    context: int
    window: int  # network input size along this axis

    def core_range(self, i: int) -> tuple[int, int]:
        return i * self.core, min((i + 1) * self.core, self.length)

    def window_start(self, i: int) -> int:
        """Image coordinate of the first input pixel of tile ``i`` (may be negative)."""
        return i * self.core - self.blend - self.context

    def write_range(self, i: int) -> tuple[int, int]:
        """Image range that tile ``i`` contributes to (its core plus blend bands, clipped)."""
        start, stop = self.core_range(i)
        lo = 0 if i == 0 else start - self.blend
        hi = self.length if i == self.n - 1 else min(stop + self.blend, self.length)
        return lo, hi

    def weights(self, i: int) -> np.ndarray:
        """Blend weights over :meth:`write_range`: linear ramps centred on the seams, so that
        the weights of neighbouring tiles sum to one at every pixel."""
        lo, hi = self.write_range(i)
        w = np.ones(hi - lo, np.float32)
        if self.blend == 0:
            return w
        x = np.arange(lo, hi, dtype=np.float32) + 0.5
        width = 2.0 * self.blend
        if i > 0:
            w = np.minimum(w, np.clip((x - (i * self.core - self.blend)) / width, 0, 1))
        if i < self.n - 1:
            w = np.minimum(w, np.clip(((i + 1) * self.core + self.blend - x) / width, 0, 1))
        return w


def plan_axis(length: int, max_window: int, context: int, blend: int, fit: Callable[[int], int],
              align: int = 1) -> AxisTiles:
    """Fewest equal tiles whose network input fits in ``max_window``.

    ``fit(n)`` returns the smallest network input >= ``n`` pixels that the network accepts.
    Cores are multiples of ``align`` (the network's pooling factor) so that every tile sees the
    same pooling grid: then tiles agree exactly with an untiled pass where the context covers
    the receptive field.
    """
    if length < 1:
        raise ValueError("Cannot tile an empty axis.")
    usable = max(align, max_window - 2 * (context + blend))
    n = max(1, math.ceil(length / usable))
    core = math.ceil(math.ceil(length / n) / align) * align
    n = math.ceil(length / core)
    if n > 1 and blend > core // 2:  # keep the halo (context + blend) and so the alignment
        context, blend = context + blend - core // 2, core // 2
    window = fit(core + 2 * (context + blend))
    return AxisTiles(length, n, core, blend, context, window)


@dataclass(frozen=True)
class TilePlan:
    """Tiles of a whole image: the product of the axes' tilings."""

    axes: tuple[AxisTiles, ...]

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(a.window for a in self.axes)

    @property
    def n_tiles(self) -> int:
        return math.prod(a.n for a in self.axes)

    def tiles(self):
        return itertools.product(*(range(a.n) for a in self.axes))

    @property
    def compute_ratio(self) -> float:
        """Pixels the network processes per image pixel (1.0 = no tiling overhead)."""
        return math.prod(a.n * a.window / a.length for a in self.axes)


def plan_tiles(shape: Sequence[int], max_window: Sequence[int], context: Sequence[int], blend: int | Sequence[int],
               fit_axis: Sequence[Callable[[int], int]], align: Sequence[int] | None = None) -> TilePlan:
    """:func:`plan_axis` for every axis; ``blend`` is one width for all axes or one per axis."""
    align = align or [1] * len(shape)
    blends = [blend] * len(shape) if isinstance(blend, int) else list(blend)
    return TilePlan(tuple(plan_axis(int(L), int(m), int(c), int(b), f, int(a))
                          for L, m, c, b, f, a in zip(shape, max_window, context, blends, fit_axis, align)))


def reflect_indices(start: int, size: int, length: int) -> np.ndarray:
    """Indices ``start..start+size-1`` mirrored into ``[0, length)`` (numpy's ``reflect`` padding,
    repeated as often as needed; a length-1 axis repeats its pixel)."""
    coords = np.arange(start, start + size)
    if length == 1:
        return np.zeros(size, np.intp)
    period = 2 * (length - 1)
    m = np.mod(coords, period)
    return np.where(m < length, m, period - m)


def read_window(plane, starts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Read ``plane[:, start:start+size, ...]`` (``(C, *spatial)``), mirroring outside the image.

    Only the block of the image the window needs is read (a dask plane computes just that).
    """
    spatial = plane.shape[1:]
    src, picks = [slice(None)], []
    for start, n, L in zip(starts, size, spatial):
        if start >= 0 and start + n <= L:
            src.append(slice(start, start + n))
            picks.append(None)
        else:
            idx = reflect_indices(start, n, L)
            lo = int(idx.min())
            src.append(slice(lo, int(idx.max()) + 1))
            picks.append(idx - lo)
    block = plane[tuple(src)]
    if hasattr(block, "compute"):
        block = block.compute()
    block = np.asarray(block)
    for axis, pick in enumerate(picks, start=1):
        if pick is not None:
            block = np.take(block, pick, axis=axis)
    return block

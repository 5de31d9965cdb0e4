"""Block planning for images larger than memory: which blocks, their halos, their sizes.

Pure geometry and settings, no pixels: :class:`BlockGrid` cuts a plane into block cores,
:func:`block_side` and :func:`label_halo` check and round the sizes a caller asked for (the
defaults are the driver's, :mod:`.large`, passed in), :func:`prediction_halo` is what a block
must see around its core to match a single pass, and :class:`LargePlan` carries everything a block
task needs (:mod:`.blocktasks`) in a small picklable object for cluster workers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .lazyio import MAX_CHUNK_2D, MAX_CHUNK_3D, _is_zarr_array


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of a ``shape`` (spatial, pixels) image: cores of ``block`` pixels per axis (the last
    ones clipped to the image)."""

    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.counts)

    def indices(self) -> list[tuple[int, ...]]:
        """Block indices in raster order."""
        return list(itertools.product(*(range(c) for c in self.counts)))

    def linear(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.counts))

    def core(self, index: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, self.block, self.shape))

    def neighbour(self, index: Sequence[int], axis: int, side: int) -> tuple[int, ...] | None:
        """The block next to ``index`` along ``axis`` (``side`` -1 or +1), or None at the image edge."""
        j = index[axis] + side
        if not 0 <= j < self.counts[axis]:
            return None
        return tuple(j if a == axis else i for a, i in enumerate(index))


def chunk_shape(block: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Zarr chunk sides that divide the block sides (so that blocks never share a chunk)."""
    cap = MAX_CHUNK_2D if spatial_dims == 2 else MAX_CHUNK_3D
    sides = []
    for b in block:
        c = int(b)
        while c > cap and c % 2 == 0:
            c //= 2
        sides.append(c)
    return tuple(sides)


# -- sizes --------------------------------------------------------------------------------------
def label_halo(value: int | None, default: int) -> int:
    """The post-processing halo in pixels: ``value``, or ``default`` when it is None."""
    if value is None:
        return default
    if int(value) < 1:
        raise ValueError(f"label_halo must be at least 1 pixel, got {value}.")
    return int(value)


def block_side(value, spatial_dims: int, align: Sequence[int], default: int) -> tuple[int, ...]:
    """Block core sides per axis: ``value`` (one side or one per axis; None: ``default``), rounded
    up to ``align`` (the network's pooling factor per axis)."""
    if value is None:
        value = default
    sides = (int(value),) * spatial_dims if np.isscalar(value) else tuple(int(v) for v in value)
    if len(sides) != spatial_dims or min(sides) < 16:
        raise ValueError(f"block_size must be one side of at least 16 pixels, or {spatial_dims} of them; got {value}.")
    # a multiple of the network's pooling factor keeps every tile on the single pass's pooling grid
    return tuple(-(-s // a) * a for s, a in zip(sides, align))


def block_grid(spatial: Sequence[int], block: Sequence[int], align: Sequence[int]) -> BlockGrid:
    """The grid of an image of ``spatial`` pixels: blocks no larger than the image (rounded up to
    ``align``), so that a small image is one block."""
    return BlockGrid(tuple(spatial), tuple(min(b, -(-n // a) * a) for b, n, a in zip(block, spatial, align)))


def prediction_halo(context: int, scale: float, align: Sequence[int]) -> int:
    """Image pixels a block must see around its core: what a tile of the tiled predictor sees
    around its own (``context``: its context + blend band, network pixels), on the same pooling
    grid as a single pass."""
    needed = int(math.ceil(context / scale))  # network pixels -> image pixels
    return max(-(-needed // a) * a for a in align) if needed else 0


def tiles_per_plane(grid: BlockGrid, halo: int, n_tiles: Callable[[tuple[int, ...]], int]) -> int:
    """Tiles the predictor runs over every block of one plane: ``n_tiles(window shape)`` per block
    window (its core grown by ``halo``), computed once per distinct window shape."""
    counts: dict[tuple[int, ...], int] = {}
    total = 0
    for index in grid.indices():
        shape = tuple(s.stop - s.start + 2 * halo for s in grid.core(index))
        if shape not in counts:
            counts[shape] = n_tiles(shape)
        total += counts[shape]
    return total


def postprocess_settings(tuned: dict, threshold: float | None, min_size: int | None,
                         split_touching: bool | None) -> dict:
    """Post-processing settings: those given, else the model's ``tuned`` ones (the split depth
    always the model's); checked."""
    post = {"threshold": tuned["threshold"] if threshold is None else threshold,
            "min_size": tuned["min_size"] if min_size is None else min_size,
            "split_touching": tuned["split_touching"] if split_touching is None else split_touching,
            "split_depth": float(tuned.get("split_depth", 1.0))}
    if not 0.0 < post["threshold"] < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {post['threshold']}.")
    return post


def needs_blocks(data, spatial_dims: int = 2, max_pixels: int = 64 * 2 ** 20) -> bool:
    """Whether an image should go through :func:`~.large.segment_to_zarr_iter` rather than a single pass:
    it is lazy (dask, zarr, memory-mapped), or its planes have more than ``max_pixels`` pixels
    (64 Mpx by default: a single pass holds a few float32 copies of a plane)."""
    if isinstance(data, np.memmap) or _is_zarr_array(data) or (hasattr(data, "compute") and hasattr(data, "chunks")):
        return True
    spatial = tuple(getattr(data, "shape", ()))[-spatial_dims:]
    return int(np.prod(spatial, dtype=np.int64)) > max_pixels


# -- what a block task gets ---------------------------------------------------------------------
@dataclass
class LargePlan:
    """Everything a block task needs (small and picklable: paths and settings, no pixels)."""

    plane_shape: tuple[int, ...]
    grid: BlockGrid
    spatial_dims: int
    in_channels: int
    n_out: int  # K, probability channels (classes but the background)
    target: str
    channel_axis: int | None
    rgb: bool
    halo: int  # prediction halo around a block's core, pixels
    label_halo: int  # post-processing halo, pixels
    probabilities: str  # zarr path
    labels: str  # zarr path
    postprocess: dict  # threshold, min_size, split_touching, split_depth
    model: str | None  # model file or bundled name, for workers that load their own
    predictor_settings: dict = field(default_factory=dict)
    torch_threads: int | None = None
    #: the factor blocks are resized by for the network (see :mod:`napari_unet.scaling`)
    scale: float = 1.0

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64))

    def plane_index(self, plane: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(plane, self.plane_shape)) if self.plane_shape else ()

    def prob_index(self, plane: int, region: tuple[slice, ...]) -> tuple:
        k = (slice(None),) if self.n_out > 1 else ()
        return self.plane_index(plane) + k + tuple(region)

    def jobs(self) -> list[tuple[int, tuple[int, ...]]]:
        """Every (plane, block index) pair, planes first, blocks in raster order."""
        blocks = self.grid.indices()
        return [(p, b) for p in range(self.n_planes) for b in blocks]
